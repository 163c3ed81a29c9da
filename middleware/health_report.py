"""The health report: the typed contract between the middleware and the sidecar.

The middleware builds a :class:`HealthReport` (``mlwarden.middleware.health``) and serves
:meth:`HealthReport.to_json` at ``GET /-/health``; the sidecar's health checks read the answers
of model servers with :meth:`HealthReport.from_json`. Both sides import these classes, so the
wire format is written down once, here::

    {"status": "ok" | "degraded" | "failing", "reasons": [...],
     "model": {"name", "version"},
     "window": {"seconds", "requests", "errors", "error_rate",
                "latency_seconds": {"p50", "p90", "p99"}, "mean_confidence"},
     "drift": {"evaluated": false, "detected": false, "drifted_features": []}
           or {"evaluated": true, "evaluated_at", "rows", "enough_data", "drift_detected",
               "drifted_features", "scales", "alpha_per_test", "expected_run_rows",
               "features": [{"name", "kind", "rows", "mean", "null_ratio", "scores", "pvalues",
                             "tests": [{"test", "rows", "statistic", "threshold", "ratio",
                                        "fired"}, ...],
                             "drifted", "flagged_by"}, ...],
               "detected"},
     "uptime_s",
     "influx": {...}    (only with an InfluxDB shipper)
     "quality": {...}}  (only with request ids: live quality from labels)

:meth:`~HealthReport.from_json` reads other servers' answers, so it is tolerant and bounded: a
body that is not a report (too large, not JSON, no known ``status``) gives None; a missing or
mistyped field is None (or empty), never an error; it keeps at most :data:`MAX_REASONS`
reasons, :data:`MAX_FEATURES` features and drifted names, :data:`MAX_SCORES` scores a feature,
and strings of at most :data:`MAX_TEXT` characters, whatever the server sends.

The drift score (the largest PSI over the features) is computed once, when a
:class:`DriftVerdict` is made, on whichever side makes it; readers take ``drift.score``.

This module imports nothing else of mlwarden: the sidecar loads it without the statistics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "DEGRADED",
    "FAILING",
    "MAX_FEATURES",
    "MAX_REASONS",
    "MAX_REPORT_BYTES",
    "MAX_SCORES",
    "MAX_TEXT",
    "OK",
    "STATUSES",
    "DriftTest",
    "DriftVerdict",
    "FeatureScores",
    "HealthReport",
    "InfluxStatus",
    "LatencyQuantiles",
    "LiveQuality",
    "ModelIdentity",
    "RequestWindow",
]

OK, DEGRADED, FAILING = "ok", "degraded", "failing"
#: Every value of :attr:`HealthReport.status`, best first.
STATUSES = (OK, DEGRADED, FAILING)

#: A larger body is not read as a report: a health endpoint that streams megabytes is not the
#: middleware's, and a reader's memory stays bounded.
MAX_REPORT_BYTES = 256 * 1024
# Bounds on what one report read from a server may hold (it ends up on admin pages too).
MAX_REASONS = 20
MAX_FEATURES = 100
MAX_SCORES = 10
MAX_TEXT = 300
_MAX_COUNTS = 20


class _Block:
    """A block of the report: on the wire, its fields in their order, JSON-ready."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, _Block) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, _Block):
                value = value.to_dict()
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelIdentity(_Block):
    """The model name and version the report is about (``model``)."""

    name: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyQuantiles(_Block):
    """Nearest-rank latency quantiles in seconds (``window.latency_seconds``)."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWindow(_Block):
    """The recent model requests the verdict looked at (``window``); None: none or unknown."""

    seconds: float | None = None
    requests: int | None = None
    errors: int | None = None
    error_rate: float | None = None
    latency_seconds: LatencyQuantiles = LatencyQuantiles()
    mean_confidence: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftTest(_Block):
    """One drift test of a feature (``drift.features[i].tests[j]``), on the window scale
    (``rows``) where it came closest to firing: it fires when ``ratio`` (``|statistic| /
    threshold``, the threshold calibrated for that many rows) reaches 1."""

    test: str | None = None  # location | spread | shape | chi2
    rows: int | None = None
    statistic: float | None = None
    threshold: float | None = None
    ratio: float | None = None
    fired: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureScores(_Block):
    """One feature's statistics and verdict (``drift.features[i]``); None where undefined.

    ``scores`` maps a method (``psi``, ``ks``, ``chi2``) to its statistic over the whole
    window and ``pvalues`` to its textbook p-value: familiar figures that do not decide.
    ``tests`` hold what decides: each calibrated test, and ``flagged_by`` those that fired.
    """

    name: str | None = None
    kind: str | None = None
    rows: int | None = None
    mean: float | None = None
    null_ratio: float | None = None
    scores: Mapping[str, float | None] = field(default_factory=dict)
    pvalues: Mapping[str, float | None] = field(default_factory=dict)
    tests: tuple[DriftTest, ...] = ()
    drifted: bool = False
    flagged_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftVerdict:
    """The drift verdict with per-feature scores (``drift``).

    ``score`` is not given but computed here, once: the largest PSI over ``features`` (None
    when nothing was evaluated or no feature has a PSI). It is not on the wire.
    """

    evaluated: bool = False
    detected: bool = False
    drifted_features: tuple[str, ...] = ()
    evaluated_at: float | None = None  # wall-clock time of the evaluation
    rows: int | None = None  # rows in the window evaluated
    enough_data: bool | None = None  # False: too few rows for a verdict
    scales: tuple[int, ...] = ()  # the window scales tested this time
    alpha_per_test: float | None = None  # the level every test was calibrated to
    expected_run_rows: int | None = None  # the false-alarm budget that level comes from
    features: tuple[FeatureScores, ...] = ()
    score: float | None = field(init=False)

    def __post_init__(self) -> None:
        psis = [psi for f in self.features if (psi := f.scores.get("psi")) is not None]
        object.__setattr__(self, "score", max(psis) if psis else None)

    def to_dict(self) -> dict[str, Any]:
        if not self.evaluated:
            return {
                "evaluated": False,
                "detected": self.detected,
                "drifted_features": list(self.drifted_features),
            }
        return {
            "evaluated": True,
            "evaluated_at": self.evaluated_at,
            "rows": self.rows,
            "enough_data": self.enough_data,
            "drift_detected": self.detected,
            "drifted_features": list(self.drifted_features),
            "scales": list(self.scales),
            "alpha_per_test": self.alpha_per_test,
            "expected_run_rows": self.expected_run_rows,
            "features": [f.to_dict() for f in self.features],
            "detected": self.detected,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveQuality(_Block):
    """Live model quality from labels sent back (``quality``); a figure is None if undefined.

    ``labels`` counts the labels received by outcome (accepted, unknown, expired, duplicate,
    invalid). Classification fills accuracy … calibration_error, regression mae and rmse.
    """

    task: str | None = None
    labelled_samples: int | None = None
    remembered: int | None = None
    unlabelled_ratio: float | None = None
    labels: Mapping[str, int] = field(default_factory=dict)
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    calibration_error: float | None = None
    mae: float | None = None
    rmse: float | None = None
    delay_p50_s: float | None = None
    delay_p90_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxStatus(_Block):
    """The feature-statistics shipper's state (``influx``): no secrets, times are wall clock."""

    buffered_points: int | None = None
    max_buffer_points: int | None = None
    write_in_flight: bool | None = None
    consecutive_failures: int | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The model's health: the verdict (``status``), why (``reasons``) and the figures behind it."""

    status: str
    reasons: tuple[str, ...] = ()
    model: ModelIdentity = ModelIdentity()
    window: RequestWindow = RequestWindow()
    drift: DriftVerdict = DriftVerdict()
    uptime_s: float | None = None
    influx: InfluxStatus | None = None
    quality: LiveQuality | None = None

    # -- the wire format ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``influx`` and ``quality`` only when present)."""
        out: dict[str, Any] = {
            "status": self.status,
            "reasons": list(self.reasons),
            "model": self.model.to_dict(),
            "window": self.window.to_dict(),
            "drift": self.drift.to_dict(),
            "uptime_s": self.uptime_s,
        }
        if self.influx is not None:
            out["influx"] = self.influx.to_dict()
        if self.quality is not None:
            out["quality"] = self.quality.to_dict()
        return out

    def to_json(self) -> bytes:
        """The body served at ``/-/health``: compact, strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> HealthReport | None:
        """The report in ``body``, or None when it is not one (see the module docstring)."""
        if len(body) > MAX_REPORT_BYTES:
            return None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
        if not isinstance(data, dict) or data.get("status") not in STATUSES:
            return None
        model, window, drift = _block(data, "model"), _block(data, "window"), _block(data, "drift")
        latency = _block(window, "latency_seconds")
        influx, quality = data.get("influx"), data.get("quality")
        return cls(
            status=data["status"],
            reasons=_texts(data.get("reasons"), MAX_REASONS),
            model=ModelIdentity(name=_text(model.get("name")), version=_text(model.get("version"))),
            window=RequestWindow(
                seconds=_number(window.get("seconds")),
                requests=_count(window.get("requests")),
                errors=_count(window.get("errors")),
                error_rate=_number(window.get("error_rate")),
                latency_seconds=LatencyQuantiles(
                    p50=_number(latency.get("p50")),
                    p90=_number(latency.get("p90")),
                    p99=_number(latency.get("p99")),
                ),
                mean_confidence=_number(window.get("mean_confidence")),
            ),
            drift=_drift(drift),
            uptime_s=_number(data.get("uptime_s")),
            influx=_influx(influx) if isinstance(influx, dict) else None,
            quality=_quality(quality) if isinstance(quality, dict) else None,
        )

    # -- the figures the sidecar's health signals read, flattened -----------------------------

    @property
    def drift_detected(self) -> bool:
        return self.drift.detected

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return self.drift.drifted_features

    @property
    def drift_score(self) -> float | None:
        """The largest PSI over the report's features (None: no drift evaluated or no PSI)."""
        return self.drift.score

    @property
    def error_rate(self) -> float | None:
        return self.window.error_rate

    @property
    def p99_latency_seconds(self) -> float | None:
        return self.window.latency_seconds.p99

    @property
    def accuracy(self) -> float | None:
        return None if self.quality is None else self.quality.accuracy

    @property
    def f1(self) -> float | None:
        return None if self.quality is None else self.quality.f1

    @property
    def mae(self) -> float | None:
        return None if self.quality is None else self.quality.mae

    @property
    def rmse(self) -> float | None:
        return None if self.quality is None else self.quality.rmse

    @property
    def labelled_samples(self) -> float | None:
        """As a number (a float), the way policy conditions compare it."""
        count = None if self.quality is None else self.quality.labelled_samples
        return None if count is None else float(count)


