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

Errors: the tree in :mod:`mlwarden.sidecar.upstream_errors` (re-exported here), each saying how
far the exchange got. The connection itself (writing, parsing with ``httptools``, flow control,
the response body) is :mod:`mlwarden.sidecar.upstream_connection`; this module owns the pool:
request heads, sending bodies, and lending, taking back and closing connections.

Errors raised by a caller's request-body iterator are not translated: the connection is closed
and the caller's exception propagates unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mlwarden.sidecar.upstream_connection import Headers, UpstreamConnection, UpstreamResponse
from mlwarden.sidecar.upstream_errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from mlwarden.sidecar.config import UpstreamConfig

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

# Request headers the client owns: framing and persistence are decided per connection here.
_OWNED_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_BODYLESS_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})
_WRITE_SLICE = 256 * 1024  # large bytes bodies go out in slices, draining between them


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
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._waiters: collections.deque[asyncio.Future[UpstreamConnection | None]] = (
            collections.deque()
        )
        self._count = 0  # connections open or opening
        self._closed = False

    @classmethod
    def from_config(
        cls, block: UpstreamConfig, *, max_connections: int | None = None
    ) -> UpstreamPool:
        """The pool of a validated ``upstreams.<name>`` block. ``max_connections`` sizes a pool
        kept for another use instead of the block's (the shadow's own: its ``max_concurrent``)."""
        return cls(
            block.url,
            max_connections=block.max_connections if max_connections is None else max_connections,
            connect_timeout_s=block.connect_timeout_s,
            ssl_context=block.ssl_context(),
        )

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
        conn: UpstreamConnection, body: AsyncIterator[bytes], declared: int | None
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

    def _take_idle(self) -> UpstreamConnection | None:
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
    ) -> UpstreamConnection:
        connect_deadline = loop.time() + self.connect_timeout_s
        if deadline is not None and deadline < connect_deadline:
            connect_deadline = deadline
        while True:
            conn = self._take_idle()
            if conn is not None:
                return conn
            if self._count < self.max_connections:
                return await self._connect(loop, connect_deadline)
            waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
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

    def _rescue(self, waiter: asyncio.Future[UpstreamConnection | None]) -> None:
        """A waiter gave up: pass on whatever it was handed meanwhile."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            conn = waiter.result()
            if conn is not None:
                self._release(conn)
            else:
                self._wake_one_waiter(None)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> UpstreamConnection:
        self._count += 1
        conn = UpstreamConnection(self, loop)
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

    def _release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose exchange is complete."""
        conn.end_exchange()
        if self._closed or not conn.usable:
            conn.close()
            return
        if self._wake_one_waiter(conn):
            return
        conn.idle_since = self._now()
        self._idle.append(conn)

    def _wake_one_waiter(self, conn: UpstreamConnection | None) -> bool:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _forget(self, conn: UpstreamConnection) -> None:
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
