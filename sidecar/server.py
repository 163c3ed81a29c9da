"""The public port's HTTP/1.1 server: an asyncio protocol on httptools serving the proxy's ASGI app.

Chosen by measurement over uvicorn (and granian), side by side in one run
(``benchmarks/serving_layers.py``): it does what the proxy needs and nothing more, and it holds
the edge's limits itself rather than patching another server's protocol.

Per connection, one :class:`HttpProtocol`: ``httptools`` parses, the request's scope is built
once its head is in, and the app runs in one task per request, with a
:class:`~mlwarden.sidecar.server_request.Request` as its ``receive`` and ``send``. What it
saves over a general ASGI server: the response head is written together with the first body
bytes (one ``write``, one syscall, for the whole answer of a small response), ``receive``
after the body returns a future (the proxy's disconnect watcher is then no task), and no
per-request work is done for features the proxy does not use (WebSocket, lifespan, access
logs, root paths).

The edge's limits, as Envoy and nginx have them by default (:class:`~mlwarden.sidecar.edge.
EdgeLimits`):

- a head above ``max_header_bytes``, or with more than ``max_headers`` headers: ``431``,
  connection closed; a malformed request: ``400``, closed;
- a head not complete ``request_head_timeout_s`` after its first byte (or after the connection
  opened): ``408`` when some of it arrived, else closed quietly;
- a kept-alive connection idle for ``keep_alive_idle_s``: closed;
- beyond ``max_connections`` open connections: ``503``, closed;
- a request body arriving faster than the app reads it: reading pauses above 64 KiB buffered.

Each refusal is counted by kind (:class:`~mlwarden.sidecar.edge.EdgeCounts`). Requests on one
connection are answered in order (pipelined ones wait, reading paused). An ``Upgrade`` is not
performed: the request is served as plain HTTP and the connection closed after it.

:class:`HttpServer` listens and stops with a drain: ``should_exit`` stops accepting, closes
idle connections, lets requests in flight finish for at most ``drain_timeout_s`` and then
cancels what is left (the interface :func:`~mlwarden.sidecar.serving.serve_until_signalled`
drives).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools

from mlwarden.sidecar.edge import EdgeCounts, EdgeLimits
from mlwarden.sidecar.server_request import DateClock, Request, status_line

__all__ = ["HttpProtocol", "HttpServer"]

log = logging.getLogger("mlwarden.sidecar.server")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: Request body bytes buffered before reading pauses (the app reads them as they come).
BODY_HIGH_WATER = 64 * 1024
#: Pipelined requests parsed ahead of the one being answered before reading pauses.
MAX_PIPELINED = 16

_ASGI = {"version": "3.0", "spec_version": "2.3"}


class ServerState:
    """What every connection of one server shares: the app, limits, counts, open connections."""

    def __init__(
        self,
        app: App,
        limits: EdgeLimits,
        counts: EdgeCounts,
        default_headers: Headers,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.app = app
        self.limits = limits
        self.counts = counts
        self.loop = loop
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.clock = DateClock()
        self.default_head = b"".join(n + b": " + v + b"\r\n" for n, v in default_headers)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head over its limits."""


