"""A lean HTTP/1.1 client for one upstream, built for the sidecar's hot path.

The proxy talks to each model version through one :class:`UpstreamPool`: keep-alive connections
over an :class:`asyncio.Protocol` with ``httptools``' response parser, reused last-in first-out
(the warmest socket first, so that surplus ones age out), bounded in number, with bodies
streamed both ways and never buffered whole. It does one thing per call — one exchange on one
connection — and decides nothing about retries: every failure is raised as one of the errors
below, saying how far the exchange got, and the retry layer decides.

``https://`` upstreams go over TLS: the system's trust store, or a given ``ssl_context`` for a
private CA; a failed handshake or certificate check is an :class:`UpstreamConnectError`.

Why not httpx or aiohttp: measured on these machines, httpx's pool costs a naive proxy 5 to 10
times its throughput, and aiohttp's client does far more per request (cookies, redirects, URL
objects, multidicts) than a proxy needs. See ``benchmarks/upstream_client.py``.

Errors (all derive from :class:`mlwarden.middleware.errors.MlwardenError`)::

    UpstreamError                 one exchange failed; ``request_sent`` says whether any byte of
    │                             the request was written, ``connection_reused`` whether the
    │                             connection had served an earlier exchange
    ├── UpstreamConnectError      refused, unresolvable or the connect deadline passed: nothing
    │   │                         was sent, safe to retry with any method
    │   └── UpstreamPoolTimeout   no connection became free before the connect deadline
    ├── UpstreamTimeout           the per-try deadline passed while sending, or waiting for the
    │                             head or the body
    ├── UpstreamReset             the upstream closed the connection mid-exchange (also: a reused
    │                             keep-alive connection it had just closed; ``connection_reused``
    │                             and ``response_started`` tell the retry layer which)
    └── UpstreamProtocolError     a malformed response, or a head above ``max_response_head_bytes``

Errors raised by a caller's request-body iterator are not translated: the connection is closed
and the caller's exception propagates unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

from mlwarden.middleware.errors import MlwardenError

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamPoolTimeout",
    "UpstreamProtocolError",
    "UpstreamReset",
    "UpstreamResponse",
    "UpstreamTimeout",
]

Headers = list[tuple[bytes, bytes]]

# Request headers the client owns: framing and persistence are decided per connection here.
_OWNED_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_BODYLESS_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})
_WRITE_SLICE = 256 * 1024  # large bytes bodies go out in slices, draining between them
_READ_HIGH_WATER = 256 * 1024  # response bytes buffered before the socket stops being read
_READ_LOW_WATER = 64 * 1024


class UpstreamError(MlwardenError):
    """One exchange with an upstream failed; see the module docstring for the tree."""

    def __init__(
        self,
        message: str,
        *,
        request_sent: bool,
        connection_reused: bool = False,
        response_started: bool = False,
    ) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        self.connection_reused = connection_reused
        self.response_started = response_started


class UpstreamConnectError(UpstreamError):
    """No connection could be made; nothing was sent, so any method may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, request_sent=False)


class UpstreamPoolTimeout(UpstreamConnectError):
    """Every connection stayed busy until the connect deadline; nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The per-try deadline passed before the exchange finished."""


