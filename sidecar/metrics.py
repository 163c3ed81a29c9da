"""The sidecar's own Prometheus metrics: traffic, upstream attempts, retries, fallbacks,
breakers, health checks, the retry budget.

This module owns the metric names and how their values are obtained. Values that already live
in the sidecar's objects are read at scrape time by a collector (so they are right even when
breaker state is shared through Redis); events that leave no trace in those objects are
counted by listeners: :class:`~mlwarden.sidecar.proxy_metrics.ProxyMetrics` hears the
proxy's hooks on the request path and records them in the middleware's lean collectors
(:mod:`mlwarden.middleware.fastmetrics`, one lock per call).
The sidecar is one process: prometheus_client's multiprocess mode does not apply to it.

Exported (label values are upstream names from the configuration and fixed words only;
``upstream="none"`` where the sidecar answered itself):

- ``mlwarden_proxy_requests_total{upstream,code}``: client requests by who answered and the
  status class sent (``2xx`` … ``5xx``; a client that left early counts as ``4xx``, nginx's 499).
- ``mlwarden_proxy_request_duration_seconds{upstream}``: histogram, arrival to last byte sent,
  retries and fallbacks included.
- ``mlwarden_proxy_requests_in_flight``: gauge of client requests being served.
- ``mlwarden_proxy_edge_refused_total{reason}``: connections refused before a request
  (``header_bytes``, ``header_count``, ``head_timeout``, ``idle_timeout``).
- ``mlwarden_upstream_requests_total{upstream,outcome}``: every attempt sent to an upstream;
  ``outcome`` a status class or ``connect_error``, ``timeout``, ``reset``.
- ``mlwarden_upstream_request_duration_seconds{upstream}``: histogram of those attempts.
- ``mlwarden_retries_total{upstream,reason}``: retries granted, by the retriable reason
  (``connect_error``, ``timeout``, ``reset``, ``status_503``, ``status_5xx`` …).
- ``mlwarden_fallbacks_total{from,to,reason}``: a request moving on from one upstream to the
  next; ``reason`` in breaker_open, unhealthy, retries_exhausted, budget_exhausted,
  retry_too_late, error.
- ``mlwarden_health_checks_total{upstream,result}``: every probe, by result (ok, degraded,
  failing, bad_status, timeout, connect_error, error).
- ``mlwarden_health_check_duration_seconds{upstream}``: histogram of the probes.
- the shadow's (:class:`~mlwarden.sidecar.routing.shadow_metrics.ShadowMetrics`), when one is
  configured: ``mlwarden_shadow_requests_total{target,outcome}``,
  ``mlwarden_shadow_comparisons_total{target,result}``, ``mlwarden_shadow_uncompared_total``,
  ``mlwarden_shadow_duration_seconds``, ``mlwarden_shadow_agreement_ratio``,
  ``mlwarden_shadow_queue_depth``.
- ``mlwarden_healing_actions_total{action,outcome}``: the healing ledger's records.
- ``mlwarden_canary_weight_ratio{candidate}`` (0 to 1), ``mlwarden_canary_state{candidate,state}``
  (1 for the current one of analysing, promoted, done, rolled_back) and
  ``mlwarden_canary_analyses_total{candidate,verdict}`` (pass, fail, inconclusive), when a
  canary is configured.
- ``mlwarden_build_info{version,revision,python_version}``: 1
  (:mod:`mlwarden.middleware.build_info`).

- ``mlwarden_breaker_state{upstream}``: gauge, 0 closed, 1 half_open, 2 open (ordered by how
  little traffic the upstream gets, so ``max()`` over upstreams means "the worst").
- ``mlwarden_breaker_transitions_total{upstream,to}``: counter; ``to`` in closed, half_open,
  open.
- ``mlwarden_breaker_storage_available{upstream}``, ``mlwarden_breaker_storage_errors_total``,
  ``mlwarden_breaker_fail_open_total``: the shared state in Redis (``breaker.redis_url``):
  whether it answers, its failed accesses, the attempts admitted while it did not (fail open).
- ``mlwarden_upstream_healthy{upstream}``: gauge, 1 in rotation, 0 out (1 for every upstream
  while no health checker runs, as the router then sees them).
- ``mlwarden_health_transitions_total{upstream,to}``: counter; ``to`` in healthy, unhealthy.
- ``mlwarden_retry_budget_requests_total``, ``mlwarden_retry_budget_retries_total``,
  ``mlwarden_retry_budget_exhausted_total``: counters read from the proxy's
  :class:`~mlwarden.sidecar.resilience.retry.RetryBudget` (requests seen, retries granted,
  retries refused because the budget was spent).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlwarden.middleware.build_info import register_build_info
from mlwarden.middleware.fastmetrics import FastCounter, FastFamilies, FastHistogram
from mlwarden.sidecar.edge import EDGE_REFUSALS
from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.proxy_metrics import ProxyMetrics

if TYPE_CHECKING:
    from mlwarden.sidecar.healing.ledger_records import LedgerRecord
    from mlwarden.sidecar.routing.health_checks import HealthChecker, ProbeResult

__all__ = ["BREAKER_STATE_VALUES", "SidecarMetrics"]


class Observed(Protocol):
    """What the metrics read of a sidecar (:class:`~mlwarden.sidecar.app.Sidecar`)."""

    pools: Any
    breakers: Any
    health: Any
    canary: Any
    retry_policy: Any
    ledger: Any

    @property
    def in_flight(self) -> int: ...
    def add_events(self, listener: Listener) -> None: ...


#: Health probes: bounded by their timeout, default 1 s.
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CANARY_STATES = ("analysing", "promoted", "done", "rolled_back")

#: The value of ``mlwarden_breaker_state`` for each state.
BREAKER_STATE_VALUES: dict[str, float] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
_BREAKER_STATES = tuple(BREAKER_STATE_VALUES)
_HEALTH_STATES = ("healthy", "unhealthy")


def _ledger_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """The healing ledger's writer: what failed, was dropped (queue full), fsynced, waits."""
    for name, key, doc in (
        ("mlwarden_ledger_write_errors", "write_errors", "Ledger lines not written (I/O errors)."),
        (
            "mlwarden_ledger_dropped",
            "dropped",
            "Ledger lines dropped with the writer's queue full (ledger.max_queued).",
        ),
        ("mlwarden_ledger_fsyncs", "fsyncs", "Group commits of the ledger file (one fsync each)."),
    ):
        yield CounterMetricFamily(name, doc, value=float(stats.get(key, 0)))
    yield GaugeMetricFamily(
        "mlwarden_ledger_queued",
        "Ledger lines accepted and not yet written to the file.",
        value=float(stats.get("queued", 0)),
    )