class HttpProtocol(asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.limits = state.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        # The request being parsed, the one being answered, and those parsed ahead of it.
        self._parsing: Request | None = None
        self._active: Request | None = None
        self._pipeline: collections.deque[Request] = collections.deque()
        # The head being read.
        self._reading_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers: Headers = []
        self._header_count = 0
        self._refusal: tuple[int, str, str] | None = None
        self._pending_refusal: tuple[int, str] | None = None
        self._upgrade = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        state = self.state
        if len(state.connections) >= self.limits.max_connections:
            self._refuse(503, "connection_limit", "too many connections", log_it=False)
            return
        state.connections.add(self)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self._client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self._server = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        self._head_timer = self.loop.call_later(
            self.limits.request_head_timeout_s, self._head_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        self._cancel_timers()
        for request in (self._active, self._parsing, *self._pipeline):
            if request is not None:
                request.lost()
        self._pipeline.clear()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        while self.write_paused and not self.closed:
            self._drain = self.loop.create_future()
            await self._drain

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self._active is None and self._reading_head and self._head_bytes == 0

    # -- reading -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Not performed: the request (complete) is served, and the connection ends after.
            self._upgrade = True
            upgraded = self._pipeline[-1] if self._pipeline else self._active
            if upgraded is not None:
                upgraded.keep_alive = False  # its answer says so: ``connection: close``
            self._pause_reading()
            return
        except (httptools.HttpParserError, _Refused):
            # httptools may re-raise a callback's exception as it is or wrapped: the refusal
            # recorded decides, not the exception's type.
            self._refuse(*(self._refusal or (400, "malformed", "malformed request")))
            return
        if self._reading_head and self._head_bytes:
            # A head is incomplete: over the limit already (a complete head is judged
            # exactly), or on the clock.
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "header_bytes", "request head too large")
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.request_head_timeout_s, self._head_timed_out
                )

    def resume_reading_for_body(self) -> None:
        if self._reading_paused and not self._pipeline:
            self._reading_paused = False
            if not self.closed:
                self.transport.resume_reading()  # type: ignore[union-attr]

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._head_bytes:
            # A head begun in the packet that completed the request before it (its count was
            # reset then): on the head's clock, and not idle.
            self._head_bytes = 1
        self._url = b""
        self._headers = []
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_header_bytes:
            self._refusal = (431, "header_bytes", "request head too large")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (431, "header_count", "too many request headers")
            raise _Refused
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        url = self._url
        headers = self._headers
        if self._head_bytes > self.limits.max_header_bytes:
            size = len(url) + 16 + sum(len(n) + len(v) + 4 for n, v in headers)
            if size > self.limits.max_header_bytes:
                self._refusal = (431, "header_bytes", "request head too large")
                raise _Refused
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parser = self.parser
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        elif url == b"*":  # OPTIONS * (the server as a whole)
            raw_path, query = url, b""
        else:  # absolute form
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
            "server": self._server,
            "client": self._client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
        }
        request = Request(self, scope, parser.should_keep_alive() and not self.state.draining)
        if scope["http_version"] == "1.1":  # HTTP/1.0 clients know no interim answers
            for name, value in headers:
                if name == b"expect" and value.lower() == b"100-continue":
                    request.expect_continue = True
        self._parsing = request
        if self._active is None:
            self._start(request)
        else:
            self._pipeline.append(request)
            if len(self._pipeline) >= MAX_PIPELINED:
                self._pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        request.body_parts.append(body)
        request.buffered += len(body)
        if request.buffered > BODY_HIGH_WATER:
            self._pause_reading()
        request.wake()

    def on_message_complete(self) -> None:
        request = self._parsing
        self._parsing = None
        self._reading_head = True
        self._head_bytes = 0
        if request is not None:
            request.body_done = True
            request.expect_continue = False
            request.wake()

    # -- answering -----------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._active = request
        task = self.loop.create_task(self._run(request))
        tasks = self.state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, request: Request) -> None:
        try:
            await self.state.app(request.scope, request.receive, request.send)
        except asyncio.CancelledError:
            # The drain's deadline passed (or the loop is stopping): a 503 the client may
            # retry elsewhere, not a fault of ours.
            if not request.head_sent and not self.closed:
                request.keep_alive = False
                self._answer_error(request, 503, "the sidecar is shutting down")
            elif not self.closed:
                self.close()
            raise
        except BaseException as exc:
            if not request.head_sent and not self.closed:
                log.exception("the proxy failed before answering; 500 sent")
                request.keep_alive = False
                self._answer_error(request, 500, "internal error")
            elif not self.closed:
                log.error("the proxy failed mid-answer; connection closed", exc_info=exc)
                self.close()
            if not isinstance(exc, Exception):
                raise
        else:
            if not request.head_sent and not self.closed:
                log.error("the proxy returned without answering; 500 sent")
                request.keep_alive = False
                self._answer_error(request, 500, "internal error")
            elif not request.response_done and not self.closed:
                log.error("the proxy returned without completing its answer; connection closed")
                self.close()
        finally:
            self._finished(request)

    def _finished(self, request: Request) -> None:
        self._active = None
        if self.closed:
            return
        if (
            not request.keep_alive
            or not request.response_done
            or not request.body_done
            or self._upgrade
            or self.state.draining
        ):
            self.close()
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
            if self._reading_paused and self._pending_refusal is None:
                self._reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            return
        if self._pending_refusal is not None:
            self._answer_and_close(*self._pending_refusal)
            return
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self._head_bytes == 0:
            # Idle from now. One timer per connection, re-armed when it fires early, rather
            # than a timer made and cancelled per request.
            self._idle_since = self.loop.time()
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_later(
                    self.limits.keep_alive_idle_s, self._idle_timed_out
                )
        elif self._head_timer is None:
            # A partial head arrived during the answer and its timer fired then (ignored, as a
            # request was active): it is timed again from now, not left without a clock.
            self._head_timer = self.loop.call_later(
                self.limits.request_head_timeout_s, self._head_timed_out
            )

    def _answer_error(self, request: Request, status: int, message: str) -> None:
        request.head_sent = request.response_done = True
        self._answer_and_close(status, message)

    # -- the edge's refusals -------------------------------------------------------------------

    def _refuse(self, status: int, kind: str, message: str, *, log_it: bool = True) -> None:
        """Answer ``status`` and close; counted under ``kind``. With a request being answered,
        its answer goes first and the refusal after it (reading stops meanwhile)."""
        self.state.counts.refused[kind] += 1
        self._cancel_timers()
        if log_it:
            log.warning("refused a client at the edge: %s", message)
        if self._active is not None:
            self._pending_refusal = (status, message)
            self._pause_reading()
            return
        self._answer_and_close(status, message)

    def _answer_and_close(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        self.write(
            status_line(status)
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body)
            + self.state.default_head
            + self.state.clock.date_line()
            + b"connection: close\r\n\r\n"
            + body
        )
        self.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.closed or self._active is not None:
            return
        if self._head_bytes:
            self._refuse(408, "head_timeout", "request head not received in time")
        else:
            self.state.counts.refused["idle_timeout"] += 1
            self.close()

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        if not self.idle or self.closed:
            return  # busy: the end of its answer starts the idle clock again
        left = self._idle_since + self.limits.keep_alive_idle_s - self.loop.time()
        if left > 0.001:
            self._idle_timer = self.loop.call_later(left, self._idle_timed_out)
        else:
            self.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None


