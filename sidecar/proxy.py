"""The proxy hot path: one raw ASGI app that forwards each request to the best upstream.

This module owns forwarding one request: reading it, choosing candidates (``Router``), the
attempt loop (breaker admission, per-try and total deadlines, retries decided by
``RetryPolicy``, fallback to the next candidate), and streaming the answer back. It decides no
retry rule, breaker rule or health verdict itself: those live in ``resilience/`` and
``routing/``.

Per request:

0. The model's operational paths (``/metrics``, ``/-/health``, ``/-/feedback``, any ``/-/``
   path) are answered 404 JSON here, not forwarded, unless configured
   (:mod:`~mlwarden.sidecar.operational_paths`).
1. The request body is read **whole into memory**, up to ``limits.max_request_bytes`` (larger:
   413 JSON, judged from ``content-length`` before reading when present). Model payloads are
   small, and a body held in memory can be replayed on a retry or a fallback; a streamed body
   could be sent once only. The response body, which may be large, is streamed chunk by chunk.
2. Candidates come from :class:`~mlwarden.sidecar.routing.router.Router`: an upstream is
   available when its health check passes and its breaker is not open and cooling down
   (:class:`~mlwarden.sidecar.routing.availability.Availability`). The canary split may put
   the candidate first; the shadow may take a copy of the request.
3. Each attempt takes a breaker slot (an open breaker → the next candidate at once), then
   ``UpstreamPool.request`` with ``timeout_s = min(per_try_timeout_s, time left)``; the per-try
   deadline covers the whole exchange, body included. The outcome (connect_error, timeout,
   reset, or the status) goes to the breaker and to the request's ``RetryAttempts``:
   retry the same upstream after the decided delay; when the policy gives up on a retriable
   failure (attempts or budget spent), move to the next candidate with a fresh attempt count,
   inside the same total deadline. A retriable status that is the last word (no candidate
   left) is passed to the client as the upstream sent it.
4. The answer's head is held until its first body bytes have arrived (or its end), so an
   upstream that dies between its head and its body is a failed attempt like a reset, retried
   or replaced by the next candidate, never a truncated answer. Then it is relayed by
   :func:`~mlwarden.sidecar.exchange.relay` (headers rewritten by
   :mod:`~mlwarden.sidecar.forwarding`). Once its head has gone to the client nothing is
   retried; an upstream failure mid-body ends the client's response early (uvicorn closes the
   connection). A response
   above ``limits.max_response_bytes`` is refused with 502 when its ``content-length`` says so,
   else cut where it crosses the limit. Trailers are relayed when the server offers ASGI's
   ``http.response.trailers`` extension and the upstream announced them (``trailer``
   header); uvicorn has no such extension, so behind it they are dropped.
5. When nothing answered: ``degraded_response`` if configured, else, when the last attempt
   ran out of time (its per-try deadline or the total deadline), 504 JSON
   ``{"error": "upstream request timeout", "tried": [...], "reason": ...}`` as Envoy and nginx
   answer, or else 503 JSON ``{"error": "no upstream available", ...}``.

Beyond ``limits.max_concurrent_requests`` in flight a request is shed at once with a 503 JSON
and ``x-mlwarden-overloaded: true`` (queueing would turn overload into timeouts).

Every step is reported to :class:`~mlwarden.sidecar.listeners.Listener` listeners
(metrics, and the analyses that need windows of outcomes), and traced when an OpenTelemetry
SDK is present (:mod:`mlwarden.sidecar.tracing`).

A client that disconnects (mid-body or mid-response) stops the exchange; the upstream
response is closed and the breaker counts nothing.

This module builds nothing: the pools, breakers, router, retry policy, canary, shadow and
listeners are made and wired by the composition root (:mod:`mlwarden.sidecar.app`) and handed
in. The ASGI lifespan starts and stops that root (``lifecycle``). WebSocket scopes are not
proxied: they are refused with close code 1013 (try again later), which uvicorn turns into a
403 before the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from mlwarden.middleware.tracing import error_type
from mlwarden.sidecar.config import DegradedResponseConfig, LimitsConfig, TimeoutsConfig
from mlwarden.sidecar.exchange import (
    CLIENT_CLOSED,
    ClientGone,
    Exchange,
    end_server_span,
    hold_start,
    relay,
    report_to_shadow,
)
from mlwarden.sidecar.forwarding import (
    HOP_BY_HOP,
    header,
    json_response,
    request_headers,
    request_target,
    send_whole,
)
from mlwarden.sidecar.give_up import FALL_BACK_ON, GiveUp, decide
from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.operational_paths import REFUSAL, OperationalPaths
from mlwarden.sidecar.resilience.breaker import AsyncBreaker, BreakerOpen, Trial
from mlwarden.sidecar.resilience.retry import Outcome, RetryAttempts, RetryPolicy
from mlwarden.sidecar.routing.availability import Availability
from mlwarden.sidecar.routing.canary import CanaryController
from mlwarden.sidecar.routing.router import Router
from mlwarden.sidecar.routing.shadow import ShadowMirror
from mlwarden.sidecar.signals.outcomes import status_class
from mlwarden.sidecar.tracing import ProxyTracer
from mlwarden.sidecar.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

__all__ = ["CLIENT_CLOSED", "HOP_BY_HOP", "Lifecycle", "ProxyApp"]

log = logging.getLogger("mlwarden.sidecar.proxy")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_TRAILERS_EXTENSION = "http.response.trailers"


class Lifecycle(Protocol):
    """What the ASGI lifespan starts and stops: the composition root."""

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


class ProxyApp:
    """The reverse proxy as a raw ASGI app; see the module docstring for what it does.

    Every part is given, built by :class:`~mlwarden.sidecar.app.Sidecar`: ``pools`` and
    ``breakers`` per upstream, the ``router`` and the ``availability`` it asks, the one
    ``retry_policy`` (its budget shared by all requests), the ``events`` listeners, the
    ``tracer``, and the canary and shadow when configured. ``clock`` (monotonic seconds) drives
    deadlines, ``sleep`` the waits between retries. ``events`` may be replaced while serving
    (a new fan-out object, never mutated in place).
    """

    def __init__(
        self,
        *,
        pools: Mapping[str, UpstreamPool],
        breakers: Mapping[str, AsyncBreaker],
        router: Router,
        availability: Availability,
        retry_policy: RetryPolicy,
        limits: LimitsConfig,
        timeouts: TimeoutsConfig,
        events: Listener,
        tracer: ProxyTracer,
        degraded_response: DegradedResponseConfig | None = None,
        canary: CanaryController | None = None,
        shadow: ShadowMirror | None = None,
        shadow_capture_bytes: int = 0,
        operational_paths: OperationalPaths | None = None,
        lifecycle: Lifecycle | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        missing = [n for n in router.order if n not in pools or n not in breakers]
        if missing:
            raise ValueError(f"no pool or breaker for upstream(s) {', '.join(missing)}")
        self.pools = pools
        self.breakers = breakers
        self.router = router
        self.availability = availability
        self.policy = retry_policy
        self.events = events
        self.tracer = tracer
        self.canary = canary
        self.shadow = shadow
        self._lifecycle = lifecycle
        self._clock = clock
        self._sleep = sleep
        self._degraded = degraded_response
        self._max_request = limits.max_request_bytes
        self._max_response = limits.max_response_bytes
        self._max_concurrent = limits.max_concurrent_requests
        self._shadow_capture = shadow_capture_bytes
        self._operational = (
            operational_paths if operational_paths is not None else OperationalPaths()
        )
        self._per_try_s = timeouts.per_try_timeout_s
        self._total_s = timeouts.total_timeout_s
        self._body_timeout_s = timeouts.request_body_timeout_s
        self._upstream_values = {n: n.encode("ascii") for n in pools}
        self._in_flight = 0
        self._open = 0

    def __repr__(self) -> str:
        return f"ProxyApp(upstreams={list(self.pools)!r}, router={self.router!r})"

    @property
    def in_flight(self) -> int:
        """Client requests being forwarded now (their bodies in): what
        ``limits.max_concurrent_requests`` bounds."""
        return self._in_flight

    @property
    def open_requests(self) -> int:
        """Client requests from their head to their report, bodies still arriving included:
        0 means every request received so far has been reported."""
        return self._open

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
        lifecycle = self._lifecycle
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if lifecycle is not None:
                        await lifecycle.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if lifecycle is not None:
                    await lifecycle.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- one request ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = self._clock()
        events = self.events
        events.request_started()
        extensions = scope.get("extensions")
        ex = Exchange(
            send, self.tracer.start(scope), bool(extensions) and _TRAILERS_EXTENSION in extensions
        )
        counted = False
        error: Exception | None = None
        self._open += 1
        try:
            body = await self._admit(scope, receive, ex)
            if body is None:
                return  # answered (refused, too large, too slow) or the client left
            # Counted in flight only once its body is in: a client sending its body slowly
            # holds a connection, never a slot of max_concurrent_requests.
            if self._in_flight >= self._max_concurrent:
                await self._shed(ex)
                return
            self._in_flight += 1
            counted = True
            await self._serve(scope, receive, ex, body)
        except Exception as exc:
            ex.status = 500  # a fault of ours; the server answers 500 if it still can
            error = exc
            raise
        finally:
            try:
                if ex.span is not None:
                    end_server_span(ex.span, ex, error)
                events.request_finished(ex.upstream, ex.status, self._clock() - started)
            finally:
                self._open -= 1  # last: 0 means every request was reported
                if counted:
                    self._in_flight -= 1

    async def _shed(self, ex: Exchange) -> None:
        """Beyond max_concurrent_requests: shed at once rather than queue, since a queue here
        would only turn overload into timeouts. Envoy answers its overflow the same way."""
        ex.status = 503
        await send_whole(
            ex.send,
            *json_response(
                503,
                {"error": "sidecar overloaded", "max_concurrent_requests": self._max_concurrent},
                overloaded=True,
            ),
        )

    async def _admit(self, scope: Scope, receive: Receive, ex: Exchange) -> bytes | None:
        """The request's body when it may be forwarded; None once it has been answered here
        (an operational path, a body too large or too slow to arrive) or the client left."""
        refused = self._operational.refused(scope["path"])
        if refused is not None:
            ex.status = 404
            self.events.path_refused(refused)
            await send_whole(ex.send, *REFUSAL)
            return None
        try:
            body, first = self._arrived_body(scope, receive)
            if first is not None:
                async with asyncio.timeout(self._body_timeout_s):
                    body = await self._read_body(receive, first)
        except ClientGone:
            ex.status = CLIENT_CLOSED
            return None
        except TimeoutError:
            ex.status = 408
            await send_whole(
                ex.send,
                *json_response(
                    408,
                    {
                        "error": "request body too slow",
                        "request_body_timeout_s": self._body_timeout_s,
                    },
                    close=True,
                ),
            )
            return None
        if body is None:
            ex.status = 413
            await send_whole(
                ex.send,
                *json_response(
                    413,
                    {"error": "request body too large", "max_request_bytes": self._max_request},
                ),
            )
        return body

    async def _serve(self, scope: Scope, receive: Receive, ex: Exchange, body: bytes) -> None:
        # After the body, the only message left is http.disconnect: watch for it.
        ex.watcher = asyncio.ensure_future(receive())
        ex.body = body
        try:
            await self._forward(scope, ex)
        except ClientGone:
            ex.status = CLIENT_CLOSED
        finally:
            ex.watcher.cancel()

    def _arrived_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[bytes | None, Awaitable[dict[str, Any]] | None]:
        """``(body, None)`` when the whole body is in already (``receive`` returned a
        resolved future, as the sidecar's server does: no deadline to keep); ``(None,
        None)`` when it is above the limit; else ``(None, first)``, the pending first
        message for :meth:`_read_body` to await under the body's deadline."""
        limit = self._max_request
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return None, None
                except ValueError:
                    pass  # the server rejects a malformed length before we see it
        first = receive()
        if isinstance(first, asyncio.Future) and first.done() and not first.cancelled():
            message = first.result()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body: bytes = message.get("body", b"")
                return (None if len(body) > limit else body), None
        return None, first

    async def _read_body(self, receive: Receive, first: Awaitable[dict[str, Any]]) -> bytes | None:
        """The whole request body, or None when it is above the limit; ``first`` is the
        first message, awaited here."""
        limit = self._max_request
        parts: list[bytes] = []
        size = 0
        pending: Awaitable[dict[str, Any]] | None = first
        while True:
            message = await (pending if pending is not None else receive())
            pending = None
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return None
                parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _forward(self, scope: Scope, ex: Exchange) -> None:
        ex.method = scope["method"]
        ex.target = request_target(scope)
        ex.headers = request_headers(scope)
        ex.deadline = self._clock() + self._total_s
        candidates = self.router.candidates()
        first = self.router.order[0]
        if candidates[0] != first:
            # The preferred upstream was skipped without a try: say why.
            self.events.fell_back(first, candidates[0], self.availability.why_not(first))
        canary = self.canary
        if canary is not None and canary.routes(scope["headers"]):
            name = canary.candidate
            if self.availability.is_available(name):
                candidates = [name, *(c for c in candidates if c != name)]
        shadow = self.shadow
        if shadow is not None:
            ex.shadow = shadow.offer(ex.method, ex.target, ex.headers, ex.body)
            if ex.shadow is not None:
                ex.captured = []
        try:
            await self._try_candidates(candidates, ex)
        finally:
            if ex.shadow is not None:
                report_to_shadow(ex)

    async def _try_candidates(self, candidates: list[str], ex: Exchange) -> None:
        reason = "no candidates"
        timed_out = False
        for index, name in enumerate(candidates):
            last_candidate = index == len(candidates) - 1
            attempts = (
                self.policy.begin(method=ex.method, deadline=ex.deadline)
                if index == 0
                else RetryAttempts(self.policy, ex.method, ex.deadline)
            )
            result = await self._try_upstream(ex, name, attempts, last_candidate)
            if result is None:  # answered
                return
            reason, timed_out = result.reason, result.timed_out
            if not result.fall_back:
                break
            if not last_candidate:
                self.events.fell_back(name, candidates[index + 1], result.label)
        if ex.client_gone():
            raise ClientGone
        await self._no_upstream(ex, reason, timed_out=timed_out)

    async def _try_upstream(
        self, ex: Exchange, name: str, attempts: RetryAttempts, last_candidate: bool
    ) -> GiveUp | None:
        """Attempts on one upstream: None once the client has its answer, else why not."""
        pool = self.pools[name]
        breaker = self.breakers[name]
        tried = ex.tried
        while True:
            remaining = ex.deadline - self._clock()
            if remaining <= 0:
                return GiveUp(False, "total deadline passed", timed_out=True)
            if ex.client_gone():
                raise ClientGone
            try:
                trial = breaker.acquire()
            except BreakerOpen:
                if name not in tried:
                    tried.append(name)
                return GiveUp(True, f"breaker of {name} open", "breaker_open")
            if name not in tried:
                tried.append(name)
            try:
                result = await self._attempt(
                    ex, name, pool, trial, min(self._per_try_s, remaining), attempts,
                    last_candidate,
                )  # fmt: skip
            except BaseException as exc:
                if isinstance(exc, ClientGone):
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
        ex: Exchange,
        name: str,
        pool: UpstreamPool,
        trial: Trial,
        timeout_s: float,
        attempts: RetryAttempts,
        last_candidate: bool,
    ) -> float | GiveUp | None:
        """One exchange: None when answered, a delay to retry after, or why to stop here."""
        events = self.events
        started = self._clock()
        headers = ex.headers
        client_span = None
        if ex.span is not None:
            client_span, headers = self.tracer.attempt(ex, name, pool)
        ex.sent += 1
        try:
            response = await pool.request(
                ex.method, ex.target, headers, ex.body, timeout_s=timeout_s
            )
            # The head is held until the first body bytes are in: an upstream dying between
            # its head and its body is then a failed attempt, retried or replaced.
            held = await hold_start(response)
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
                self.tracer.end_attempt(client_span, None, kind)
            events.attempt_finished(name, kind, self._clock() - started)
            decision = attempts.next(Outcome(error=kind))
            if decision.retry:
                events.retried(name, decision.reason or kind)
            return decide(decision, f"{kind} from {name}", error=True, timed_out=kind == "timeout")
        except ValueError as exc:
            # The pool refuses CR/LF in the request line or a header: the request, not the
            # upstream, is at fault, and no upstream will take it.
            trial.discard()
            if client_span is not None:
                self.tracer.end_attempt(client_span, None, "refused")
            ex.status = 400
            await send_whole(
                ex.send,
                *json_response(400, {"error": "request cannot be forwarded", "detail": str(exc)}),
            )
            return None
        outcome_label = status_class(response.status)
        try:
            trial.record_status(response.status)
            outcome = Outcome(
                status=response.status, retry_after=header(response.headers, b"retry-after")
            )
            if self.policy.retry_on.classify(outcome) is not None:
                decision = attempts.next(outcome)
                give_up = decision.give_up
                if decision.retry or (give_up in FALL_BACK_ON and not last_candidate):
                    if client_span is not None:
                        self.tracer.end_attempt(client_span, response.status, None)
                    events.attempt_finished(name, outcome_label, self._clock() - started)
                    if decision.retry:
                        events.retried(name, decision.reason or outcome_label)
                    return decide(decision, f"status {response.status} from {name}", error=False)
            ex.upstream = name
            failure: str | None = None
            try:
                if not await relay(
                    ex,
                    name,
                    response,
                    held,
                    max_response_bytes=self._max_response,
                    shadow_capture_bytes=self._shadow_capture,
                    upstream_value=self._upstream_values[name],
                ):
                    outcome_label = failure = "reset"
            except ClientGone:
                failure = "client_gone"
                raise
            except BaseException as exc:
                failure = error_type(exc)
                raise
            finally:
                if client_span is not None:
                    self.tracer.end_attempt(client_span, response.status, failure)
                events.attempt_finished(name, outcome_label, self._clock() - started)
            return None
        finally:
            await response.aclose()

    async def _no_upstream(self, ex: Exchange, reason: str, *, timed_out: bool) -> None:
        """The answer when no upstream answered: the configured degraded response, else 504
        JSON when the last attempt ran out of time (``upstream request timeout``), else 503
        JSON (``no upstream available``); both name what was tried and why it failed."""
        degraded = self._degraded
        if degraded is not None:
            body = degraded.body.encode()
            ex.status = degraded.status
            await send_whole(
                ex.send,
                degraded.status,
                [
                    (b"content-type", degraded.content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
                body,
            )
            return
        status, error = (
            (504, "upstream request timeout") if timed_out else (503, "no upstream available")
        )
        ex.status = status
        await send_whole(
            ex.send,
            *json_response(status, {"error": error, "tried": ex.tried, "reason": reason}),
        )