def _fleet_families(fleet: Any) -> Iterator[Metric]:
    """This replica in its fleet: leading or not, Redis reachable, terms won, records lost."""
    yield GaugeMetricFamily(
        "mlwarden_fleet_leader",
        "1 while this sidecar holds the fleet's lease and takes its decisions, else 0.",
        value=1.0 if fleet.is_leader else 0.0,
    )
    yield GaugeMetricFamily(
        "mlwarden_fleet_redis_available",
        "0 while the fleet's Redis is unreachable and this sidecar decides alone, else 1.",
        value=1.0 if fleet.available else 0.0,
    )
    yield CounterMetricFamily(
        "mlwarden_fleet_terms_won",
        "Times this sidecar took the fleet's lease (a new term each).",
        value=float(fleet.lease.terms_won),
    )
    yield CounterMetricFamily(
        "mlwarden_fleet_records_dropped",
        "Ledger records not sent to the fleet's stream (its queue full while Redis was down).",
        value=float(fleet.records_dropped),
    )


def _fleet_drift_families(drift: Any) -> Iterator[Metric]:
    """Drift judged on the fleet's summed counts: the verdict's figures, and lost passes."""
    verdict = drift.current()
    if verdict is not None and verdict.get("enough_data"):
        labels = ["upstream"]
        for name, doc, value in (
            (
                "mlwarden_fleet_drift_detected",
                "1 while drift is flagged on the sum of every replica's rows, else 0.",
                1.0 if verdict.get("detected") else 0.0,
            ),
            (
                "mlwarden_fleet_drift_ratio",
                "Over the fleet's rows, the largest drift statistic over its threshold "
                "(1 or more: a test fired).",
                verdict.get("ratio"),
            ),
            (
                "mlwarden_fleet_drift_rows",
                "Rows in the fleet's drift windows, summed over the replicas judged.",
                verdict.get("rows"),
            ),
            (
                "mlwarden_fleet_drift_replicas",
                "Replicas whose counts the fleet's drift verdict sums.",
                len(verdict.get("replicas", ())),
            ),
        ):
            if isinstance(value, int | float):
                family = GaugeMetricFamily(name, doc, labels=labels)
                family.add_metric([drift.target], float(value))
                yield family
    yield CounterMetricFamily(
        "mlwarden_fleet_drift_fetch_errors",
        "Drift counts or baselines this replica could not read from its model server.",
        value=float(drift.fetch_errors),
    )


