"""The proxy hot path: one raw ASGI app that forwards each request to the best upstream.

This module owns forwarding one request: reading it, choosing candidates (``Router``), the
attempt loop (breaker admission, per-try and total deadlines, retries decided by
``RetryPolicy``, fallback to the next candidate), and streaming the answer back. It decides no
retry rule, breaker rule or health verdict itself: those live in ``resilience/`` and
``routing/``.

Per request:

1. The request body is read **whole into memory**, up to ``limits.max_request_bytes`` (larger:
   413 JSON, judged from ``content-length`` before reading when present). Model payloads are
   small, and a body held in memory can be replayed on a retry or a fallback; a streamed body
   could be sent once only. The response body, which may be large, is streamed chunk by chunk.
2. Candidates come from :class:`~mlwarden.sidecar.routing.router.Router`: an upstream is
   available when its health check passes and its breaker is not open and cooling down.
3. Each attempt takes a breaker slot (an open breaker → the next candidate at once), then
   ``UpstreamPool.request`` with ``timeout_s = min(per_try_timeout_s, time left)``; the per-try
   deadline covers the whole exchange, body included. The outcome (connect_error, timeout,
   reset, or the status) goes to the breaker and to the request's ``RetryAttempts``:
   retry the same upstream after the decided delay; when the policy gives up on a retriable
   failure (attempts or budget spent), move to the next candidate with a fresh attempt count,
   inside the same total deadline. A retriable status that is the last word (no candidate
   left) is passed to the client as the upstream sent it.
4. Once the response head has gone to the client nothing is retried; an upstream failure
   mid-body ends the client's response early (uvicorn closes the connection). A response
   above ``limits.max_response_bytes`` is refused with 502 when its ``content-length`` says so,
   else cut where it crosses the limit. Trailers are relayed when the server offers ASGI's
   ``http.response.trailers`` extension and the upstream announced them (``trailer``
   header); uvicorn has no such extension, so behind it they are dropped.
5. When nothing answered: ``degraded_response`` if configured, else 503 JSON
   ``{"error": "no upstream available", "tried": [...], "reason": ...}``.

Beyond ``limits.max_concurrent_requests`` in flight a request is shed at once with a 503 JSON
and ``x-mlwarden-overloaded: true`` (queueing would turn overload into timeouts).

Every step is reported to :class:`~mlwarden.sidecar.proxy_events.ProxyEvents` listeners
(metrics, and the analyses that need windows of outcomes), and traced when an OpenTelemetry
SDK is present (:mod:`mlwarden.sidecar.tracing`).

A client that disconnects (mid-body or mid-response) stops the exchange; the upstream
response is closed and the breaker counts nothing.

Lifespan: start-up starts the health checker's loop (unless one was injected, which its owner
runs); shut-down stops it and closes the pools this app created. WebSocket scopes are not
proxied: they are refused with close code 1013 (try again later), which uvicorn turns into a
403 before the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from mlwarden.middleware.tracing import RequestSpan
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.healing.ledger import Ledger
from mlwarden.sidecar.healing.policies import PolicyEngine
from mlwarden.sidecar.healing.signals import UpstreamWindows
from mlwarden.sidecar.proxy_events import FanOutEvents, ProxyEvents, status_class
from mlwarden.sidecar.resilience.breaker import (
    AsyncBreaker,
    BreakerOpen,
    Trial,
    build_breakers,
)
from mlwarden.sidecar.resilience.retry import (
    ExponentialJitterBackoff,
    Outcome,
    RetryAttempts,
    RetryBudget,
    RetryDecision,
    RetryOn,
    RetryPolicy,
    StopAfterAttempts,
    StopAfterDelay,
)
from mlwarden.sidecar.routing.canary import CanaryController
from mlwarden.sidecar.routing.health_checks import HealthChecker, HealthReportSummary
from mlwarden.sidecar.routing.router import Router
from mlwarden.sidecar.routing.shadow import ShadowConfig, ShadowCopy, ShadowMetrics, ShadowMirror
from mlwarden.sidecar.tracing import ProxyTracer
from mlwarden.sidecar.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["HOP_BY_HOP", "ProxyApp", "build_retry_policy"]

log = logging.getLogger("mlwarden.sidecar.proxy")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus ``proxy-*``
#: and whatever a ``connection`` header names.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
UPSTREAM_HEADER = b"x-mlwarden-upstream"
_TRAILERS_EXTENSION = "http.response.trailers"
#: Set on the 503 of a request shed because ``limits.max_concurrent_requests`` were in flight.
OVERLOADED_HEADER = b"x-mlwarden-overloaded"
# Dropped from requests besides the hop-by-hop ones: the pool writes its own host and framing.
_REQUEST_OWNED = frozenset({b"host", b"content-length"})
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
# Give-ups after which another upstream may still answer. "deadline" is the policy's word
# for "a retry here would not fit in the time left" (a long Retry-After, a long backoff):
# another upstream may still answer now, and a request whose time is really up is stopped
# before its next attempt anyway. "method"/"not_retriable" mean the request must not be sent
# again anywhere.
_FALL_BACK_ON = frozenset({"attempts", "budget", "deadline"})
# The fallback reason label of each give-up that moves on to the next candidate.
_FALLBACK_REASON = {
    "attempts": "retries_exhausted",
    "budget": "budget_exhausted",
    "deadline": "retry_too_late",
    "not_retriable": "error",
}
# The status recorded for a client that left before its answer was complete (nginx's word).
CLIENT_CLOSED = 499


def build_retry_policy(
    config: SidecarConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> RetryPolicy:
    """The proxy's one retry policy (budget shared by all requests) from ``config``."""
    r = config.retry
    return RetryPolicy(
        retry_on=RetryOn(r.retry_on, retriable_status_codes=r.retriable_status_codes),
        retriable_methods=r.retriable_methods,
        backoff=ExponentialJitterBackoff(
            base_interval_s=r.base_interval_s,
            multiplier=r.backoff_multiplier,
            max_interval_s=r.max_interval_s,
        ),
        stop=StopAfterAttempts(r.num_retries + 1) | StopAfterDelay(config.timeouts.total_timeout_s),
        budget=RetryBudget(
            budget_percent=r.budget_percent, min_retries_per_s=r.min_retries_per_s, clock=clock
        ),
        clock=clock,
        sleep=sleep,
    )