# -- reading a server's answer: every helper takes anything and bounds what it keeps --------


def _block(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _texts(value: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v)[:MAX_TEXT] for v in value[:limit])


def _scores(value: Any) -> dict[str, float | None]:
    if not isinstance(value, dict):
        return {}
    items = list(value.items())[:MAX_SCORES]
    return {str(k)[:MAX_TEXT]: _number(v) for k, v in items}


def _drift(drift: Mapping[str, Any]) -> DriftVerdict:
    features = drift.get("features")
    return DriftVerdict(
        evaluated=drift.get("evaluated") is True,
        detected=drift.get("detected") is True,
        drifted_features=_texts(drift.get("drifted_features"), MAX_FEATURES),
        evaluated_at=_number(drift.get("evaluated_at")),
        rows=_count(drift.get("rows")),
        enough_data=_flag(drift.get("enough_data")),
        scales=tuple(n for n in (_count(v) for v in _list(drift.get("scales"))[:MAX_SCORES]) if n),
        alpha_per_test=_number(drift.get("alpha_per_test")),
        expected_run_rows=_count(drift.get("expected_run_rows")),
        features=tuple(_feature(f) for f in features[:MAX_FEATURES] if isinstance(f, dict))
        if isinstance(features, list)
        else (),
    )


def _feature(value: Mapping[str, Any]) -> FeatureScores:
    return FeatureScores(
        name=_text(value.get("name")),
        kind=_text(value.get("kind")),
        rows=_count(value.get("rows")),
        mean=_number(value.get("mean")),
        null_ratio=_number(value.get("null_ratio")),
        scores=_scores(value.get("scores")),
        pvalues=_scores(value.get("pvalues")),
        tests=tuple(
            _test(t) for t in _list(value.get("tests"))[:MAX_SCORES] if isinstance(t, dict)
        ),
        drifted=value.get("drifted") is True,
        flagged_by=_texts(value.get("flagged_by"), MAX_SCORES),
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _test(value: Mapping[str, Any]) -> DriftTest:
    return DriftTest(
        test=_text(value.get("test")),
        rows=_count(value.get("rows")),
        statistic=_number(value.get("statistic")),
        threshold=_number(value.get("threshold")),
        ratio=_number(value.get("ratio")),
        fired=value.get("fired") is True,
    )


def _quality(quality: Mapping[str, Any]) -> LiveQuality:
    labels = quality.get("labels")
    counts = list(labels.items())[:_MAX_COUNTS] if isinstance(labels, dict) else []
    return LiveQuality(
        task=_text(quality.get("task")),
        labelled_samples=_count(quality.get("labelled_samples")),
        remembered=_count(quality.get("remembered")),
        unlabelled_ratio=_number(quality.get("unlabelled_ratio")),
        labels={str(k)[:MAX_TEXT]: n for k, v in counts if (n := _count(v)) is not None},
        accuracy=_number(quality.get("accuracy")),
        precision=_number(quality.get("precision")),
        recall=_number(quality.get("recall")),
        f1=_number(quality.get("f1")),
        calibration_error=_number(quality.get("calibration_error")),
        mae=_number(quality.get("mae")),
        rmse=_number(quality.get("rmse")),
        delay_p50_s=_number(quality.get("delay_p50_s")),
        delay_p90_s=_number(quality.get("delay_p90_s")),
    )


def _influx(influx: Mapping[str, Any]) -> InfluxStatus:
    return InfluxStatus(
        buffered_points=_count(influx.get("buffered_points")),
        max_buffer_points=_count(influx.get("max_buffer_points")),
        write_in_flight=_flag(influx.get("write_in_flight")),
        consecutive_failures=_count(influx.get("consecutive_failures")),
        last_success_at=_number(influx.get("last_success_at")),
        last_error=_text(influx.get("last_error")),
        last_error_at=_number(influx.get("last_error_at")),
    )
