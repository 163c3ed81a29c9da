"""Signals from the health checks: rotation, and what the middleware's health report says.

The report is the middleware's own view of the model (drift against the training baseline,
its window of errors and latency, live quality from ground-truth labels), as of the last
probe; an upstream without a report (no checker, not probed yet, not a middleware) reads
``None`` throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlwarden.sidecar.signals.source import Signal, SignalSource

__all__ = ["HealthSignals"]

# signal name -> attribute of the report
_REPORT = {
    "drift_score": "drift_score",
    "drift_detected": "drift_detected",
    "health_error_rate": "error_rate",
    "health_p99_latency_seconds": "p99_latency_seconds",
    "accuracy": "accuracy",
    "f1": "f1",
    "mae": "mae",
    "rmse": "rmse",
    "labelled_samples": "labelled_samples",
}


class HealthSignals(SignalSource):
    """``report_of(name)``: the last health report of an upstream (None: none);
    ``is_healthy(name)``: in rotation (None: no health checks run)."""

    SIGNALS = (
        Signal(
            "drift_score", "number", "the largest PSI over the features", function="drift_score_of"
        ),
        Signal("drift_detected", "bool", "the middleware's drift verdict"),
        Signal("health_error_rate", "number", "the middleware's own window"),
        Signal("health_p99_latency_seconds", "number", "the middleware's own window"),
        Signal("accuracy", "number", "live accuracy from ground-truth labels"),
        Signal("f1", "number", "live F1 from ground-truth labels"),
        Signal("mae", "number", "live mean absolute error from labels"),
        Signal("rmse", "number", "live root mean squared error from labels"),
        Signal("labelled_samples", "number", "how many labels the quality figures rest on"),
        Signal(
            "healthy", "bool", "in rotation by the health checks", plain=False, function="healthy"
        ),
    )

    __slots__ = ("_is_healthy", "_report_of")

    def __init__(
        self,
        report_of: Callable[[str], Any],
        is_healthy: Callable[[str], bool | None] = lambda name: None,
    ) -> None:
        self._report_of = report_of
        self._is_healthy = is_healthy

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        report = self._report_of(target)
        out: dict[str, Any] = {
            name: None if report is None else getattr(report, attribute)
            for name, attribute in _REPORT.items()
        }
        out["healthy"] = self._is_healthy(target)
        return out
