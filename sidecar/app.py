"""The composition root: builds every part of one sidecar, wires them, starts and stops them.

:class:`Sidecar` is the only place that knows how the parts fit together. From one validated
:class:`~mlwarden.sidecar.config.SidecarConfig` it builds, in this order:

1. per upstream: a connection pool and a circuit breaker; the health checker; the
   :class:`~mlwarden.sidecar.routing.availability.Availability` rule over both, and the router
   that asks it; the one retry policy (its budget shared by every request);
2. the windows of attempts, the healing ledger, and (with a ``registry``) the metrics;
3. the shadow mirror, the signal board (:mod:`mlwarden.sidecar.signals`), the canary, the
   healing policies (acting through a :class:`~mlwarden.sidecar.healing.ports.PartsPort`
   over the router, canary, signals, ledger and webhooks), the tracer;
4. the request path, :class:`~mlwarden.sidecar.proxy.ProxyApp`, handed what it needs.

Listeners are wired here: breaker and health transitions become ledger records, a health
check bringing an upstream back closes its breaker (``breaker.close_on_healthy``), the
candidate's breaker opening rolls the canary back, and the metrics hear everything.

:meth:`Sidecar.start` starts the background parts (ledger sink, shadow workers, webhook
sender, policy loop, canary loop, health checks) and :meth:`Sidecar.aclose` stops them in
the reverse order, then closes the pools, breakers and ledger it created. The proxy's ASGI
lifespan calls both, so serving ``sidecar.proxy`` with uvicorn runs the whole sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from mlwarden.middleware.health_report import HealthReport
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.edge import EdgeCounts
from mlwarden.sidecar.fleet.canary import FleetCanary
from mlwarden.sidecar.fleet.coordinator import Fleet
from mlwarden.sidecar.fleet.counts import FleetRecords
from mlwarden.sidecar.fleet.drift import FleetDrift
from mlwarden.sidecar.fleet.escalation import FleetEscalation
from mlwarden.sidecar.fleet.routes import FleetPolicyScope, FleetRoutes
from mlwarden.sidecar.healing.ledger import Ledger
from mlwarden.sidecar.healing.policies import PolicyEngine
from mlwarden.sidecar.healing.ports import PartsPort
from mlwarden.sidecar.healing.vocabulary import VOCABULARY
from mlwarden.sidecar.listeners import FanOut, Listener
from mlwarden.sidecar.metrics import SidecarMetrics
from mlwarden.sidecar.operational_paths import OperationalPaths
from mlwarden.sidecar.proxy import ProxyApp
from mlwarden.sidecar.resilience.breaker import AsyncBreaker, build_breakers
from mlwarden.sidecar.resilience.retry import RetryPolicy
from mlwarden.sidecar.routing.availability import Availability
from mlwarden.sidecar.routing.canary import CanaryController
from mlwarden.sidecar.routing.health_checks import HealthChecker
from mlwarden.sidecar.routing.router import Router
from mlwarden.sidecar.routing.shadow import ShadowMirror
from mlwarden.sidecar.routing.shadow_metrics import ShadowMetrics
from mlwarden.sidecar.signals.fleet import FleetSignals
from mlwarden.sidecar.signals.fleet_drift import FleetDriftSignals
from mlwarden.sidecar.signals.health import HealthSignals
from mlwarden.sidecar.signals.loop import BreakerSignals, CanarySignals, ShadowSignals
from mlwarden.sidecar.signals.prometheus import PrometheusSignals
from mlwarden.sidecar.signals.samples import IntervalSamples
from mlwarden.sidecar.signals.source import SignalBoard
from mlwarden.sidecar.signals.windows import UpstreamWindows, WindowSignals
from mlwarden.sidecar.tracing import ProxyTracer
from mlwarden.sidecar.upstream import UpstreamPool

__all__ = ["Sidecar"]

log = logging.getLogger("mlwarden.sidecar")


class Sidecar(Listener):
    """One sidecar built from ``config``; see the module docstring.

    Parts given (``pools``, ``breakers``, ``health``, ``retry_policy``) are used as they are
    and not closed here; ``health_checks=False`` runs no checker at all (every upstream
    counts as healthy). ``registry`` receives the sidecar's metrics (none without one).
    ``clock`` (monotonic seconds) drives deadlines, windows and loops, ``wall_clock`` (epoch
    seconds) the breakers and the ledger's times, ``sleep`` every wait. ``events`` hear each
    request (more with :meth:`add_events`); ``tracer_provider`` (default: the global one)
    receives a server span per request and a client span per attempt.
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        registry: CollectorRegistry | None = None,
        pools: Mapping[str, UpstreamPool] | None = None,
        breakers: Mapping[str, AsyncBreaker] | None = None,
        health: HealthChecker | None = None,
        health_checks: bool = True,
        retry_policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        events: Listener | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.config = config
        names = [u.name for u in config.upstreams]
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

        # 1. upstreams, availability, routing, retries
        self._owns_pools = pools is None
        self.pools: dict[str, UpstreamPool] = (
            dict(pools)
            if pools is not None
            else {u.name: UpstreamPool.from_config(u) for u in config.upstreams}
        )
        self._owns_breakers = breakers is None
        self.breakers: dict[str, AsyncBreaker] = (
            dict(breakers) if breakers is not None else build_breakers(config, clock=wall_clock)
        )
        self._runs_health = health is None and health_checks
        if health is None and health_checks:
            health = HealthChecker.from_config(config.health_checks, config.upstreams)
        self.health: HealthChecker | None = health
        self.availability = Availability(self.breakers, self.health, wall_clock=wall_clock)
        self.router = Router(
            config.routing.primary,
            config.routing.fallbacks,
            is_available=self.availability.is_available,
        )
        self.retry_policy = (
            retry_policy
            if retry_policy is not None
            else RetryPolicy.from_config(
                config.retry, config.timeouts, clock=clock, wall_clock=wall_clock, sleep=sleep
            )
        )

        # 2. what is counted and recorded
        #: Per-upstream windows of attempts: the canary's and the policies' local signals.
        self.windows = UpstreamWindows(names, clock=clock)
        #: The healing ledger: every decision, automatic or manual (file per ``ledger.path``).
        self.ledger = Ledger.from_config(config.ledger)
        self._ledger_sink: Any = None
        self.metrics = SidecarMetrics(registry) if registry is not None else None
        self.shadow_metrics = (
            ShadowMetrics(registry) if registry is not None and config.shadow else None
        )

        # 3. the healing loop's parts
        self.shadow = self._build_shadow() if config.shadow is not None else None
        self.canary: CanaryController | None = None
        self._prometheus: dict[str, PrometheusSignals] = {}  # one client per URL
        fleet_url = config.fleet.prometheus_url if config.fleet is not None else None
        #: The fleet's figures for the policies (``fleet_*``; unknown without a Prometheus).
        self.fleet_signals = FleetSignals(self._prometheus_at(fleet_url) if fleet_url else None)
        self.signals = SignalBoard(
            [
                WindowSignals(self.windows),
                HealthSignals(self.health_report, self._healthy),
                BreakerSignals(self.breakers),
                ShadowSignals(self._shadow_agreement),
                CanarySignals(lambda: self.canary.weight if self.canary is not None else None),
                FleetDriftSignals(lambda: self.fleet_drift),
                self.fleet_signals,
            ],
            vocabulary=VOCABULARY,
        )
        self.canary_samples: IntervalSamples | None = None
        if config.canary is not None:
            c = config.canary
            assert c.stable is not None  # filled in by the configuration loader
            self.canary_samples = IntervalSamples((c.candidate, c.stable))
            self.canary = CanaryController(
                c,
                local=self.signals,
                samples=self.canary_samples,
                fleet=(
                    self._prometheus_at(c.prometheus_url)
                    if c.source == "prometheus" and c.prometheus_url
                    else None
                ),
                router=self.router,
                breaker_state=lambda name: self.breakers[name].state,
                record=self.record,
                clock=clock,
                sleep=sleep,
            )
        #: Fleet mode (``fleet:``): the lease, the shared state, the fleet's ledger and counts.
        self.fleet: Fleet | None = None
        self.fleet_canary: FleetCanary | None = None
        #: Drift judged on every replica's counts (``fleet.drift``), with a fleet.
        self.fleet_drift: FleetDrift | None = None
        if config.fleet is not None:
            self._build_fleet(clock, wall_clock, sleep)
        #: Outgoing webhooks (policies, escalations): the sender is built at start-up.
        self.webhooks: Any = None
        self._webhook_callbacks: dict[str, Callable[[Any], None]] = {}
        self._webhook_seq = 0
        #: The healing policies (configured, or the tiered defaults), run from start-up.
        self.policies = PolicyEngine.from_config(
            config,
            PartsPort(
                routes=self.router,
                canary=self.canary,
                is_available=self.availability.is_available,
                signals=self.signals,
                ledger=(
                    FleetRecords(self.ledger, self.fleet.counts)
                    if self.fleet is not None
                    else self.ledger
                ),
                record=self.record,
                send_webhook=self.send_webhook,
            ),
            clock=clock,
            wall_clock=wall_clock,
            sleep=sleep,
        )
        self.tracer = ProxyTracer(tracer_provider=tracer_provider)
        #: The fleet policies' routes, published by the leader and forced by every replica.
        self.fleet_routes: FleetRoutes | None = None
        if self.fleet is not None:
            self._escalate_as_a_fleet(self.fleet, wall_clock)
            self._route_as_a_fleet(self.fleet)

        # 4. the request path
        #: Every listener of the request path (more with :meth:`add_events`).
        self.events = FanOut(
            [
                self.windows,
                *([self.canary_samples] if self.canary_samples is not None else []),
                *([events] if events is not None else []),
            ]
        )
        #: Clients the public port refused before a request (head limits and timeouts), filled
        #: by the serving layer's protocol (:mod:`mlwarden.sidecar.edge`).
        self.edge = EdgeCounts()
        self.proxy = ProxyApp(
            pools=self.pools,
            breakers=self.breakers,
            router=self.router,
            availability=self.availability,
            retry_policy=self.retry_policy,
            limits=config.limits,
            timeouts=config.timeouts,
            degraded_response=config.degraded_response,
            events=self.events,
            tracer=self.tracer,
            canary=self.canary,
            shadow=self.shadow,
            shadow_capture_bytes=config.shadow.max_body_bytes if config.shadow else 0,
            operational_paths=OperationalPaths.from_config(config.routing),
            lifecycle=self,
            clock=clock,
            sleep=sleep,
        )
        self._wire()

    def __repr__(self) -> str:
        return f"Sidecar(upstreams={list(self.pools)!r}, router={self.router!r})"

    # -- building --------------------------------------------------------------------------

    def _build_shadow(self) -> ShadowMirror:
        c = self.config.shadow
        assert c is not None
        u = self.config.upstream(c.target)
        # Its own pool: shadow copies never take a connection a real request could use.
        pool = UpstreamPool.from_config(u, max_connections=c.max_concurrent)
        return ShadowMirror.from_config(
            c, pool, is_available=self.availability.is_available, metrics=self.shadow_metrics
        )

    def _build_fleet(
        self,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        assert self.config.fleet is not None
        self.fleet = Fleet(
            self.config.fleet,
            record=self.record,
            count_horizon_s=self.config.healing.escalation.window_s,
            clock=clock,
            wall_clock=wall_clock,
            sleep=sleep,
        )
        self.ledger.add_listener(self.fleet)  # the fleet's stream and counts
        fc = self.config.fleet
        if fc.drift:
            target = fc.drift_upstream or self.config.routing.primary
            u = self.config.upstream(target)
            self.fleet_drift = FleetDrift(
                self.fleet,
                url=u.url,
                target=target,
                model=fc.drift_model,
                interval_s=fc.drift_interval_s,
                record=self.record,
                verify=u.ssl_context() or True,
                clock=clock,
                wall_clock=wall_clock,
            )
        if self.canary is not None:
            self.fleet_canary = FleetCanary(
                self.canary, self.fleet, record=self.record, clock=clock, sleep=sleep
            )

    def _prometheus_at(self, url: str) -> PrometheusSignals:
        """The canary and the fleet signals share one client when they query one server."""
        if url not in self._prometheus:
            self._prometheus[url] = PrometheusSignals(url)
        return self._prometheus[url]

    def _route_as_a_fleet(self, fleet: Fleet) -> None:
        """Fleet policies run on the leader; their routes reach every replica
        (mlwarden.sidecar.fleet.routes)."""
        routes = FleetRoutes(
            fleet, self.router, record=self.record, followed=self.policies.followed
        )
        self.fleet_routes = routes
        self.policies.scope = FleetPolicyScope(fleet, routes)
        fleet.passes += [routes.publish, routes.follow]

    def _escalate_as_a_fleet(self, fleet: Fleet, wall_clock: Callable[[], float]) -> None:
        """Escalating is the leader's, on the fleet's counts (mlwarden.sidecar.fleet.escalation)."""
        fleet.counts.set_policies(p.name for p in self.policies.policies)
        self.policies.escalation.decides = lambda: fleet.is_leader or not fleet.available
        fleet.on_lead = FleetEscalation(self.policies, fleet.counts, wall_clock=wall_clock).sweep

    def _wire(self) -> None:
        for breaker in self.breakers.values():
            breaker.add_listener(self)
        if self.health is not None:
            self.health.add_listener(self)
        if self.canary is not None:
            self.breakers[self.canary.candidate].add_listener(self.canary)
        if self.metrics is not None:
            self.metrics.attach(self)

    def add_events(self, listener: Listener) -> None:
        """Let ``listener`` hear every request from now on (a raising listener is logged)."""
        self.events.add(listener)

    # -- what the parts tell each other -------------------------------------------------------

    def record(self, **fields: Any) -> None:
        """One healing decision to the ledger (its errors logged, never raised into the
        caller: healing goes on when its record cannot be written) and to the log."""
        log.info(
            "healing: %s %s: %s",
            fields.get("action"),
            fields.get("target"),
            fields.get("reason"),
            extra={"healing": fields},
        )
        try:
            self.ledger.append(**fields)
        except Exception:
            log.exception("the healing ledger could not record %s", fields.get("action"))

    def breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        """A breaker opening or closing is a ledger record."""
        if new in ("open", "closed") and old != new:
            self.record(
                action="breaker_opened" if new == "open" else "breaker_closed",
                target=name,
                reason=reason,
                severity="warning" if new == "open" else "info",
                signals={"fail_counter": self.breakers[name].fail_counter},
            )

    def health_changed(self, name: str, healthy: bool, reason: str) -> None:
        """A rotation change is a ledger record; back in rotation closes the breaker
        (``breaker.close_on_healthy``)."""
        self.record(
            action="upstream_healthy" if healthy else "upstream_unhealthy",
            target=name,
            reason=reason,
            severity="info" if healthy else "warning",
        )
        breaker = self.breakers.get(name)
        if (
            healthy
            and breaker is not None
            and self.config.breaker.close_on_healthy
            and breaker.state != "closed"
        ):
            breaker.reset("health_check_passed")  # recorded as breaker_closed by the listener

    def health_report(self, name: str) -> HealthReport | None:
        """The last health report of ``name`` (None: no checker, unknown, or not a report)."""
        health = self.health
        if health is None or name not in health.names:
            return None
        return health.state(name).last_report

    def _healthy(self, name: str) -> bool | None:
        health = self.health
        return None if health is None else health.is_healthy(name)

    def _shadow_agreement(self) -> float | None:
        return self.shadow.agreement_rate() if self.shadow is not None else None

    def is_available(self, name: str) -> bool:
        """Healthy (or unchecked) and its breaker not open within its reset timeout."""
        return self.availability.is_available(name)

    @property
    def in_flight(self) -> int:
        """Client requests being forwarded now (their bodies in)."""
        return self.proxy.in_flight

    def send_webhook(
        self,
        name: str,
        url: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_result: Callable[[Any], None] | None = None,
    ) -> bool:
        """Queue one webhook delivery (False: not started, queue full or body too large);
        ``on_result(WebhookResult)`` once it is delivered or given up."""
        if self.webhooks is None:
            return False
        self._webhook_seq += 1
        key = f"{name}#{self._webhook_seq}"
        if on_result is not None:
            self._webhook_callbacks[key] = on_result
        if not self.webhooks.send(key, url, body, headers=headers):
            self._webhook_callbacks.pop(key, None)
            return False
        return True

    def _webhook_done(self, result: Any) -> None:
        callback = self._webhook_callbacks.pop(result.name, None)
        if callback is not None:
            callback(result)

    # -- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background parts (each once; see the module docstring for the order)."""
        self.tracer.pin()
        lc = self.config.ledger
        if lc.influx_url is not None and self._ledger_sink is None:
            from mlwarden.middleware.errors import ConfigError
            from mlwarden.middleware.influx import InfluxSettings, missing_client
            from mlwarden.sidecar.healing.ledger_influx import InfluxLedgerSink

            if (problem := missing_client("ledger.influx_url")) is not None:
                raise ConfigError([problem])

            self._ledger_sink = InfluxLedgerSink(
                InfluxSettings(
                    url=lc.influx_url,
                    bucket=lc.influx_bucket,
                    org=lc.influx_org,
                    token=lc.influx_token,
                )
            )
            self.ledger.add_listener(self._ledger_sink)
        if self.shadow is not None:
            self.shadow.start()
        if self.webhooks is None:
            from mlwarden.sidecar.healing.webhooks import WebhookSender

            self.webhooks = WebhookSender(on_result=self._webhook_done)
            self.webhooks.start()
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.policies.policies:
            loops.append(("policies", self.policies.run))
        if self.fleet is not None:
            loops.append(("fleet", self.fleet.run))
        if self.fleet_drift is not None:
            loops.append(("fleet-drift", self.fleet_drift.run))
        if self.fleet_canary is not None:
            loops.append(("canary", self.fleet_canary.run))
        elif self.canary is not None:
            loops.append(("canary", self.canary.run))
        if self._runs_health and self.health is not None:
            loops.append(("health-checks", self.health.run))
        loop = asyncio.get_running_loop()
        for name, run in loops:
            if name not in self._tasks:
                self._tasks[name] = loop.create_task(run(), name=f"mlwarden-{name}")

    async def aclose(self) -> None:
        """Stop what :meth:`start` started, then close the parts this sidecar created (once:
        a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self.shadow is not None:
            await self.shadow.aclose()
            await self.shadow.pool.aclose()
        tasks, self._tasks = self._tasks, {}
        for name in ("canary", "policies", "health-checks", "fleet-drift", "fleet"):
            task = tasks.get(name)
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
            if name == "health-checks" and self.health is not None:
                await self.health.aclose()
        if self.fleet_drift is not None:
            await self.fleet_drift.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()  # gives the lease up: another replica leads at once
        for prometheus in self._prometheus.values():
            await prometheus.aclose()  # the canary's loop may have closed it: that is fine
        webhooks, self.webhooks = self.webhooks, None
        if webhooks is not None:
            await webhooks.aclose()
        if self._owns_pools:
            await asyncio.gather(*(pool.aclose() for pool in self.pools.values()))
        if self._owns_breakers:
            for breaker in self.breakers.values():
                breaker.close()  # the shared-state client, when there is one
        sink, self._ledger_sink = self._ledger_sink, None
        if sink is not None:
            await asyncio.to_thread(sink.close)
        await asyncio.to_thread(self.ledger.close)  # drains the writer: fsyncs what is queued
