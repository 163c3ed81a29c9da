"""What the shadow counts: each mirror's tally, and the Prometheus metrics shared per registry.

:class:`ShadowTally` is one mirror's count of what became of its copies (plain numbers for
``/-/status``, and the metrics when given) and its agreement window. :class:`ShadowMetrics` is
one set of metric families per registry, shared by every mirror attached to it. Label values
are configured target names and the fixed words of :data:`SHADOW_OUTCOMES`,
:data:`~mlwarden.sidecar.routing.shadow_comparison.COMPARISON_RESULTS` and
:data:`UNCOMPARED_REASONS`:

- ``mlwarden_shadow_requests_total{target,outcome}``: ``ok`` (answered below 500), ``error``
  (5xx, connect error, reset, malformed), ``timeout``, ``shed`` (sampled but not sent: queue
  full, target unavailable, mirror not running), ``dropped`` (accepted, then discarded when the
  mirror closed).
- ``mlwarden_shadow_comparisons_total{target,result}``: agree, disagree, incomparable.
- ``mlwarden_shadow_uncompared_total{target,reason}``: accepted copies not compared, by
  :data:`UNCOMPARED_REASONS`.
- ``mlwarden_shadow_duration_seconds{target}``: histogram of the shadow exchanges sent.
- ``mlwarden_shadow_agreement_ratio{target}``: gauge, the mirror's ``agreement_rate()`` read at
  scrape time (absent while below ``min_comparisons``).
- ``mlwarden_shadow_queue_depth{target}``: gauge, copies waiting for a worker.

The tally counts into the families (children bound once per target); the two gauges are read
from the attached mirrors at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlwarden.middleware.fastmetrics import FastCounter, FastFamilies, FastHistogram
from mlwarden.sidecar.routing.shadow_comparison import COMPARISON_RESULTS, AgreementWindow

__all__ = [
    "SHADOW_DURATION_BUCKETS",
    "SHADOW_OUTCOMES",
    "UNCOMPARED_REASONS",
    "ShadowGauged",
    "ShadowMetrics",
    "ShadowTally",
]

#: What became of a sampled copy's request.
SHADOW_OUTCOMES = ("ok", "error", "timeout", "shed", "dropped")
#: Why an accepted copy was not compared. ``shadow_failed``: the shadow errored or timed out;
#: ``primary_failed``: the primary reported a failure or a 5xx; ``too_large``: a 2xx body
#: above ``max_body_bytes`` (or not captured by the proxy); ``primary_missing``: the primary's
#: answer was not reported within ``primary_wait_s`` (or more than ``max_pending`` waited);
#: ``dropped``: the mirror closed first.
UNCOMPARED_REASONS = ("shadow_failed", "primary_failed", "too_large", "primary_missing", "dropped")

#: Shadow exchanges: bounded by ``timeout_s`` (default 5 s).
SHADOW_DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class ShadowGauged(Protocol):
    """What the gauges read from a mirror, a :class:`~mlwarden.sidecar.routing.shadow.ShadowMirror`
    (a protocol, so that this module need not import the mirror's)."""

    @property
    def target(self) -> str: ...

    @property
    def queue_depth(self) -> int: ...

    def agreement_rate(self) -> float | None: ...


class _ShadowGauges(Collector):
    """The agreement ratio and queue depth of each attached mirror, read at scrape time."""

    def __init__(self, owner: ShadowMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily("mlwarden_shadow_agreement_ratio", "", labels=["target"]),
            GaugeMetricFamily("mlwarden_shadow_queue_depth", "", labels=["target"]),
        ]

    def collect(self) -> Iterator[Metric]:
        ratio = GaugeMetricFamily(
            "mlwarden_shadow_agreement_ratio",
            "Share of compared shadow answers that agreed with the primary's, over the "
            "recent window (absent below the minimum number of comparisons).",
            labels=["target"],
        )
        depth = GaugeMetricFamily(
            "mlwarden_shadow_queue_depth", "Shadow copies waiting for a worker.", labels=["target"]
        )
        for target, mirror in self._owner.mirrors():
            rate = mirror.agreement_rate()
            if rate is not None:
                ratio.add_metric([target], rate)
            depth.add_metric([target], float(mirror.queue_depth))
        yield ratio
        yield depth


class ShadowMetrics:
    """The shadow metrics in ``registry`` (one instance per registry), for every mirror.

    A mirror given these metrics attaches itself; one mirror per target at a time (a second
    one is refused until the first is closed).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        families = FastFamilies()
        self.requests = FastCounter(
            "mlwarden_shadow_requests_total",
            "Requests sampled for the shadow target, by outcome: ok, error, timeout, shed "
            "(not sent), dropped (discarded at shut-down).",
            ("target", "outcome"),
        )
        self.comparisons = FastCounter(
            "mlwarden_shadow_comparisons_total",
            "Shadow answers compared with the primary's: agree, disagree, incomparable.",
            ("target", "result"),
        )
        self.uncompared = FastCounter(
            "mlwarden_shadow_uncompared_total",
            "Shadow copies sent but not compared, by reason: shadow_failed, primary_failed, "
            "too_large, primary_missing, dropped.",
            ("target", "reason"),
        )
        self.duration = FastHistogram(
            "mlwarden_shadow_duration_seconds",
            "Time of each shadow exchange.",
            ("target",),
            SHADOW_DURATION_BUCKETS,
        )
        for family in (self.requests, self.comparisons, self.uncompared, self.duration):
            families.add(family)
        self._mirrors: dict[str, ShadowGauged] = {}
        self._lock = threading.Lock()
        registry.register(families)
        registry.register(_ShadowGauges(self))

    def __repr__(self) -> str:
        return f"ShadowMetrics(targets={sorted(self._mirrors)!r})"

    def attach(self, mirror: ShadowGauged) -> None:
        with self._lock:
            current = self._mirrors.get(mirror.target)
            if current is not None and current is not mirror:
                raise ValueError(f"a shadow mirror for {mirror.target!r} is already attached")
            self._mirrors[mirror.target] = mirror

    def detach(self, mirror: ShadowGauged) -> None:
        with self._lock:
            if self._mirrors.get(mirror.target) is mirror:
                del self._mirrors[mirror.target]

    def mirrors(self) -> list[tuple[str, ShadowGauged]]:
        with self._lock:
            return list(self._mirrors.items())


class ShadowTally:
    """One mirror's counts: each sampled request's outcome, each settled copy's result, the
    exchange times and the agreement window; in ``metrics`` too when given.

    ``last_disagreement`` is what each side answered the last time they disagreed (the
    mirror sets it); ``sampled`` counts the requests drawn.
    """

    __slots__ = (
        "_duration",
        "_m_requests",
        "_m_results",
        "_min_comparisons",
        "_requests",
        "_results",
        "_window",
        "last_disagreement",
        "sampled",
    )

    def __init__(
        self,
        target: str,
        metrics: ShadowMetrics | None,
        *,
        window: AgreementWindow,
        min_comparisons: int,
    ) -> None:
        self._window = window
        self._min_comparisons = min_comparisons
        self._requests = dict.fromkeys(SHADOW_OUTCOMES, 0)
        self._results = dict.fromkeys(COMPARISON_RESULTS + UNCOMPARED_REASONS, 0)
        self.sampled = 0
        self.last_disagreement: dict[str, Any] | None = None
        self._m_requests: dict[str, Any] = {}
        self._m_results: dict[str, Any] = {}
        self._duration: Any = None
        if metrics is not None:
            self._m_requests = {o: metrics.requests.labels(target, o) for o in SHADOW_OUTCOMES}
            self._m_results = {r: metrics.comparisons.labels(target, r) for r in COMPARISON_RESULTS}
            self._m_results.update(
                {r: metrics.uncompared.labels(target, r) for r in UNCOMPARED_REASONS}
            )
            self._duration = metrics.duration.labels(target)

    def __repr__(self) -> str:
        return f"ShadowTally(requests={self._requests!r})"

    def request(self, outcome: str) -> None:
        """One sampled request ended in ``outcome`` (of :data:`SHADOW_OUTCOMES`)."""
        self._requests[outcome] += 1
        counter = self._m_requests.get(outcome)
        if counter is not None:
            counter.inc()

    def result(self, result: str) -> None:
        """One copy settled: a verdict enters the agreement window, any result is counted."""
        self._results[result] += 1
        counter = self._m_results.get(result)
        if counter is not None:
            counter.inc()
        if result == "agree" or result == "disagree":
            self._window.add(result == "agree")

    def exchange_took(self, seconds: float) -> None:
        if self._duration is not None:
            self._duration.observe(seconds)

    def agreement_rate(self) -> float | None:
        """agree / (agree + disagree) over the window; None below ``min_comparisons``."""
        agreed, total = self._window.counts()
        if total < self._min_comparisons or total == 0:
            return None
        return agreed / total

    def snapshot(self) -> dict[str, Any]:
        """The counts for ``/-/status`` (JSON-ready)."""
        agreed, total = self._window.counts()
        return {
            "requests": dict(self._requests),
            "comparisons": {r: self._results[r] for r in COMPARISON_RESULTS},
            "uncompared": {r: self._results[r] for r in UNCOMPARED_REASONS},
            "agreement_rate": self.agreement_rate(),
            "window": {
                "comparisons": total,
                "agreed": agreed,
                "max_comparisons": self._window.size,
                "max_age_s": self._window.max_age_s,
                "min_comparisons": self._min_comparisons,
            },
            "last_disagreement": self.last_disagreement,
        }
