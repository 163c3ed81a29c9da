"""What the health checker knows: the result of one probe, and each upstream's state.

:class:`ProbeResult` is one probe's outcome (passed or not, why, the report read);
:class:`UpstreamHealth` is the checker's running view of one upstream (in rotation or not,
consecutive passes and failures, the last report, a bounded history of
:class:`HealthTransition` s), and its ``to_dict`` is what the admin's ``/-/status`` shows.
The probing and the thresholds that move an upstream are
:mod:`mlwarden.sidecar.routing.health_checks`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mlwarden.middleware.health_report import DEGRADED, FAILING, HealthReport

__all__ = [
    "HISTORY_SIZE",
    "PROBE_OUTCOMES",
    "HealthTransition",
    "ProbeResult",
    "UpstreamHealth",
]

#: Transitions kept per upstream, by default.
HISTORY_SIZE = 50


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe of one upstream."""

    passed: bool
    reason: str
    status_code: int | None = None
    report: HealthReport | None = None
    error: str | None = None
    duration_s: float = 0.0

    @property
    def outcome(self) -> str:
        """One bounded word for metrics: ``ok``, ``degraded`` (both pass); ``failing`` (the
        report said so), ``bad_status``, ``timeout``, ``connect_error``, ``error``."""
        if self.passed:
            degraded = self.report is not None and self.report.status == DEGRADED
            return "degraded" if degraded else "ok"
        if self.status_code is not None:
            failing = self.report is not None and self.report.status == FAILING
            return "failing" if failing else "bad_status"
        if self.error == "timeout":
            return "timeout"
        if self.error is not None and self.error.startswith("connect error"):
            return "connect_error"
        return "error"


#: Every value of :attr:`ProbeResult.outcome`.
PROBE_OUTCOMES = ("ok", "degraded", "failing", "bad_status", "timeout", "connect_error", "error")


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """One entry of an upstream's history: at (clock seconds), the new state and why."""

    at: float
    name: str
    healthy: bool
    reason: str


@dataclass(slots=True)
class UpstreamHealth:
    """The checker's view of one upstream; mutated only by :class:`HealthChecker`."""

    name: str
    url: str
    healthy: bool
    history_size: int = HISTORY_SIZE
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    checks: int = 0
    last_status_code: int | None = None
    last_report: HealthReport | None = None
    last_error: str | None = None
    last_reason: str | None = None
    last_checked_at: float | None = None
    last_duration_s: float | None = None
    history: deque[HealthTransition] = field(init=False)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)

    @property
    def degraded(self) -> bool:
        """In rotation, but its last report says degraded (drift, slow, erroring)."""
        return self.last_report is not None and self.last_report.status == DEGRADED

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready; times are ages in seconds, since the clock is monotonic."""
        return {
            "url": self.url,
            "healthy": self.healthy,
            "checked": self.checks > 0,
            "degraded": self.degraded,
            "checks": self.checks,
            "consecutive_successes": self.consecutive_successes,
            "consecutive_failures": self.consecutive_failures,
            "last_status_code": self.last_status_code,
            "last_reason": self.last_reason,
            "last_error": self.last_error,
            "last_report": _summary(self.last_report) if self.last_report else None,
            "last_duration_s": (
                None if self.last_duration_s is None else round(self.last_duration_s, 6)
            ),
            "seconds_since_check": (
                None if self.last_checked_at is None else round(now - self.last_checked_at, 3)
            ),
            "transitions": [
                {"healthy": t.healthy, "reason": t.reason, "seconds_ago": round(now - t.at, 3)}
                for t in self.history
            ],
        }


def _summary(report: HealthReport) -> dict[str, Any]:
    """What the admin's ``/-/status`` shows of a report: the verdict and the figures the
    policies read, not every feature's statistics."""
    return {
        "status": report.status,
        "reasons": list(report.reasons),
        "drift": {
            "detected": report.drift_detected,
            "drifted_features": list(report.drifted_features),
            "score": report.drift_score,
        },
        "error_rate": report.error_rate,
        "p99_latency_seconds": report.p99_latency_seconds,
        "quality": {
            "accuracy": report.accuracy,
            "f1": report.f1,
            "mae": report.mae,
            "rmse": report.rmse,
            "labelled_samples": report.labelled_samples,
        },
    }
