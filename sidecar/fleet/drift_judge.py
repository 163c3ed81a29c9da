"""The fleet's drift verdict from every replica's counts: decode, sum per scale, test.

:class:`FleetDriftJudge` is the leader's arithmetic, without I/O (the loop in
:mod:`~mlwarden.sidecar.fleet.drift` fetches and publishes): given the latest counts of each
live replica (the middleware's ``/-/drift/counts`` answers, keyed by fleet scale), it sums the
counts of the replicas sharing its baseline and runs the drift tests of
:class:`~mlwarden.middleware.drift.scales.ScaleJudge` on the sums, with that baseline's
calibration. A scale is tested once a fifth of its rows are new across the fleet (the rows a
replica added since its previous counts, summed), exactly the cadence of one server, so the
false-alarm budget per row is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlwarden.middleware.baseline import BaselineProfile, CategoricalProfile, NumericProfile
from mlwarden.middleware.drift import DriftThresholds
from mlwarden.middleware.drift.scales import ScaleJudge
from mlwarden.middleware.drift.verdict import calibrate
from mlwarden.middleware.drift_export import decode_counts
from mlwarden.middleware.features import RecentCounts

__all__ = ["FleetDriftJudge", "merge_counts"]


def merge_counts(parts: list[RecentCounts]) -> RecentCounts:
    """The sum of several replicas' counts of one scale (the same baseline's shape)."""
    numeric = np.sum([p.numeric for p in parts], axis=0)
    return RecentCounts(
        rows=sum(p.rows for p in parts),
        numeric=numeric,
        present=numeric.sum(axis=1),
        categorical=tuple(
            np.sum(cells, axis=0) for cells in zip(*(p.categorical for p in parts), strict=True)
        ),
    )


class FleetDriftJudge:
    """Judges the replicas' counts of one baseline (``fingerprint``) under ``settings``.

    Building it calibrates the baseline (some tens of ms: build it off the event loop).
    """

    def __init__(
        self,
        baseline: BaselineProfile,
        settings: DriftThresholds,
        *,
        fingerprint: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.fingerprint = fingerprint
        self.settings = settings
        self.calibration = calibrate(baseline, settings)
        self.calibration.prepare()
        numeric = [f.name for f in baseline.features if isinstance(f, NumericProfile)]
        categorical = [f.name for f in baseline.features if isinstance(f, CategoricalProfile)]
        self.scales = ScaleJudge(
            self.calibration, settings, numeric_names=numeric, categorical_names=categorical
        )
        self._numeric_shape = (len(numeric), self.calibration.numeric.cells)
        self._categories = tuple(null.shares.size for null in self.calibration.categorical)
        self._wall = wall_clock
        self._seen_added: dict[str, int] = {}  # per replica: its rows added, as last judged
        #: Rows the fleet added since this judge's first judgement (its scales' clock).
        self.added = 0

    def __repr__(self) -> str:
        return f"FleetDriftJudge({self.fingerprint!r}, scales={self.settings.scales})"

    def judge(self, gathered: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The verdict on the replicas' latest counts (``replica -> counts``), JSON-ready."""
        parts: dict[int, list[RecentCounts]] = {}
        rows = total_added = 0
        summed: list[str] = []
        mismatched: list[str] = []
        for replica, blob in sorted(gathered.items()):
            if blob.get("baseline") != self.fingerprint:
                mismatched.append(replica)
                continue
            try:
                decoded = {
                    int(scale): decode_counts(
                        data, numeric_shape=self._numeric_shape, categories=self._categories
                    )
                    for scale, data in blob["counts"].items()
                }
                added, window_rows = int(blob["added"]), int(blob["rows"])
            except (KeyError, TypeError, ValueError, AttributeError):
                mismatched.append(replica)
                continue
            # A replica seen for the first time brings no new rows: its window so far was
            # judged by nobody, and counting it all at once would test every scale early.
            self.added += max(0, added - self._seen_added.get(replica, added))
            self._seen_added[replica] = added
            rows += window_rows
            total_added += added
            summed.append(replica)
            for scale, counts in decoded.items():
                parts.setdefault(scale, []).append(counts)
        for gone in set(self._seen_added) - set(summed):
            del self._seen_added[gone]
        due = self.scales.due(self.added)
        recent = {
            scale: merge_counts(parts[scale])
            for scale in due
            if len(parts.get(scale, ())) == len(summed) and summed
        }
        active = self.scales.judge(rows, self.added, recent)
        verdict = self._verdict(active, rows, summed, mismatched)
        verdict["rows_added"] = total_added  # by the replicas judged, ever (as they counted)
        return verdict

    def _verdict(
        self, active: list[int], rows: int, summed: list[str], mismatched: list[str]
    ) -> dict[str, Any]:
        features = []
        for name, tests in self.scales.best(active).items():
            ratios = [t.ratio for t in tests.values() if t.ratio == t.ratio]
            fired = sorted(test for test, outcome in tests.items() if outcome.fired)
            features.append(
                {
                    "name": name,
                    "drifted": bool(fired),
                    "flagged_by": fired,
                    "ratio": round(max(ratios), 4) if ratios else None,
                }
            )
        drifted = [f["name"] for f in features if f["drifted"]]
        ratios = [f["ratio"] for f in features if f["ratio"] is not None]
        return {
            "detected": bool(drifted),
            "drifted_features": drifted,
            "ratio": max(ratios) if ratios else None,
            "enough_data": bool(active),
            "rows": rows,
            "added": self.added,
            "scales": active,
            "tested": list(self.scales.last_tested),
            "replicas": summed,
            "mismatched": mismatched,
            "at": self._wall(),
            "features": features,
        }
