"""A model's drift windows as mergeable counts, for a judge that sees every replica.

Drift statistics need only counts per baseline cell (grid cell of a numeric feature, category
of a categorical one), and counts add: the sum of every replica's counts of its last ``n``
rows is the fleet's counts of its last ``N * n`` rows, and the same tests with the same
calibration judge it. The monitor serves, beside ``/-/health``:

- ``GET /-/drift/counts?rows=84,334,1334``: the counts of the last ``rows`` rows of this
  replica's window per size asked (default: the drift scales), with the rows ever added, the
  rows in the window, the drift settings and the baseline's fingerprint. Bounded by the
  baseline (features, cells and at most :data:`MAX_SIZES` sizes), never by the traffic.
- ``GET /-/drift/baseline``: the baseline profile itself (the judge calibrates from it).

With several models, ``?model=name`` picks one. :func:`encode_counts` and
:func:`decode_counts` are the wire format, kept here so that both ends read it alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson

from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.drift import DriftThresholds
from mlwarden.middleware.endpoints import Receive, Scope, Send, respond
from mlwarden.middleware.features import FeatureWindows, RecentCounts

__all__ = [
    "MAX_SIZES",
    "DriftExportEndpoint",
    "baseline_fingerprint",
    "counts_answer",
    "decode_counts",
    "encode_counts",
]

#: Sizes one request may ask for (a fleet asks for one per drift scale).
MAX_SIZES = 8
_FINGERPRINTS: MutableMapping[int, tuple[BaselineProfile, str]] = {}


def baseline_fingerprint(baseline: BaselineProfile) -> str:
    """A short digest of the profile: replicas whose counts are summed must share it."""
    held = _FINGERPRINTS.get(id(baseline))
    if held is not None and held[0] is baseline:
        return held[1]
    text = orjson.dumps(baseline.to_dict(), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(text).hexdigest()[:16]
    if len(_FINGERPRINTS) > 256:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[id(baseline)] = (baseline, digest)
    return digest


def encode_counts(counts: RecentCounts) -> dict[str, Any]:
    """JSON-ready: integer counts (``present`` is their row sums, so it is not sent)."""
    return {
        "rows": counts.rows,
        "numeric": counts.numeric.astype(np.int64).tolist(),
        "categorical": [c.astype(np.int64).tolist() for c in counts.categorical],
    }


def decode_counts(
    data: Mapping[str, Any], *, numeric_shape: tuple[int, int], categories: tuple[int, ...]
) -> RecentCounts:
    """The counts of :func:`encode_counts`, checked against the baseline's shape.

    ValueError for anything that does not fit: a judge never sums counts of another shape.
    """
    rows = data.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError(f"rows: expected an integer >= 0, got {rows!r}")
    numeric = np.asarray(data.get("numeric", []), dtype=np.float64)
    if numeric.size == 0 and numeric_shape[0] == 0:
        numeric = np.zeros(numeric_shape, dtype=np.float64)
    if numeric.shape != numeric_shape or not np.all(np.isfinite(numeric)) or np.any(numeric < 0):
        raise ValueError(f"numeric: expected {numeric_shape} counts >= 0, got {numeric.shape}")
    raw = data.get("categorical", [])
    if not isinstance(raw, list) or len(raw) != len(categories):
        raise ValueError(f"categorical: expected {len(categories)} features")
    categorical = []
    for width, cells in zip(categories, raw, strict=True):
        array = np.asarray(cells, dtype=np.float64)
        if array.shape != (width,) or not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"categorical: expected {width} counts >= 0 per feature")
        categorical.append(array)
    return RecentCounts(
        rows=rows,
        numeric=numeric,
        present=numeric.sum(axis=1),
        categorical=tuple(categorical),
    )


def _json(status: int, body: Any) -> tuple[int, bytes]:
    return status, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message}).encode()


class DriftExportEndpoint:
    """``GET {path}/counts`` and ``GET {path}/baseline`` (see the module docstring).

    ``tracker_of(model)``: the tracker answering for ``model`` (None: the only one, or an
    unknown model: 404). ``before``: the monitor's drain (queued exchanges in first).
    """

    __slots__ = ("_baseline_path", "_before", "_counts_path", "_tracker_of")

    def __init__(
        self,
        tracker_of: Callable[[str | None], Any],
        *,
        path: str,
        before: Callable[[], None],
    ) -> None:
        base = path.rstrip("/")
        self._counts_path = base + "/counts"
        self._baseline_path = base + "/baseline"
        self._tracker_of = tracker_of
        self._before = before

    @property
    def paths(self) -> tuple[str, str]:
        return self._counts_path, self._baseline_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        model = query.get("model", [None])[-1]
        tracker = self._tracker_of(model)
        if tracker is None or tracker.windows is None or tracker.worker is None:
            what = f"model {model[:100]!r}" if model else "this model"
            status, body = _error(404, f"{what} has no drift windows (no baseline)")
        elif scope["path"] == self._baseline_path:
            status, body = _json(200, tracker.baseline.to_dict())
        else:
            status, body = await self._counts(tracker, query.get("rows", [""])[-1])
        await respond(send, status, body, b"application/json", scope["method"])

    async def _counts(self, tracker: Any, asked: str) -> tuple[int, bytes]:
        windows = tracker.windows
        settings: DriftThresholds = tracker.worker.thresholds
        if asked:
            try:
                sizes = sorted({int(part) for part in asked.split(",")})
            except ValueError:
                return _error(400, f"rows: expected integers separated by commas, got {asked!r}")
            if not sizes or len(sizes) > MAX_SIZES or sizes[0] < 1 or sizes[-1] > windows.max_rows:
                return _error(
                    400,
                    f"rows: expected 1 to {MAX_SIZES} sizes from 1 to {windows.max_rows}",
                )
        else:
            sizes = list(settings.scales)
        self._before()
        cells = tracker.worker.evaluator.calibration.numeric.cells
        # Binning what is staged and counting the tails: some ms on big windows, so a thread.
        answer = await asyncio.to_thread(
            counts_answer, windows, settings, sizes, cells=cells, baseline=tracker.baseline
        )
        return _json(200, {"model": tracker.name, "version": tracker.version, **answer})


def counts_answer(
    windows: FeatureWindows,
    settings: DriftThresholds,
    sizes: Sequence[int],
    *,
    cells: int,
    baseline: BaselineProfile,
) -> dict[str, Any]:
    """What ``/-/drift/counts`` answers for ``windows`` (JSON-ready), the model's name and
    version aside: the counts of the last ``size`` rows per size, and what they rest on."""
    rows, recent = windows.recent(sizes, cells)
    return {
        "baseline": baseline_fingerprint(baseline),
        "settings": asdict(settings),
        "added": windows.added,  # read after: the counts hold no row it does not count
        "rows": rows,
        "max_rows": windows.max_rows,
        "counts": {str(size): encode_counts(recent[size]) for size in sizes},
    }
