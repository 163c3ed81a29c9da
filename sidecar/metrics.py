"""The sidecar's own Prometheus metrics: breakers, health checks, the retry budget.

This module owns the metric names and how their values are obtained. Nothing here sits on the
proxy's hot path: values that already live in the sidecar's objects are read at scrape time
by a collector (so they are right even when breaker state is shared through Redis), and
events that leave no trace in those objects (transitions) are counted by listeners.

Exported (label values are upstream names from the configuration and fixed words only):

- ``mlwarden_breaker_state{upstream}``: gauge, 0 closed, 1 half_open, 2 open (ordered by how
  little traffic the upstream gets, so ``max()`` over upstreams means "the worst").
- ``mlwarden_breaker_transitions_total{upstream,to}``: counter; ``to`` in closed, half_open,
  open.
- ``mlwarden_upstream_healthy{upstream}``: gauge, 1 in rotation, 0 out (1 for every upstream
  while no health checker runs, as the router then sees them).
- ``mlwarden_health_checks_total{upstream}``: counter of probes made.
- ``mlwarden_health_transitions_total{upstream,to}``: counter; ``to`` in healthy, unhealthy.
- ``mlwarden_retry_budget_requests_total``, ``mlwarden_retry_budget_retries_total``,
  ``mlwarden_retry_budget_exhausted_total``: counters read from the proxy's
  :class:`~mlwarden.sidecar.resilience.retry.RetryBudget` (requests seen, retries granted,
  retries refused because the budget was spent).

Per-probe results by outcome (``mlwarden_health_check_total{upstream,result}``) need a
per-probe hook in the health checker, which only reports transitions today; they come with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from mlwarden.sidecar.proxy import ProxyApp
    from mlwarden.sidecar.routing.health_checks import HealthChecker

__all__ = ["BREAKER_STATE_VALUES", "SidecarMetrics"]

#: The value of ``mlwarden_breaker_state`` for each state.
BREAKER_STATE_VALUES: dict[str, float] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
_BREAKER_STATES = tuple(BREAKER_STATE_VALUES)
_HEALTH_STATES = ("healthy", "unhealthy")


class _ScrapeCollector(Collector):
    """Reads breaker states, health and the retry budget of the attached proxy at scrape."""

    def __init__(self, owner: SidecarMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        # Names only, so the registry can reject duplicates without a proxy attached yet.
        return [
            GaugeMetricFamily("mlwarden_breaker_state", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_upstream_healthy", "", labels=["upstream"]),
            CounterMetricFamily("mlwarden_health_checks", "", labels=["upstream"]),
            CounterMetricFamily("mlwarden_retry_budget_requests", ""),
            CounterMetricFamily("mlwarden_retry_budget_retries", ""),
            CounterMetricFamily("mlwarden_retry_budget_exhausted", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        proxy = self._owner.proxy
        if proxy is None:
            return
        health = proxy.health
        self._owner.watch_health(health)  # the proxy builds its checker at start-up
        state = GaugeMetricFamily(
            "mlwarden_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half_open, 2 open.",
            labels=["upstream"])
        for name, breaker in proxy.breakers.items():
            state.add_metric([name], BREAKER_STATE_VALUES[breaker.state])
        yield state
        healthy = GaugeMetricFamily(
            "mlwarden_upstream_healthy",
            "1 when the upstream's health checks keep it in rotation, else 0.",
            labels=["upstream"])
        checks = CounterMetricFamily(
            "mlwarden_health_checks", "Health-check probes made per upstream.",
            labels=["upstream"])
        for name in proxy.pools:
            if health is None or name not in health.names:
                healthy.add_metric([name], 1.0)
                checks.add_metric([name], 0.0)
            else:
                upstream = health.state(name)
                healthy.add_metric([name], 1.0 if upstream.healthy else 0.0)
                checks.add_metric([name], float(upstream.checks))
        yield healthy
        yield checks
        budget = proxy.policy.budget
        for metric, doc, value in (
            ("mlwarden_retry_budget_requests", "Client requests counted by the retry budget.",
             budget.requests_total),
            ("mlwarden_retry_budget_retries", "Retries granted by the retry budget.",
             budget.retries_total),
            ("mlwarden_retry_budget_exhausted",
             "Retries refused because the retry budget was spent.", budget.exhausted_total),
        ):
            yield CounterMetricFamily(metric, doc, value=float(value))


class SidecarMetrics:
    """The sidecar's metrics in ``registry``; :meth:`attach` one proxy to feed them.

    One instance per registry (a registry rejects the second set of names). Attaching a second
    proxy is refused: the gauges would mix two proxies' upstreams.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.proxy: ProxyApp | None = None
        self._watched: HealthChecker | None = None
        self._lock = threading.Lock()
        self.breaker_transitions = Counter(
            "mlwarden_breaker_transitions_total",
            "Circuit breaker state changes per upstream, by the state entered.",
            ("upstream", "to"), registry=registry,
        )
        self.health_transitions = Counter(
            "mlwarden_health_transitions_total",
            "Upstreams entering or leaving rotation by their health checks.",
            ("upstream", "to"), registry=registry,
        )
        registry.register(_ScrapeCollector(self))

    def attach(self, proxy: ProxyApp) -> None:
        """Register breaker and health listeners on ``proxy`` and read it at scrape time."""
        with self._lock:
            if self.proxy is not None:
                if self.proxy is proxy:
                    return
                raise ValueError("SidecarMetrics is already attached to another proxy")
            self.proxy = proxy
        for name, breaker in proxy.breakers.items():
            # Series exist from the start (at 0), so rate() sees the first transition.
            for to in _BREAKER_STATES:
                self.breaker_transitions.labels(name, to)
            for to in _HEALTH_STATES:
                self.health_transitions.labels(name, to)
            breaker.add_listener(self._breaker_changed)
        self.watch_health(proxy.health)

    def watch_health(self, health: HealthChecker | None) -> None:
        """Listen to ``health`` (the attached proxy's checker) once it exists."""
        if health is None or health is self._watched:
            return
        with self._lock:
            if health is self._watched:
                return
            self._watched = health
        health.add_listener(self._health_changed)

    def _breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        if new in BREAKER_STATE_VALUES:
            self.breaker_transitions.labels(name, new).inc()

    def _health_changed(self, name: str, healthy: bool, reason: str) -> None:
        proxy = self.proxy
        if proxy is not None and name in proxy.pools:
            self.health_transitions.labels(name, "healthy" if healthy else "unhealthy").inc()

    def __repr__(self) -> str:
        attached = list(self.proxy.pools) if self.proxy is not None else None
        return f"SidecarMetrics(upstreams={attached!r})"