class HttpServer:
    """Listens on ``host:port`` and serves ``app`` with :class:`HttpProtocol` until
    ``should_exit``; then drains for at most ``drain_timeout_s`` (``force_exit``: at once)."""

    def __init__(
        self,
        app: App,
        *,
        host: str,
        port: int,
        limits: EdgeLimits,
        counts: EdgeCounts,
        drain_timeout_s: float,
        default_headers: Headers | None = None,
        backlog: int = 2048,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits
        self.counts = counts
        self.drain_timeout_s = drain_timeout_s
        self.default_headers = default_headers or []
        self.backlog = backlog
        self.started = False
        self._exit: asyncio.Event | None = None
        self._should_exit = False
        self.force_exit = False
        self.state: ServerState | None = None

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit is not None:
            self._exit.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        if self._should_exit:
            self._exit.set()
        state = self.state = ServerState(
            self.app, self.limits, self.counts, self.default_headers, loop
        )
        server = await loop.create_server(
            lambda: HttpProtocol(state), self.host, self.port, backlog=self.backlog
        )
        self.started = True
        log.info("serving on http://%s:%d", self.host, self.port)
        try:
            await self._exit.wait()
        finally:
            server.close()
            await self._drain(state)
            await server.wait_closed()

    async def _drain(self, state: ServerState) -> None:
        state.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while state.connections:
            for conn in list(state.connections):
                if conn.idle:
                    conn.close()
            if not state.tasks or self.force_exit or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if state.tasks:
            log.warning("drain timeout: cancelling %d request(s) still in flight", len(state.tasks))
            for task in list(state.tasks):
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