def _connection_tokens(headers: Headers) -> set[bytes]:
    return {
        t.strip().lower()
        for n, v in headers
        if n.lower() == b"connection"
        for t in v.split(b",")
        if t.strip()
    }


def _is_hop(name: bytes, named: set[bytes]) -> bool:
    return name in HOP_BY_HOP or name in named or name.startswith(b"proxy-")


def _json_response(
    status: int, payload: dict[str, Any], *, overloaded: bool = False
) -> tuple[int, Headers, bytes]:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if overloaded:
        headers.append((OVERLOADED_HEADER, b"true"))
    return status, headers, body


async def _send_whole(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, slots=True)
class _GiveUp:
    """An upstream is done with: ``fall_back`` says whether the next candidate may be tried,
    ``label`` is the fallback reason (:data:`~mlwarden.sidecar.proxy_events.FALLBACK_REASONS`)."""

    fall_back: bool
    reason: str
    label: str = "error"


class _Answer:
    """What the client was sent: by which upstream (None: the proxy itself) and the status;
    the request's server span, when traced; whether the server can send trailers; the shadow
    copy of the request and the primary's body captured for it (bounded)."""

    __slots__ = ("captured", "shadow", "span", "status", "trailers_ok", "upstream")

    def __init__(self, span: RequestSpan | None, trailers_ok: bool) -> None:
        self.upstream: str | None = None
        self.status = CLIENT_CLOSED
        self.span = span
        self.trailers_ok = trailers_ok
        self.shadow: ShadowCopy | None = None
        self.captured: list[bytes] | None = None


class _ClientGone(Exception):
    """The client disconnected; nothing is sent and nothing is counted against an upstream."""


