"""The public port's HTTP/1.1 protocol: uvicorn's httptools protocol with limits on the head.

uvicorn reads a request head of any size and waits for it forever: one client could send a
32 MiB header (held whole in memory by the parser), 10,000 headers, or keep a connection open
with a partial head at a byte a second. :func:`edge_protocol` makes a protocol class that
refuses those before the sidecar sees a request, as Envoy and nginx do by default:

- a head (request line and headers) above ``max_header_bytes``, or with more than
  ``max_headers`` headers: ``431 Request Header Fields Too Large``, connection closed;
- a head not complete ``request_head_timeout_s`` after its first byte (or after the
  connection opened): ``408 Request Timeout`` when some of it arrived, else closed quietly.

Idle keep-alive connections are closed by uvicorn's ``timeout_keep_alive``; slow bodies by the
proxy's ``request_body_timeout_s``. Each refusal is counted by kind (:class:`EdgeCounts`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from mlwarden.sidecar.config import SidecarConfig

__all__ = ["EDGE_REFUSALS", "EdgeCounts", "EdgeLimits", "edge_limits", "edge_protocol"]

#: The ``reason`` label values of ``mlwarden_proxy_edge_refused_total``.
EDGE_REFUSALS = ("header_bytes", "header_count", "head_timeout", "idle_timeout")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The request head's limits (see the module docstring)."""

    max_header_bytes: int
    max_headers: int
    request_head_timeout_s: float


@dataclass(slots=True)
class EdgeCounts:
    """Connections refused at the edge, by kind: ``header_bytes``, ``header_count``,
    ``head_timeout``, ``idle_timeout`` (nothing sent)."""

    refused: Counter[str] = field(default_factory=Counter)


def edge_limits(config: SidecarConfig) -> EdgeLimits:
    """The limits of a sidecar's configuration (``limits`` and ``timeouts`` blocks)."""
    return EdgeLimits(
        max_header_bytes=config.limits.max_header_bytes,
        max_headers=config.limits.max_headers,
        request_head_timeout_s=config.timeouts.request_head_timeout_s,
    )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head over its limits."""


def edge_protocol(limits: EdgeLimits, counts: EdgeCounts) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing ``limits``."""

    class EdgeProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _header_count = 0
        _reading_head = True
        _head_timer: asyncio.TimerHandle | None = None
        _refusal: tuple[int, str, str] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            if self._reading_head:
                if self._head_timer is None:
                    self._arm_head_timer()
                self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                # uvicorn's own handling (the proxy then refuses WebSocket scopes); the
                # warning for an unsupported upgrade is newer than uvicorn 0.29.
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                elif (warn := getattr(self, "_unsupported_upgrade_warning", None)) is not None:
                    warn()
                return
            except (httptools.HttpParserError, _Refused):
                # httptools may re-raise a callback's exception as it is or wrapped in
                # HttpParserError: the refusal recorded decides, not the exception's type.
                if self._refusal is not None:
                    self._refuse(*self._refusal)
                else:
                    msg = "Invalid HTTP request received."
                    self.logger.warning(msg)
                    self.send_400_response(msg)
                return
            if self._reading_head and self._head_bytes > limits.max_header_bytes:
                # The head is not complete yet and already over the limit (one read may hold
                # the head and the start of the body: only an incomplete head is judged here).
                self._refuse(431, "header_bytes", "request head too large")

        def on_message_begin(self) -> None:
            self._header_count = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            if len(self.url) + len(url) > limits.max_header_bytes:
                self._refusal = (431, "header_bytes", "request head too large")
                raise _Refused
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_headers:
                self._refusal = (431, "header_count", "too many request headers")
                raise _Refused
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._head_bytes > limits.max_header_bytes and self._head_over_limit():
                self._refusal = (431, "header_bytes", "request head too large")
                raise _Refused
            self._reading_head = False
            self._disarm_head_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._reading_head = True
            self._head_bytes = 0
            super().on_response_complete()

        def _head_over_limit(self) -> bool:
            """The head's exact size, once complete: request line and header lines."""
            size = len(self.url) + 16
            for name, value in self.headers:
                size += len(name) + len(value) + 4
            return size > limits.max_header_bytes

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_timer = self.loop.call_later(
                limits.request_head_timeout_s, self._head_timed_out
            )

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._reading_head or self.transport.is_closing():
                return
            if self._head_bytes:
                self._refuse(408, "head_timeout", "request head not received in time")
            else:
                counts.refused["idle_timeout"] += 1
                self.transport.close()

        def _refuse(self, status: int, kind: str, message: str) -> None:
            counts.refused[kind] += 1
            self._disarm_head_timer()
            self.logger.warning("refused a client at the edge: %s", message)
            body = message.encode("ascii")
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
            if not self.transport.is_closing():
                self.transport.write(b"".join(content))
                self.transport.close()

    return EdgeProtocol
