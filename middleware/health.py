"""The model's health verdict: thresholds, the window of recent requests, and the report.

The window of recent model requests is a bounded ring (by count and by age); quantiles and
rates are computed when the report is asked for, not per request. :func:`health_report` turns
the window, the latest drift evaluation and the thresholds into a
:class:`~mlwarden.middleware.health_report.HealthReport`, the typed contract that the monitor
serves at ``/-/health`` and the sidecar reads.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlwarden.middleware.drift import DriftReport
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.health_report import (
    DEGRADED,
    FAILING,
    OK,
    DriftVerdict,
    HealthReport,
    InfluxStatus,
    LatencyQuantiles,
    LiveQuality,
    ModelIdentity,
    RequestWindow,
)

__all__ = ["DEGRADED", "FAILING", "OK", "HealthThresholds", "HealthWindow", "health_report"]


@dataclass(frozen=True, kw_only=True)
class HealthThresholds:
    """When the verdict turns ``degraded`` or ``failing``; ``None`` switches a check off."""

    error_rate_degraded: float | None = 0.05
    error_rate_failing: float | None = 0.25
    p99_latency_degraded_s: float | None = 1.0
    p99_latency_failing_s: float | None = 5.0
    mean_confidence_degraded: float | None = None
    mean_confidence_failing: float | None = None
    drifted_features_degraded: int | None = 1
    drifted_features_failing: int | None = None
    # Error rate, latency and confidence decide nothing below this many requests.
    min_requests: int = 20
    window_s: float = 300.0
    max_requests: int = 2_000

    def __post_init__(self) -> None:
        problems: list[str] = []

        def number(key: str, *, low: float, high: float | None = None) -> float | None:
            value = getattr(self, key)
            if value is None:
                return None
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < low
                or (high is not None and value > high)
            ):
                span = f"between {low} and {high}" if high is not None else f">= {low}"
                problems.append(f"health.{key}: expected a number {span} or null, got {value!r}")
                return None
            return float(value)

        pairs = (
            ("error_rate_degraded", "error_rate_failing", 0.0, 1.0, "<="),
            ("p99_latency_degraded_s", "p99_latency_failing_s", 0.0, None, "<="),
            ("mean_confidence_degraded", "mean_confidence_failing", 0.0, 1.0, ">="),
            ("drifted_features_degraded", "drifted_features_failing", 1, None, "<="),
        )
        for soft, hard, low, high, order in pairs:
            a, b = number(soft, low=low, high=high), number(hard, low=low, high=high)
            if a is not None and b is not None and (a > b if order == "<=" else a < b):
                problems.append(
                    f"health.{soft}: must be {order} health.{hard} "
                    f"(got {getattr(self, soft)!r} and {getattr(self, hard)!r})"
                )
        for key in ("drifted_features_degraded", "drifted_features_failing"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, int):
                problems.append(f"health.{key}: expected a whole number or null, got {value!r}")
        for key, low in (("min_requests", 1), ("max_requests", 10)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"health.{key}: expected a whole number >= {low}, got {value!r}")
        if self.window_s is None:
            problems.append("health.window_s: expected a number >= 1, got None")
        number("window_s", low=1.0)
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HealthThresholds:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                [
                    f"health.{k}: unknown threshold (known: {', '.join(sorted(known))})"
                    for k in unknown
                ]
            )
        return cls(**values)


class HealthWindow:
    """Recent model requests (time, latency, error) and confidences, bounded by count and age."""

    __slots__ = ("_clock", "_confidences", "_requests", "max_age_s")

    def __init__(
        self,
        *,
        max_requests: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests: deque[tuple[float, float, bool]] = deque(maxlen=max_requests)
        self._confidences: deque[tuple[float, float]] = deque(maxlen=max_requests)
        self.max_age_s = max_age_s
        self._clock = clock

    def record(self, latency_s: float, error: bool) -> None:
        self._requests.append((self._clock(), latency_s, error))

    def record_confidence(self, mean_confidence: float) -> None:
        self._confidences.append((self._clock(), mean_confidence))

    def summary(self) -> RequestWindow:
        horizon = self._clock() - self.max_age_s
        recent = [(lat, err) for t, lat, err in self._requests if t >= horizon]
        confidences = [c for t, c in self._confidences if t >= horizon]
        errors = sum(1 for _, err in recent if err)
        latencies = sorted(lat for lat, _ in recent)
        return RequestWindow(
            seconds=self.max_age_s,
            requests=len(recent),
            errors=errors,
            error_rate=errors / len(recent) if recent else None,
            latency_seconds=LatencyQuantiles(
                p50=_quantile(latencies, 0.50),
                p90=_quantile(latencies, 0.90),
                p99=_quantile(latencies, 0.99),
            ),
            mean_confidence=sum(confidences) / len(confidences) if confidences else None,
        )


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile (no interpolation: a reported p99 is a latency that occurred)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def health_report(
    *,
    model: str,
    version: str,
    window: HealthWindow,
    drift: DriftReport | None,
    thresholds: HealthThresholds,
    started_at: float,
    influx: InfluxStatus | None = None,
    quality: LiveQuality | None = None,
) -> HealthReport:
    """The health report with its verdict and the reasons for it."""
    summary = window.summary()
    reasons: list[tuple[str, str]] = []  # (status, why)
    t = thresholds
    enough = (summary.requests or 0) >= t.min_requests

    def check(
        value: float | None,
        soft: float | None,
        hard: float | None,
        what: str,
        *,
        below: bool = False,
    ) -> None:
        if value is None:
            return
        for level, limit in ((FAILING, hard), (DEGRADED, soft)):
            if limit is not None and (value < limit if below else value > limit):
                word = "below" if below else "above"
                reasons.append((level, f"{what} {value:.4g} {word} {limit:.4g}"))
                return

    if enough:
        check(summary.error_rate, t.error_rate_degraded, t.error_rate_failing, "error rate")
        check(
            summary.latency_seconds.p99,
            t.p99_latency_degraded_s,
            t.p99_latency_failing_s,
            "p99 latency (s)",
        )
        check(
            summary.mean_confidence,
            t.mean_confidence_degraded,
            t.mean_confidence_failing,
            "mean confidence",
            below=True,
        )
    verdict = drift.verdict() if drift is not None else DriftVerdict()
    names = verdict.drifted_features
    if names:
        why = "drift in " + ", ".join(names)
        if t.drifted_features_failing is not None and len(names) >= t.drifted_features_failing:
            reasons.append((FAILING, why))
        elif t.drifted_features_degraded is not None and len(names) >= t.drifted_features_degraded:
            reasons.append((DEGRADED, why))
    status = OK
    if any(level == FAILING for level, _ in reasons):
        status = FAILING
    elif reasons:
        status = DEGRADED
    return HealthReport(
        status=status,
        reasons=tuple(why for _, why in reasons),
        model=ModelIdentity(name=model, version=version),
        window=summary,
        drift=verdict,
        uptime_s=round(time.monotonic() - started_at, 3),
        influx=influx,
        quality=quality,
    )
