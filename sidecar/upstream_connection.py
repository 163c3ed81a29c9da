"""One keep-alive HTTP/1.1 connection to an upstream: the request's bytes out, the response in.

:class:`UpstreamConnection` is the :class:`asyncio.Protocol` of one socket and the callback
object of ``httptools``' response parser: it writes the request with flow control (drain while
the transport is paused), parses the response head and body as they arrive, pauses reading
when too much body is buffered, enforces the exchange's deadline and the head size limit, and
turns every failure into the first :mod:`~mlwarden.sidecar.upstream_errors` error of the
exchange. :class:`UpstreamResponse` is what the caller reads the body from. The pool that opens,
lends and takes back connections is :class:`~mlwarden.sidecar.upstream.UpstreamPool`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol

import httptools

from mlwarden.sidecar.upstream_errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)

__all__ = ["ConnectionPool", "Headers", "UpstreamConnection", "UpstreamResponse"]

Headers = list[tuple[bytes, bytes]]

_READ_HIGH_WATER = 256 * 1024  # response bytes buffered before the socket stops being read
_READ_LOW_WATER = 64 * 1024


class ConnectionPool(Protocol):
    """What a connection and its response ask of the pool that opened them
    (:class:`~mlwarden.sidecar.upstream.UpstreamPool`; a protocol so that this module need
    not import that one). Private names: they are the pool's internals, shared by the two
    modules of one client and by no one else."""

    max_response_head_bytes: int
    _all: set[UpstreamConnection]

    def _forget(self, conn: UpstreamConnection) -> None: ...

    def _release(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; it carries at most one exchange at a time.

    Also the callback object of ``httptools.HttpResponseParser`` (one parser per exchange, so
    that a HEAD response, whose body the parser would otherwise expect, cannot desynchronise the
    next one).
    """

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
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
        # One deadline timer per connection, re-armed when it fires before the exchange's
        # deadline, rather than one made and cancelled per exchange.
        self.timer: asyncio.TimerHandle | None = None
        self._reset_exchange()

    # --- exchange state ---------------------------------------------------------------------

    def _reset_exchange(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.deadline: float | None = None  # of the exchange in progress
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
            self.deadline = deadline
            timer = self.timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self.timer = self._loop.call_at(deadline, self._on_deadline)

    def end_exchange(self) -> None:
        self._reset_exchange()  # the timer stays: it finds no deadline when it fires

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
        deadline = self.deadline
        if deadline is None or self.closed:
            return  # no exchange in progress, or it has completed
        if self._loop.time() < deadline:
            self.timer = self._loop.call_at(deadline, self._on_deadline)
            return
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
            self.deadline = None
            self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
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
        self.deadline = None

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

    def __init__(self, pool: ConnectionPool, conn: UpstreamConnection) -> None:
        self._pool = pool
        self.status: int = conn.status
        self.headers: Headers = conn.headers
        self.trailers: Headers = conn.trailers
        self._chunks = conn.chunks
        self._conn: UpstreamConnection | None = conn
        if conn.message_done:
            # Small responses usually arrive whole with the head: free the connection now.
            self._finish()

    def __repr__(self) -> str:
        return f"<UpstreamResponse status={self.status} headers={len(self.headers)}>"

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; raises :class:`UpstreamError` if the body breaks."""
        while chunk := await self.read_some():
            yield chunk

    async def read_some(self) -> bytes:
        """The body bytes that have arrived (waiting for some), b"" once it has ended; raises
        :class:`UpstreamError` if the body breaks. With :attr:`complete` after it, a small
        body is read whole without an iterator."""
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                conn = self._conn
                if conn is not None:
                    conn.consumed(len(data))
                return data
            conn = self._conn
            if conn is None:
                return b""
            if conn.error is not None:
                error = conn.error
                self._finish()
                raise error
            if conn.message_done:
                self._finish()
                return b""
            await conn.wait()

    @property
    def complete(self) -> bool:
        """Every body byte has been read: the upstream's message ended without an error."""
        if self._chunks:
            return False
        conn = self._conn
        return conn is None or (conn.message_done and conn.error is None)

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