class _ScrapeCollector(Collector):
    """Reads breaker states, health and the retry budget of the attached sidecar at scrape."""

    def __init__(self, owner: SidecarMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        # Names only, so the registry can reject duplicates without a proxy attached yet.
        return [
            GaugeMetricFamily("mlwarden_breaker_state", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_breaker_storage_available", "", labels=["upstream"]),
            CounterMetricFamily("mlwarden_breaker_storage_errors", "", labels=["upstream"]),
            CounterMetricFamily("mlwarden_breaker_fail_open", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_upstream_healthy", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_proxy_requests_in_flight", ""),
            CounterMetricFamily("mlwarden_proxy_edge_refused", "", labels=["reason"]),
            GaugeMetricFamily("mlwarden_canary_weight_ratio", "", labels=["candidate"]),
            GaugeMetricFamily("mlwarden_canary_state", "", labels=["candidate", "state"]),
            CounterMetricFamily("mlwarden_canary_analyses", "", labels=["candidate", "verdict"]),
            CounterMetricFamily("mlwarden_retry_budget_requests", ""),
            CounterMetricFamily("mlwarden_retry_budget_retries", ""),
            CounterMetricFamily("mlwarden_retry_budget_exhausted", ""),
            CounterMetricFamily("mlwarden_ledger_write_errors", ""),
            CounterMetricFamily("mlwarden_ledger_dropped", ""),
            CounterMetricFamily("mlwarden_ledger_fsyncs", ""),
            GaugeMetricFamily("mlwarden_ledger_queued", ""),
            GaugeMetricFamily("mlwarden_fleet_leader", ""),
            GaugeMetricFamily("mlwarden_fleet_redis_available", ""),
            CounterMetricFamily("mlwarden_fleet_terms_won", ""),
            CounterMetricFamily("mlwarden_fleet_records_dropped", ""),
            GaugeMetricFamily("mlwarden_fleet_drift_detected", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_fleet_drift_ratio", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_fleet_drift_rows", "", labels=["upstream"]),
            GaugeMetricFamily("mlwarden_fleet_drift_replicas", "", labels=["upstream"]),
            CounterMetricFamily("mlwarden_fleet_drift_fetch_errors", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        sidecar = self._owner.sidecar
        if sidecar is None:
            return
        health = sidecar.health
        state = GaugeMetricFamily(
            "mlwarden_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half_open, 2 open.",
            labels=["upstream"],
        )
        available = GaugeMetricFamily(
            "mlwarden_breaker_storage_available",
            "0 while a breaker's shared state (Redis) fails and the breaker fails open, else 1.",
            labels=["upstream"],
        )
        errors = CounterMetricFamily(
            "mlwarden_breaker_storage_errors",
            "Failed accesses to a breaker's shared state (at most one per retry interval).",
            labels=["upstream"],
        )
        fail_open = CounterMetricFamily(
            "mlwarden_breaker_fail_open",
            "Attempts admitted without the breaker's shared state, which was unavailable.",
            labels=["upstream"],
        )
        for name, breaker in sidecar.breakers.items():
            state.add_metric([name], BREAKER_STATE_VALUES[breaker.state])
            available.add_metric([name], 1.0 if breaker.storage_available else 0.0)
            errors.add_metric([name], float(breaker.storage_errors_total))
            fail_open.add_metric([name], float(breaker.fail_open_total))
        yield state
        yield available
        yield errors
        yield fail_open
        healthy = GaugeMetricFamily(
            "mlwarden_upstream_healthy",
            "1 when the upstream's health checks keep it in rotation, else 0.",
            labels=["upstream"],
        )
        for name in sidecar.pools:
            in_rotation = health is None or name not in health.names or health.is_healthy(name)
            healthy.add_metric([name], 1.0 if in_rotation else 0.0)
        yield healthy
        yield GaugeMetricFamily(
            "mlwarden_proxy_requests_in_flight",
            "Client requests the proxy is serving now.",
            value=float(sidecar.in_flight),
        )
        refused = CounterMetricFamily(
            "mlwarden_proxy_edge_refused",
            "Client connections refused before a request: head too large or too many "
            "headers (431), head or first byte too slow (408), malformed (400), beyond "
            "max_connections (503).",
            labels=["reason"],
        )
        edge = getattr(sidecar, "edge", None)
        for reason in EDGE_REFUSALS:
            refused.add_metric([reason], float(edge.refused[reason]) if edge is not None else 0.0)
        yield refused
        yield from _ledger_families(sidecar.ledger.stats())
        fleet = getattr(sidecar, "fleet", None)
        if fleet is not None:
            yield from _fleet_families(fleet)
        fleet_drift = getattr(sidecar, "fleet_drift", None)
        if fleet_drift is not None:
            yield from _fleet_drift_families(fleet_drift)
        canary = sidecar.canary
        if canary is not None:
            weight = GaugeMetricFamily(
                "mlwarden_canary_weight_ratio",
                "Share of requests that try the canary candidate first (0 to 1).",
                labels=["candidate"],
            )
            # The controller keeps percent (steps_percent); Prometheus wants the base unit.
            weight.add_metric([canary.candidate], canary.weight / 100.0)
            yield weight
            state = GaugeMetricFamily(
                "mlwarden_canary_state",
                "1 for the canary's current state: analysing, promoted, done, rolled_back.",
                labels=["candidate", "state"],
            )
            for name in CANARY_STATES:
                state.add_metric([canary.candidate, name], 1.0 if canary.state == name else 0.0)
            yield state
            analyses = CounterMetricFamily(
                "mlwarden_canary_analyses",
                "Canary analyses by verdict.",
                labels=["candidate", "verdict"],
            )
            for verdict, count in canary.verdicts.items():
                analyses.add_metric([canary.candidate, verdict], float(count))
            yield analyses
        budget = sidecar.retry_policy.budget
        for metric, doc, value in (
            (
                "mlwarden_retry_budget_requests",
                "Client requests counted by the retry budget.",
                budget.requests_total,
            ),
            (
                "mlwarden_retry_budget_retries",
                "Retries granted by the retry budget.",
                budget.retries_total,
            ),
            (
                "mlwarden_retry_budget_exhausted",
                "Retries refused because the retry budget was spent.",
                budget.exhausted_total,
            ),
        ):
            yield CounterMetricFamily(metric, doc, value=float(value))


class SidecarMetrics(Listener):
    """The sidecar's metrics in ``registry``; :meth:`attach` one sidecar to feed them.

    One instance per registry (a registry rejects the second set of names). Attaching a second
    sidecar is refused: the gauges would mix two sidecars' upstreams.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sidecar: Observed | None = None
        self._watched: HealthChecker | None = None
        self._lock = threading.Lock()
        register_build_info(registry)
        self.breaker_transitions = Counter(
            "mlwarden_breaker_transitions_total",
            "Circuit breaker state changes per upstream, by the state entered.",
            ("upstream", "to"),
            registry=registry,
        )
        self.health_transitions = Counter(
            "mlwarden_health_transitions_total",
            "Upstreams entering or leaving rotation by their health checks.",
            ("upstream", "to"),
            registry=registry,
        )
        families = FastFamilies()
        self.proxy_events = ProxyMetrics(families)
        self.health_checks = FastCounter(
            "mlwarden_health_checks_total",
            "Health-check probes per upstream, by result: ok, degraded (both pass); failing, "
            "bad_status, timeout, connect_error, error.",
            ("upstream", "result"),
        )
        self.health_check_duration = FastHistogram(
            "mlwarden_health_check_duration_seconds",
            "Time of each health-check probe.",
            ("upstream",),
            PROBE_BUCKETS,
        )
        self.healing_actions = FastCounter(
            "mlwarden_healing_actions_total",
            "Records of the healing ledger: every action, automatic or manual, by outcome.",
            ("action", "outcome"),
        )
        families.add(self.health_checks)
        families.add(self.health_check_duration)
        families.add(self.healing_actions)
        registry.register(families)
        registry.register(_ScrapeCollector(self))

    def attach(self, sidecar: Observed) -> None:
        """Listen to ``sidecar``'s proxy, ledger, breakers and health checks, and read it at
        scrape time (the composition root calls this once)."""
        with self._lock:
            if self.sidecar is not None:
                if self.sidecar is sidecar:
                    return
                raise ValueError("SidecarMetrics is already attached to another sidecar")
            self.sidecar = sidecar
        sidecar.add_events(self.proxy_events)
        self.proxy_events.prepare(list(sidecar.pools))
        for action in ("breaker_opened", "rollback", "escalation", "fallback"):
            self.healing_actions.labels(action, "ok")
        sidecar.ledger.add_listener(self)
        for name, breaker in sidecar.breakers.items():
            # Series exist from the start (at 0), so rate() sees the first transition.
            for to in _BREAKER_STATES:
                self.breaker_transitions.labels(name, to)
            for to in _HEALTH_STATES:
                self.health_transitions.labels(name, to)
            breaker.add_listener(self)
        self.watch_health(sidecar.health)

    def watch_health(self, health: HealthChecker | None) -> None:
        """Listen to ``health`` (the attached sidecar's checker)."""
        if health is None or health is self._watched:
            return
        with self._lock:
            if health is self._watched:
                return
            self._watched = health
        health.add_listener(self)
        for name in health.names:
            self.health_checks.labels(name, "ok")
            self.health_checks.labels(name, "connect_error")
            self.health_check_duration.labels(name)

    def recorded(self, record: LedgerRecord) -> None:
        self.healing_actions.labels(record.action, record.outcome).inc()  # type: ignore[attr-defined]

    def probe_finished(self, name: str, result: ProbeResult) -> None:
        self.health_checks.labels(name, result.outcome).inc()  # type: ignore[attr-defined]
        self.health_check_duration.labels(name).observe(  # type: ignore[attr-defined]
            result.duration_s
        )

    def breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        if new in BREAKER_STATE_VALUES:
            self.breaker_transitions.labels(name, new).inc()

    def health_changed(self, name: str, healthy: bool, reason: str) -> None:
        sidecar = self.sidecar
        if sidecar is not None and name in sidecar.pools:
            self.health_transitions.labels(name, "healthy" if healthy else "unhealthy").inc()

    def __repr__(self) -> str:
        attached = list(self.sidecar.pools) if self.sidecar is not None else None
        return f"SidecarMetrics(upstreams={attached!r})"
