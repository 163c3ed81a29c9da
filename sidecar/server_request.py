"""One request on a client connection of the sidecar's server: its ASGI ``receive`` and
``send``, and the framing of its answer.

:class:`Request` is what :class:`~mlwarden.sidecar.server.HttpProtocol` makes once a head is
in: the body as it arrives (``receive`` hands it over; after the body, a future that resolves
on disconnect, so a watcher of it costs no task), and the answer as the app sends it (the
head written with the first body bytes in one write; ``content-length`` added for a whole
body, else chunked in HTTP/1.1 or close-delimited in 1.0; nothing after the head for HEAD,
204 and 304; one ``date`` and the server's default headers).
"""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Awaitable
from email.utils import formatdate
from typing import Any, Protocol

__all__ = ["Connection", "DateClock", "Request", "status_line"]

Headers = list[tuple[bytes, bytes]]

_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in http.HTTPStatus
}
_NO_BODY_STATUSES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>`` and its line end."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class DateClock:
    """The ``date`` header, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        return self._value


class _Shared(Protocol):
    draining: bool
    default_head: bytes
    clock: DateClock


class Connection(Protocol):
    """What a request needs of its connection (:class:`~mlwarden.sidecar.server.HttpProtocol`)."""

    loop: asyncio.AbstractEventLoop
    closed: bool
    write_paused: bool
    state: _Shared

    def write(self, data: bytes) -> None: ...
    def resume_reading_for_body(self) -> None: ...
    async def drain(self) -> None: ...


class Request:
    """One request: its scope, its body as it arrives, its response as the app sends it."""

    __slots__ = (
        "body_done",
        "body_parts",
        "buffered",
        "chunked",
        "conn",
        "delivered",
        "disconnect",
        "expect_continue",
        "head_sent",
        "is_head",
        "keep_alive",
        "response_done",
        "response_headers",
        "scope",
        "status",
        "waiter",
    )

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.is_head = scope["method"] == "HEAD"
        self.expect_continue = False
        self.body_parts: list[bytes] = []
        self.buffered = 0
        self.body_done = False
        self.delivered = False
        self.waiter: asyncio.Future[None] | None = None
        self.disconnect: asyncio.Future[dict[str, Any]] | None = None
        self.status = 0
        self.response_headers: Headers = []
        self.head_sent = False
        self.chunked = False
        self.response_done = False

    # -- the ASGI receive and send callables ---------------------------------------------------

    def receive(self) -> Awaitable[dict[str, Any]]:
        """The next body message; after the body, a future that resolves on disconnect (so a
        watcher of it costs no task)."""
        if self.delivered:
            return self._disconnected()
        if self.body_parts or self.body_done:
            parts = self.body_parts
            self.body_parts = []
            body = b"".join(parts) if len(parts) != 1 else parts[0]
            self.buffered = 0
            more = not self.body_done
            if more:
                self.conn.resume_reading_for_body()
            else:
                self.delivered = True
            done = self.conn.loop.create_future()
            done.set_result({"type": "http.request", "body": body, "more_body": more})
            return done
        if self.conn.closed:
            return self._disconnected()
        return self._wait_body()

    def _disconnected(self) -> asyncio.Future[dict[str, Any]]:
        fut = self.disconnect
        if fut is None or fut.cancelled():
            fut = self.disconnect = self.conn.loop.create_future()
            if self.conn.closed or self.response_done:
                fut.set_result({"type": "http.disconnect"})
        return fut

    async def _wait_body(self) -> dict[str, Any]:
        conn = self.conn
        if self.expect_continue:
            self.expect_continue = False
            conn.write(_CONTINUE)
        while not self.body_parts and not self.body_done and not conn.closed:
            waiter = self.waiter = conn.loop.create_future()
            conn.resume_reading_for_body()
            try:
                await waiter
            finally:
                self.waiter = None
        if conn.closed and not self.body_done:
            return {"type": "http.disconnect"}
        return await self.receive()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        self.wake()
        fut = self.disconnect
        if fut is not None and not fut.done():
            fut.set_result({"type": "http.disconnect"})

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self.status = message["status"]
            self.response_headers = message.get("headers", [])
            return
        if kind != "http.response.body":
            return  # trailers: not offered as an extension, so not sent
        if not self.status:
            raise RuntimeError("http.response.body before http.response.start")
        if self.response_done:
            return
        conn = self.conn
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if conn.closed:
            self.response_done = not more
            return
        if not self.head_sent:
            data = self._head(len(body) if not more else None)
            self.head_sent = True
            if self.is_head or self.status in _NO_BODY_STATUSES:
                body = b""
            if self.chunked:
                data += b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            else:
                data += body
        elif self.is_head or self.status in _NO_BODY_STATUSES:
            data = b""
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
        else:
            data = body
        if not more:
            self.response_done = True
            if self.chunked:
                data += b"0\r\n\r\n"
        if data:
            conn.write(data)
        if conn.write_paused:
            await conn.drain()

    def _head(self, whole_length: int | None) -> bytes:
        """The status line and headers; ``whole_length`` when the first body message is the
        whole body (a ``content-length`` is added if the app gave none)."""
        conn = self.conn
        parts = [status_line(self.status)]
        has_length = False
        for name, value in self.response_headers:
            if name == b"content-length":
                has_length = True
            elif name == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue  # this server's own, written below
            elif name == b"transfer-encoding":
                continue  # framing is this server's
            parts += (name, b": ", value, b"\r\n")
        if self.keep_alive and conn.state.draining:
            self.keep_alive = False
        if not has_length and self.status not in _NO_BODY_STATUSES:
            if whole_length is not None:
                parts.append(b"content-length: %d\r\n" % whole_length)
            elif self.scope["http_version"] == "1.1":
                # Announced for HEAD too (what GET would send), but a HEAD answer has no body
                # on the wire: not even the last chunk.
                self.chunked = not self.is_head
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 body without a length ends at close
        parts.append(conn.state.default_head)
        parts.append(conn.state.clock.date_line())
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)