class UpstreamReset(UpstreamError):
    """The upstream dropped the connection before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's response could not be parsed, or its head was too large."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries at most one exchange at a time.

    Also the callback object of ``httptools.HttpResponseParser`` (one parser per exchange, so
    that a HEAD response, whose body the parser would otherwise expect, cannot desynchronise the
    next one).
    """

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.forgotten = False  # removed from the pool's count (exactly once)
        self.exchanges = 0
        self.idle_since = 0.0
        self._lost: asyncio.Future[None] = loop.create_future()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._reset_exchange()

    # --- exchange state ---------------------------------------------------------------------

    def _reset_exchange(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.error: UpstreamError | None = None
        self.status = 0
        self.headers: Headers = []
        self.trailers: Headers = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.head_bytes = 0  # bytes received before the head was complete
        self.header_bytes = 0  # bytes of parsed header lines
        self.head_done = False
        self.message_done = False
        self.keep_alive = False
        self.is_head = False
        self.interim = False
        self.framed = False  # content-length or chunked: the body does not end at close
        self.request_sent = False

    def begin(self, is_head: bool, deadline: float | None) -> None:
        self.exchanges += 1
        self.is_head = is_head
        self.parser = httptools.HttpResponseParser(self)
        if deadline is not None:
            self.timer = self._loop.call_at(deadline, self._on_deadline)

    def end_exchange(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self._reset_exchange()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        waiter = self._loop.create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            self.waiter = None

    def fail(self, error: UpstreamError) -> None:
        """Record the first error of this exchange, wake the reader, drop the connection."""
        if self.error is None and not self.message_done:
            error.connection_reused = self.exchanges > 1
            error.response_started = self.status != 0 or self.head_bytes > 0
            self.error = error
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()
        self.abort()

    def _on_deadline(self) -> None:
        self.timer = None
        self.fail(
            UpstreamTimeout(
                "the upstream did not complete the exchange within the deadline",
                request_sent=self.request_sent,
            )
        )

    def _reset_error(self, why: str) -> UpstreamReset:
        return UpstreamReset(why, request_sent=self.request_sent)

    # --- writing ------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        while self._write_paused and not self.closed and self.error is None:
            waiter = self._loop.create_future()
            self._drain_waiter = waiter
            self.waiter = waiter  # a deadline or a reset wakes the writer too
            try:
                await waiter
            finally:
                self._drain_waiter = None
                self.waiter = None
        if self.error is not None:
            raise self.error
        if self.closed:
            raise self._reset_error("the upstream closed the connection while the request was sent")

    def write(self, data: bytes | memoryview) -> None:
        self.request_sent = True
        self.transport.write(data)  # type: ignore[union-attr]

    # --- protocol callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            # Bytes on an idle connection belong to no request: the stream is out of step.
            self.abort()
            return
        if not self.head_done:
            self.head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(
                UpstreamProtocolError(
                    "the upstream switched protocols, which the proxy does not support",
                    request_sent=self.request_sent,
                )
            )
            return
        except httptools.HttpParserError as exc:
            self.fail(
                UpstreamProtocolError(
                    f"malformed response from the upstream: {exc}", request_sent=self.request_sent
                )
            )
            return
        if not self.head_done and self.head_bytes > self._pool.max_response_head_bytes:
            self.fail(
                UpstreamProtocolError(
                    f"response head above {self._pool.max_response_head_bytes} bytes",
                    request_sent=self.request_sent,
                )
            )

    def eof_received(self) -> bool:
        # A body without content-length or chunked framing ends when the upstream closes.
        if self.head_done and not self.message_done and not self.framed and self.error is None:
            self.keep_alive = False
            self.message_done = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is not None and not self.message_done:
            why = "the upstream closed the connection before the response was complete"
            if exc is not None:
                why = f"{why}: {exc}"
            self.fail(self._reset_error(why))
        self.resume_writing()
        self._wake()
        if not self._lost.done():
            self._lost.set_result(None)
        self._pool._forget(self)
        self._pool._all.discard(self)

    # --- parser callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if self.head_done:
            self.trailers.append((name, value))
            return
        if name == b"content-length" or name == b"transfer-encoding":
            self.framed = True
        self.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()  # type: ignore[union-attr]
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self.interim = True
            self.headers = []
            self.framed = False
            return
        if self.header_bytes > self._pool.max_response_head_bytes:
            # The head arrived in one read, so the check in data_received never saw it unfinished.
            self.fail(
                UpstreamProtocolError(
                    f"response head above {self._pool.max_response_head_bytes} bytes",
                    request_sent=self.request_sent,
                )
            )
            return
        self.status = status
        self.head_done = True
        if status == 204 or status == 304:
            self.framed = True
        if self.is_head:
            # The parser cannot be told the request was HEAD: it would wait for a body that
            # never comes and judge keep-alive by it, so decide both here.
            self.framed = True
            self.keep_alive = self._head_keep_alive()
            self._complete()
        self._wake()

    def _head_keep_alive(self) -> bool:
        tokens = b",".join(v for n, v in self.headers if n == b"connection").lower()
        if self.parser.get_http_version() == "1.0":  # type: ignore[union-attr]
            return b"keep-alive" in tokens
        return b"close" not in tokens

    def on_body(self, body: bytes) -> None:
        if self.message_done:  # a HEAD response's announced body never comes
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.message_done:
            return
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
        self._complete()
        self._wake()

    def _complete(self) -> None:
        self.message_done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def consumed(self, n: int) -> None:
        self.buffered -= n
        if self._read_paused and self.buffered <= _READ_LOW_WATER and self.transport:
            self._read_paused = False
            self.transport.resume_reading()

    # --- lifetime -----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        """Drop the connection now; the pool stops counting it at once."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self._pool._forget(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._pool._forget(self)


class UpstreamResponse:
    """The status and head of an upstream's response; the body is read with :meth:`iter_body`.

    ``headers`` keeps the raw list (names lowercased, repeated headers in order). ``trailers``
    fills once a chunked body has been read to its end. Always finish with :meth:`aclose` (or
    ``async with``): the connection returns to the pool only if the body was read completely
    and the upstream allows keep-alive; otherwise it is closed.
    """

    __slots__ = ("_chunks", "_conn", "_pool", "headers", "status", "trailers")

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self.status: int = conn.status
        self.headers: Headers = conn.headers
        self.trailers: Headers = conn.trailers
        self._chunks = conn.chunks
        self._conn: _Connection | None = conn
        if conn.message_done:
            # Small responses usually arrive whole with the head: free the connection now.
            self._finish()

    def __repr__(self) -> str:
        return f"<UpstreamResponse status={self.status} headers={len(self.headers)}>"

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; raises :class:`UpstreamError` if the body breaks."""
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                conn = self._conn
                if conn is not None:
                    conn.consumed(len(chunk))
                yield chunk
                continue
            conn = self._conn
            if conn is None:
                return
            if conn.error is not None:
                error = conn.error
                self._finish()
                raise error
            if conn.message_done:
                self._finish()
                return
            await conn.wait()

    async def read(self) -> bytes:
        """The whole body; for small responses such as health checks, never for proxying."""
        return b"".join([chunk async for chunk in self.iter_body()])

    def _finish(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if conn.message_done and conn.error is None and conn.keep_alive:
            self._pool._release(conn)
        else:
            conn.end_exchange()
            conn.abort()

    async def aclose(self) -> None:
        """Give the connection back (body fully read, keep-alive) or close it."""
        self._finish()
        self._chunks.clear()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one upstream (``http://host[:port][/prefix]``).

    ``max_connections`` bounds connections open or opening; requests beyond it wait, first come
    first served, until the connect deadline (``connect_timeout_s``, or the request's own
    deadline if sooner). Idle connections are reused newest first and closed once idle for
    ``idle_timeout_s``. ``clock`` (default: the loop's) only measures idleness.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        connect_timeout_s: float = 1.0,
        idle_timeout_s: float = 30.0,
        max_response_head_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        problems = []
        if parts.scheme not in ("http", "https"):
            problems.append(
                f"base_url {base_url!r}: only http:// and https:// upstreams are supported"
            )
        if not parts.hostname:
            problems.append(f"base_url {base_url!r}: no host")
        if parts.query or parts.fragment:
            problems.append(f"base_url {base_url!r}: a query or fragment is not allowed")
        for key, value in (
            ("max_connections", max_connections),
            ("max_response_head_bytes", max_response_head_bytes),
        ):
            if value < 1:
                problems.append(f"{key}={value!r}: must be at least 1")
        for key, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
        ):
            if not value > 0:
                problems.append(f"{key}={value!r}: must be above 0")
        if problems:
            raise ValueError("; ".join(problems))
        self.base_url = base_url
        self.host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        try:
            self.port = parts.port or default_port
        except ValueError as exc:
            raise ValueError(f"base_url {base_url!r}: {exc}") from None
        # https: the system's trust store unless a context is given (a private CA); the
        # host name is checked against the certificate.
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_response_head_bytes = max_response_head_bytes
        self._prefix = parts.path.rstrip("/").encode("ascii")
        netloc = self.host if self.port == default_port else f"{self.host}:{self.port}"
        if ":" in self.host:  # IPv6 literal
            netloc = f"[{self.host}]" if self.port == default_port else f"[{self.host}]:{self.port}"
        self._host_header = b"host: " + netloc.encode("idna") + b"\r\n"
        self._loop = loop
        self._clock = clock
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._count = 0  # connections open or opening
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"UpstreamPool({self.base_url!r}, max_connections={self.max_connections}, "
            f"open={self._count}, idle={len(self._idle)})"
        )

    @property
    def connections(self) -> int:
        """Connections open or being opened."""
        return self._count

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # --- the exchange -------------------------------------------------------------------------

    async def request(
        self,
        method: str | bytes,
        path_and_query: str | bytes,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] = b"",
        *,
        timeout_s: float | None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        ``headers`` are sent as given, except the framing headers the client owns
        (``content-length``, ``transfer-encoding``, ``connection``, ``keep-alive``). A bytes
        body gets a ``content-length``; an async-iterator body is streamed raw if the caller
        gave a ``content-length`` (and must match it), chunked otherwise. ``timeout_s`` bounds
        the whole exchange, from the wait for a connection to the last body byte.
        """
        if self._closed:
            raise RuntimeError("the upstream pool is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        head, declared = self._build_head(method, path_and_query, headers, body)

        conn = self._take_idle() if self._idle else None
        if conn is None:
            conn = await self._acquire(loop, deadline)
        try:
            conn.begin(head.startswith(b"HEAD "), deadline)
            if isinstance(body, (bytes, bytearray, memoryview)):
                if len(body) <= _WRITE_SLICE:
                    conn.write(head + body if body else head)
                else:
                    conn.write(head)
                    view = memoryview(body)
                    for start in range(0, len(view), _WRITE_SLICE):
                        conn.write(view[start : start + _WRITE_SLICE])
                        await conn.drain()
            else:
                conn.write(head)
                await self._send_stream(conn, body, declared)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            conn.end_exchange()
            conn.abort()
            raise
        return UpstreamResponse(self, conn)

    def _build_head(
        self,
        method: str | bytes,
        target: str | bytes,
        headers: Headers,
        body: bytes | AsyncIterator[bytes],
    ) -> tuple[bytes, int | None]:
        if isinstance(method, str):
            method = method.encode("ascii")
        if isinstance(target, str):
            target = target.encode("ascii")
        if not target.startswith(b"/"):
            raise ValueError(f"path_and_query must start with '/': {target!r}")
        parts = [method, b" ", self._prefix, target, b" HTTP/1.1\r\n"]
        lines = 1
        has_host = False
        declared: int | None = None
        for name, value in headers:
            lname = name.lower()
            if lname in _OWNED_HEADERS:
                if lname == b"content-length":
                    declared = int(value)
                continue
            if lname == b"host":
                has_host = True
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        if not has_host:
            parts.append(self._host_header)
            lines += 1
        if isinstance(body, (bytes, bytearray, memoryview)):
            declared = len(body)
            if declared or method not in _BODYLESS_METHODS:
                parts.append(b"content-length: %d\r\n" % declared)
                lines += 1
        elif declared is not None:
            parts.append(b"content-length: %d\r\n" % declared)
            lines += 1
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # One CR and one LF per line, or a name or value smuggled in a header of its own.
        if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1:
            raise ValueError("CR or LF in the request line or a header")
        return head, declared

    @staticmethod
    async def _send_stream(
        conn: _Connection, body: AsyncIterator[bytes], declared: int | None
    ) -> None:
        sent = 0
        async for chunk in body:
            if not chunk:
                continue
            sent += len(chunk)
            if declared is None:
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            elif sent > declared:
                raise ValueError(f"request body longer than its content-length {declared}")
            else:
                conn.write(chunk)
            await conn.drain()
        if declared is None:
            conn.write(b"0\r\n\r\n")
        elif sent != declared:
            raise ValueError(f"request body of {sent} bytes, content-length said {declared}")

    # --- connections --------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else self._loop.time()  # type: ignore[union-attr]

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        oldest_allowed = self._now() - self.idle_timeout_s
        while idle:
            conn = idle.pop()
            if conn.usable and conn.idle_since >= oldest_allowed:
                return conn
            conn.close()
        return None

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> _Connection:
        connect_deadline = loop.time() + self.connect_timeout_s
        if deadline is not None and deadline < connect_deadline:
            connect_deadline = deadline
        while True:
            conn = self._take_idle()
            if conn is not None:
                return conn
            if self._count < self.max_connections:
                return await self._connect(loop, connect_deadline)
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(connect_deadline):
                    conn = await waiter
            except TimeoutError:
                self._rescue(waiter)
                raise UpstreamPoolTimeout(
                    f"no connection to {self.base_url} became free within the connect deadline"
                    f" ({self.max_connections} busy)"
                ) from None
            except BaseException:
                self._rescue(waiter)
                raise
            if conn is not None:
                return conn
            # A slot was freed: go round and open a connection in it.

    def _rescue(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiter gave up: pass on whatever it was handed meanwhile."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            conn = waiter.result()
            if conn is not None:
                self._release(conn)
            else:
                self._wake_one_waiter(None)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._count += 1
        conn = _Connection(self, loop)
        self._all.add(conn)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            self._forget(conn)
            raise UpstreamConnectError(
                f"could not connect to {self.base_url} within the connect deadline"
            ) from None
        except OSError as exc:
            self._forget(conn)
            raise UpstreamConnectError(f"could not connect to {self.base_url}: {exc}") from exc
        except BaseException:
            self._forget(conn)
            if conn.transport is not None:
                conn.transport.abort()
            raise
        if self._closed:
            conn.abort()
            raise RuntimeError("the upstream pool is closed")
        return conn

    def _release(self, conn: _Connection) -> None:
        """Take back a connection whose exchange is complete."""
        conn.end_exchange()
        if self._closed or not conn.usable:
            conn.close()
            return
        if self._wake_one_waiter(conn):
            return
        conn.idle_since = self._now()
        self._idle.append(conn)

    def _wake_one_waiter(self, conn: _Connection | None) -> bool:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _forget(self, conn: _Connection) -> None:
        """Stop counting a connection that is closed or closing (idempotent)."""
        if conn.forgotten:
            return
        conn.forgotten = True
        self._count -= 1
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if conn.transport is None:  # never connected: no connection_lost will follow
            self._all.discard(conn)
        if not self._closed:
            self._wake_one_waiter(None)

    async def aclose(self, *, timeout_s: float = 1.0) -> None:
        """Close every connection, idle or busy, and wait until their sockets are released."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the upstream pool is closed"))
        self._waiters.clear()
        conns = list(self._all)
        self._idle.clear()
        for conn in conns:
            conn.fail(UpstreamReset("the upstream pool was closed", request_sent=True))
        pending = [conn._lost for conn in conns if conn.transport is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        self._all.clear()

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