class ProxyApp:
    """The reverse proxy as a raw ASGI app; see the module docstring for what it does.

    ``pools``, ``breakers`` (:func:`~mlwarden.sidecar.resilience.breaker.build_breakers`, with
    shared state in Redis when ``breaker.redis_url`` is set) and ``health`` are built from
    ``config`` when not given (given ones are used as they are and not closed here).
    ``clock`` (monotonic seconds) drives deadlines and the retry policy, ``sleep`` the waits
    between retries; breakers built here use ``wall_clock`` (epoch seconds, as pybreaker's
    storage expects). ``health_checks=False``
    runs no checker at all (every upstream counts as healthy). ``events`` listen to what each
    request does (metrics, analyses); more can be added with :meth:`add_events`.
    ``tracer_provider`` (default: the global one) receives a server span per request and a
    client span per attempt (:mod:`mlwarden.sidecar.tracing`).
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        pools: Mapping[str, UpstreamPool] | None = None,
        breakers: Mapping[str, AsyncBreaker] | None = None,
        health: HealthChecker | None = None,
        health_checks: bool = True,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        events: ProxyEvents | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.config = config
        names = [u.name for u in config.upstreams]
        self._owns_pools = pools is None
        self.pools: dict[str, UpstreamPool] = (
            dict(pools)
            if pools is not None
            else {
                u.name: UpstreamPool(
                    u.url,
                    max_connections=u.max_connections,
                    connect_timeout_s=u.connect_timeout_s,
                    ssl_context=u.ssl_context(),
                )
                for u in config.upstreams
            }
        )
        self._owns_breakers = breakers is None
        self.breakers: dict[str, AsyncBreaker] = (
            dict(breakers) if breakers is not None else build_breakers(config, clock=wall_clock)
        )
        missing = [n for n in names if n not in self.pools or n not in self.breakers]
        if missing:
            raise ValueError(f"no pool or breaker for upstream(s) {', '.join(missing)}")
        self.health = health
        self._run_health = health is None and health_checks
        self._health_task: asyncio.Task[None] | None = None
        self.policy = (
            policy if policy is not None else build_retry_policy(config, clock=clock, sleep=sleep)
        )
        self.router = Router(
            config.routing.primary, config.routing.fallbacks, is_available=self.is_available
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._max_request = config.limits.max_request_bytes
        self._max_response = config.limits.max_response_bytes
        self._shadow_capture = config.shadow.max_body_bytes if config.shadow else 0
        self._max_concurrent = config.limits.max_concurrent_requests
        self._in_flight = 0
        self._health_watchers: list[Callable[[HealthChecker], None]] = []
        self._per_try_s = config.timeouts.per_try_timeout_s
        self._total_s = config.timeouts.total_timeout_s
        self._upstream_values = {n: n.encode("ascii") for n in names}
        #: Per-upstream windows of attempts: the canary's and the policies' signals.
        self.windows = UpstreamWindows(names, clock=clock)
        self.events: ProxyEvents = FanOutEvents(
            [self.windows, *([events] if events is not None else [])]
        )
        #: The healing ledger: every decision, automatic or manual (file per ``ledger.path``).
        lc = config.ledger
        self.ledger = Ledger(
            lc.path, max_bytes=lc.max_bytes, backups=lc.backups, fsync=lc.fsync, recent=lc.recent
        )
        self._ledger_sink: Any = None
        for breaker in self.breakers.values():
            breaker.add_listener(self._breaker_changed)
        self.watch_health(lambda checker: checker.add_listener(self._health_changed))
        self.canary: CanaryController | None = None
        self._canary_task: asyncio.Task[None] | None = None
        #: Outgoing webhooks (policies, escalations): the sender is built at start-up.
        self.webhooks: Any = None
        self._webhook_callbacks: dict[str, Callable[[Any], None]] = {}
        self._webhook_seq = 0
        #: The healing policies (configured, or the tiered defaults), run from start-up.
        self.policies = PolicyEngine(
            self, send_webhook=self.send_webhook, clock=clock, wall_clock=wall_clock, sleep=sleep
        )
        self._policies_task: asyncio.Task[None] | None = None
        #: The shadow mirror, built at start-up (with ``shadow_metrics`` when they were set).
        self.shadow: ShadowMirror | None = None
        self.shadow_metrics: ShadowMetrics | None = None
        if config.canary is not None:
            self.canary = CanaryController(
                config.canary,
                windows=self.windows,
                router=self.router,
                breaker_state=lambda name: self.breakers[name].state,
                health_report=self.health_report,
                record=self.record,
                clock=clock,
                sleep=sleep,
            )
            self.breakers[config.canary.candidate].add_listener(self.canary.breaker_changed)
        self.tracer = ProxyTracer(tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"ProxyApp(upstreams={list(self.pools)!r}, router={self.router!r})"

    def add_events(self, listener: ProxyEvents) -> None:
        """Let ``listener`` hear every request from now on (a raising listener is logged)."""
        current = self.events
        known = current.listeners if isinstance(current, FanOutEvents) else (current,)
        if listener not in known:
            self.events = FanOutEvents([*known, listener])

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

    def _breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        if new in ("open", "closed") and old != new:
            self.record(
                action="breaker_opened" if new == "open" else "breaker_closed",
                target=name,
                reason=reason,
                severity="warning" if new == "open" else "info",
                signals={"fail_counter": self.breakers[name].fail_counter},
            )

    def _health_changed(self, name: str, healthy: bool, reason: str) -> None:
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

    def health_report(self, name: str) -> HealthReportSummary | None:
        """The last health report of ``name`` (None: no checker, unknown, or not a report)."""
        health = self.health
        if health is None or name not in health.names:
            return None
        return health.state(name).last_report

    @property
    def in_flight(self) -> int:
        """Client requests being served now."""
        return self._in_flight

    def watch_health(self, watcher: Callable[[HealthChecker], None]) -> None:
        """Call ``watcher(checker)`` with the health checker: now if it exists, else once
        :meth:`start` has built it."""
        if self.health is not None:
            watcher(self.health)
        else:
            self._health_watchers.append(watcher)

    # -- availability --------------------------------------------------------------------------

    def is_available(self, name: str) -> bool:
        """Healthy (or unchecked) and its breaker not open within its reset timeout."""
        if self.health is not None and not self.health.is_healthy(name):
            return False
        breaker = self.breakers[name]
        if breaker.state != "open":
            return True
        opened = breaker.opened_at  # as stored: another replica's opening time when shared
        # Unknown opening time: let the breaker's own admission decide.
        return opened is None or self._wall_clock() >= opened + breaker.reset_timeout_s

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1013})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Resolve the tracer provider; build and start the health checker (when this app runs
        one)."""
        self.tracer.pin()
        lc = self.config.ledger
        if lc.influx_url is not None and self._ledger_sink is None:
            from mlwarden.middleware.influx import InfluxSettings
            from mlwarden.sidecar.healing.ledger_influx import InfluxLedgerSink

            self._ledger_sink = InfluxLedgerSink(
                InfluxSettings(
                    url=lc.influx_url,
                    bucket=lc.influx_bucket,
                    org=lc.influx_org,
                    token=lc.influx_token,
                )
            )
            self.ledger.add_listener(self._ledger_sink)
        if self.config.shadow is not None and self.shadow is None:
            self.shadow = self._build_shadow()
            self.shadow.start()
        if self.webhooks is None:
            from mlwarden.sidecar.healing.webhooks import WebhookSender

            self.webhooks = WebhookSender(on_result=self._webhook_done)
            self.webhooks.start()
        if self.policies.policies and self._policies_task is None:
            self._policies_task = asyncio.get_running_loop().create_task(
                self.policies.run(), name="mlwarden-policies"
            )
        if self.canary is not None and self._canary_task is None:
            self._canary_task = asyncio.get_running_loop().create_task(
                self.canary.run(), name="mlwarden-canary"
            )
        if self._run_health and self._health_task is None:
            self.health = HealthChecker.from_config(
                self.config.health_checks, self.config.upstreams
            )
            for watcher in self._health_watchers:
                watcher(self.health)
            self._health_task = asyncio.get_running_loop().create_task(
                self.health.run(), name="mlwarden-health-checks"
            )

    def _build_shadow(self) -> ShadowMirror:
        c = self.config.shadow
        assert c is not None
        u = self.config.upstream(c.target)
        # Its own pool: shadow copies never take a connection a real request could use.
        pool = UpstreamPool(
            u.url,
            max_connections=c.max_concurrent,
            connect_timeout_s=u.connect_timeout_s,
            ssl_context=u.ssl_context(),
        )
        return ShadowMirror(
            pool,
            ShadowConfig(
                target=c.target,
                sample_percent=c.sample_percent,
                max_concurrent=c.max_concurrent,
                max_queue=c.max_queue,
                timeout_s=c.timeout_s,
                max_body_bytes=c.max_body_bytes,
                abs_tol=c.abs_tol,
                rel_tol=c.rel_tol,
            ),
            is_available=self.is_available,
            metrics=self.shadow_metrics,
        )

    async def aclose(self) -> None:
        """Stop the health checker this app started and close the pools it created."""
        shadow, self.shadow = self.shadow, None
        if shadow is not None:
            await shadow.aclose()
            await shadow.pool.aclose()
        for name in ("_canary_task", "_policies_task"):
            loop_task: asyncio.Task[None] | None = getattr(self, name)
            setattr(self, name, None)
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(loop_task, timeout=5)
        webhooks, self.webhooks = self.webhooks, None
        if webhooks is not None:
            await webhooks.aclose()
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
            if self.health is not None:
                await self.health.aclose()
        if self._owns_pools:
            await asyncio.gather(*(pool.aclose() for pool in self.pools.values()))
        if self._owns_breakers:
            for breaker in self.breakers.values():
                breaker.close()  # the shared-state client, when there is one
        sink, self._ledger_sink = self._ledger_sink, None
        if sink is not None:
            await asyncio.to_thread(sink.close)
        self.ledger.close()

    # -- one request ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = self._clock()
        events = self.events
        events.request_started()
        extensions = scope.get("extensions")
        answer = _Answer(
            self.tracer.start(scope), bool(extensions) and _TRAILERS_EXTENSION in extensions
        )
        if self._in_flight >= self._max_concurrent:
            # Shed at once rather than queue: a queue here would only turn overload into
            # timeouts. Envoy answers its overflow the same way.
            answer.status = 503
            await _send_whole(
                send,
                *_json_response(
                    503,
                    {
                        "error": "sidecar overloaded",
                        "max_concurrent_requests": self._max_concurrent,
                    },
                    overloaded=True,
                ),
            )
            events.request_finished(None, 503, self._clock() - started)
            return
        self._in_flight += 1
        try:
            await self._serve(scope, receive, send, answer)
        except Exception:
            answer.status = 500  # a fault of ours; the server answers 500 if it still can
            raise
        finally:
            try:
                if answer.span is not None:
                    _end_server_span(answer.span, scope, answer)
                events.request_finished(answer.upstream, answer.status, self._clock() - started)
            finally:
                self._in_flight -= 1  # last: in_flight == 0 means every request was reported

    async def _serve(self, scope: Scope, receive: Receive, send: Send, answer: _Answer) -> None:
        try:
            body = await self._read_body(scope, receive)
        except _ClientGone:
            return
        if body is None:
            answer.status = 413
            await _send_whole(
                send,
                *_json_response(
                    413, {"error": "request body too large", "max_request_bytes": self._max_request}
                ),
            )
            return
        # After the body, the only message left is http.disconnect: watch for it.
        watcher = asyncio.ensure_future(receive())
        try:
            await self._forward(scope, body, watcher, send, answer)
        except _ClientGone:
            answer.status = CLIENT_CLOSED
        finally:
            watcher.cancel()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole request body, or None when it is above the limit."""
        limit = self._max_request
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return None
                except ValueError:
                    pass  # uvicorn rejects a malformed length before we see it
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return None
                parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _request_headers(self, scope: Scope) -> Headers:
        raw: Headers = scope["headers"]
        named = _connection_tokens(raw)
        out: Headers = []
        forwarded: dict[bytes, list[bytes]] = {n: [] for n in _FORWARDED}
        host = b""
        for name, value in raw:
            name = name.lower()
            if name == b"host":
                host = value
            if name in forwarded:
                forwarded[name].append(value)
            elif name not in _REQUEST_OWNED and not _is_hop(name, named):
                out.append((name, value))
        client = scope.get("client")
        ours = {
            b"x-forwarded-for": client[0].encode() if client else b"unknown",
            b"x-forwarded-proto": scope.get("scheme", "http").encode(),
            b"x-forwarded-host": host,
        }
        for name in _FORWARDED:
            values = [*forwarded[name], ours[name]] if ours[name] else forwarded[name]
            if values:
                out.append((name, b", ".join(values)))
        return out

    def _target(self, scope: Scope) -> bytes:
        path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        return path + b"?" + query if query else path

    async def _forward(
        self, scope: Scope, body: bytes, watcher: asyncio.Future[Any], send: Send, answer: _Answer
    ) -> None:
        method: str = scope["method"]
        target = self._target(scope)
        headers = self._request_headers(scope)
        deadline = self._clock() + self._total_s
        tried: list[str] = []
        candidates = self.router.candidates()
        first = self.router.order[0]
        if candidates[0] != first:
            # The preferred upstream was skipped without a try: say why.
            why = (
                "unhealthy"
                if self.health is not None and not self.health.is_healthy(first)
                else "breaker_open"
            )
            self.events.fell_back(first, candidates[0], why)
        canary = self.canary
        if canary is not None and canary.routes(scope["headers"]):
            name = canary.candidate
            if self.is_available(name):
                candidates = [name, *(c for c in candidates if c != name)]
        shadow = self.shadow
        if shadow is not None:
            answer.shadow = shadow.offer(method, target, headers, body)
            if answer.shadow is not None:
                answer.captured = []
        try:
            await self._try_candidates(
                candidates, method, target, headers, body, deadline, tried, watcher, send, answer
            )
        finally:
            if answer.shadow is not None:
                _report_to_shadow(answer)

    async def _try_candidates(
        self,
        candidates: list[str],
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
        deadline: float,
        tried: list[str],
        watcher: asyncio.Future[Any],
        send: Send,
        answer: _Answer,
    ) -> None:
        reason = "no candidates"
        for index, name in enumerate(candidates):
            last_candidate = index == len(candidates) - 1
            attempts = (
                self.policy.begin(method=method, deadline=deadline)
                if index == 0
                else RetryAttempts(self.policy, method, deadline)
            )
            result = await self._try_upstream(
                name,
                method,
                target,
                headers,
                body,
                deadline,
                attempts,
                last_candidate,
                watcher,
                tried,
                send,
                answer,
            )
            if result is None:  # answered
                return
            reason = result.reason
            if not result.fall_back:
                break
            if not last_candidate:
                self.events.fell_back(name, candidates[index + 1], result.label)
        if watcher.done():
            raise _ClientGone
        await self._no_upstream(send, tried, reason, answer)

    async def _try_upstream(
        self,
        name: str,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
        deadline: float,
        attempts: RetryAttempts,
        last_candidate: bool,
        watcher: asyncio.Future[Any],
        tried: list[str],
        send: Send,
        answer: _Answer,
    ) -> _GiveUp | None:
        """Attempts on one upstream: None once the client has its answer, else why not."""
        pool = self.pools[name]
        breaker = self.breakers[name]
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return _GiveUp(False, "total deadline passed")
            if watcher.done():
                raise _ClientGone
            try:
                trial = breaker.acquire()
            except BreakerOpen:
                if name not in tried:
                    tried.append(name)
                return _GiveUp(True, f"breaker of {name} open", "breaker_open")
            if name not in tried:
                tried.append(name)
            try:
                result = await self._attempt(
                    name,
                    pool,
                    trial,
                    method,
                    target,
                    headers,
                    body,
                    min(self._per_try_s, remaining),
                    attempts,
                    last_candidate,
                    watcher,
                    send,
                    answer,
                )
            except BaseException as exc:
                if isinstance(exc, _ClientGone):
                    trial.discard()
                breaker.release(trial, exc)
                raise
            breaker.release(trial)
            if isinstance(result, float):
                await self._sleep(result)
                continue
            return result

    async def _attempt(
        self,
        name: str,
        pool: UpstreamPool,
        trial: Trial,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
        timeout_s: float,
        attempts: RetryAttempts,
        last_candidate: bool,
        watcher: asyncio.Future[Any],
        send: Send,
        answer: _Answer,
    ) -> float | _GiveUp | None:
        """One exchange: None when answered, a delay to retry after, or why to stop here."""
        events = self.events
        started = self._clock()
        client_span = None
        if answer.span is not None:
            client_span, headers = self.tracer.attempt(
                answer.span,
                name,
                method,
                pool.base_url.rstrip("/") + target.decode("latin-1"),
                attempts.attempt,
                headers,
            )
        try:
            response = await pool.request(method, target, headers, body, timeout_s=timeout_s)
        except UpstreamError as exc:
            kind = (
                "connect_error"
                if isinstance(exc, UpstreamConnectError)
                else "timeout"
                if isinstance(exc, UpstreamTimeout)
                else "reset"
            )
            if kind == "reset" and exc.connection_reused and not exc.response_started:
                trial.discard()  # a keep-alive connection the upstream had just closed
            else:
                trial.failure(kind)
            log.debug("upstream %s: %s (%s)", name, kind, exc)
            if client_span is not None:
                self.tracer.end_attempt(client_span, kind, None)
            events.attempt_finished(name, kind, self._clock() - started)
            decision = attempts.next(Outcome(error=kind))
            if decision.retry:
                events.retried(name, decision.reason or kind)
            return _decide(decision, f"{kind} from {name}", error=True)
        except ValueError as exc:
            # The pool refuses CR/LF in the request line or a header: the request, not the
            # upstream, is at fault, and no upstream will take it.
            trial.discard()
            if client_span is not None:
                self.tracer.end_attempt(client_span, "refused", None)
            answer.status = 400
            await _send_whole(
                send,
                *_json_response(400, {"error": "request cannot be forwarded", "detail": str(exc)}),
            )
            return None
        outcome_label = status_class(response.status)
        try:
            trial.record_status(response.status)
            outcome = Outcome(
                status=response.status, retry_after=_header(response.headers, b"retry-after")
            )
            if self.policy.retry_on.classify(outcome) is not None:
                decision = attempts.next(outcome)
                give_up = decision.give_up
                if decision.retry or (give_up in _FALL_BACK_ON and not last_candidate):
                    if client_span is not None:
                        self.tracer.end_attempt(client_span, outcome_label, response.status)
                    events.attempt_finished(name, outcome_label, self._clock() - started)
                    if decision.retry:
                        events.retried(name, decision.reason or outcome_label)
                    return _decide(decision, f"status {response.status} from {name}", error=False)
            answer.upstream = name
            try:
                if not await self._relay(name, response, watcher, send, answer):
                    outcome_label = "reset"
            finally:
                if client_span is not None:
                    self.tracer.end_attempt(client_span, outcome_label, response.status)
                events.attempt_finished(name, outcome_label, self._clock() - started)
            return None
        finally:
            await response.aclose()

    async def _relay(
        self,
        name: str,
        response: UpstreamResponse,
        watcher: asyncio.Future[Any],
        send: Send,
        answer: _Answer,
    ) -> bool:
        """Stream ``response`` to the client; False when the upstream failed mid-body or
        sent more than ``limits.max_response_bytes``."""
        limit = self._max_response
        declared = _header(response.headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            log.warning(
                "upstream %s: response of %s bytes above max_response_bytes %d",
                name,
                declared,
                limit,
            )
            answer.status = 502
            await _send_whole(
                send,
                *_json_response(
                    502,
                    {
                        "error": "upstream response too large",
                        "upstream": name,
                        "max_response_bytes": limit,
                    },
                ),
            )
            return False
        named = _connection_tokens(response.headers)
        headers = [
            (n, v) for n, v in response.headers if not _is_hop(n, named) and n != UPSTREAM_HEADER
        ]
        headers.append((UPSTREAM_HEADER, self._upstream_values[name]))
        # Trailers need the server's ASGI extension and an upstream that announced them in a
        # ``trailer`` header (the head goes out before the trailers arrive). Else they are
        # dropped, as any HTTP/1.1 intermediary may.
        trailer = _header(response.headers, b"trailer") if answer.trailers_ok else None
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": response.status,
            "headers": headers,
        }
        if trailer is not None:
            headers.append((b"trailer", trailer.encode("latin-1")))
            start["trailers"] = True
        await send(start)
        answer.status = response.status
        size = 0
        captured = answer.captured
        try:
            async for chunk in response.iter_body():
                if watcher.done():
                    raise _ClientGone
                size += len(chunk)
                if captured is not None:
                    captured.append(chunk)
                    if size > self._shadow_capture:
                        answer.captured = captured = None  # too large to compare: not kept
                if size > limit:
                    log.warning(
                        "upstream %s: response body above max_response_bytes %d, cut", name, limit
                    )
                    answer.status = 502
                    return False
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # The head is out: nothing to retry. Returning unfinished makes the server close
            # the client connection, so the truncation is visible.
            log.warning("upstream %s failed mid-response: %s", name, exc)
            answer.status = 502  # what the client got is a broken answer, whatever its head said
            return False
        except OSError as exc:  # the server could not write to a client that went away
            raise _ClientGone from exc
        await send({"type": "http.response.body", "body": b""})
        if trailer is not None:
            named_trailers = _connection_tokens(response.trailers)
            await send(
                {
                    "type": "http.response.trailers",
                    "more_trailers": False,
                    "headers": [
                        (n, v) for n, v in response.trailers if not _is_hop(n, named_trailers)
                    ],
                }
            )
        return True

    async def _no_upstream(
        self, send: Send, tried: list[str], reason: str, answer: _Answer
    ) -> None:
        degraded = self.config.degraded_response
        if degraded is not None:
            body = degraded.body.encode()
            answer.status = degraded.status
            await _send_whole(
                send,
                degraded.status,
                [
                    (b"content-type", degraded.content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
                body,
            )
            return
        answer.status = 503
        await _send_whole(
            send,
            *_json_response(
                503, {"error": "no upstream available", "tried": tried, "reason": reason}
            ),
        )


def _decide(decision: RetryDecision, what: str, *, error: bool) -> float | _GiveUp:
    """A retry delay, or why this upstream is done and whether another one may be tried.

    After an error there is no answer to give the client, so a failure that is not retried on
    the same upstream (``timeout`` is not, by default) still moves on to the next candidate:
    that is what a fallback is for. Only a method that must not be re-sent, or the total
    deadline, ends the request.
    """
    if decision.retry:
        return decision.delay_s
    give_up = decision.give_up or "not_retriable"
    fall_back = give_up in _FALL_BACK_ON or (error and give_up == "not_retriable")
    return _GiveUp(fall_back, f"{what} ({give_up})", _FALLBACK_REASON.get(give_up, "error"))


def _report_to_shadow(answer: _Answer) -> None:
    """Tell the shadow copy what the primary answered (never raises, never waits)."""
    copy = answer.shadow
    assert copy is not None
    if answer.upstream is None or answer.status == CLIENT_CLOSED or answer.status >= 500:
        copy.primary_failed()
        return
    captured = answer.captured
    copy.primary_answered(answer.status, b"".join(captured) if captured is not None else None)


def _end_server_span(span: RequestSpan, scope: Scope, answer: _Answer) -> None:
    span.detach()
    span.finish(
        method=scope["method"],
        route=None,
        status=answer.status,
        error=None,
        attributes={"mlwarden.upstream": answer.upstream or "none"},
        end_time_ns=None,
    )


def _header(headers: Headers, name: bytes) -> str | None:
    for n, v in headers:
        if n == name:
            return v.decode("latin-1")
    return None
