"""One request/response pair as the monitor sees it, recorded while the app runs.

:class:`Exchange` wraps the server's ``receive`` and ``send`` for one request: it notes the
status, the time of the first and the last response byte, and keeps bounded copies of the
request body (teed as the app reads it, never read ahead) and, for model endpoints, of a JSON
response body; it adds the request id header to the response. What was recorded is read
after the response (:mod:`mlwarden.middleware.monitor`); :func:`decode_body` undoes the
response's gzip or deflate within the size bound first.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["Exchange", "decode_body"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_TYPES = (b"application/json", b"text/json")


class Exchange:
    """One request/response pair: timings, status and bounded copies of the bodies."""

    __slots__ = (
        "_max_request",
        "_max_response",
        "_model",
        "_receive",
        "_send",
        "first_byte",
        "last_byte",
        "request_chunks",
        "request_complete",
        "request_id",
        "request_id_header",
        "request_overflow",
        "request_size",
        "request_type",
        "response_chunks",
        "response_encoding",
        "response_json",
        "response_overflow",
        "response_size",
        "start",
        "status",
    )

    def __init__(
        self, receive: Receive, send: Send, *, model: bool, max_request: int, max_response: int
    ) -> None:
        self.start = time.perf_counter()
        self._receive, self._send, self._model = receive, send, model
        self._max_request, self._max_response = max_request, max_response
        self.status: int | None = None
        self.first_byte: float | None = None
        self.last_byte: float | None = None
        self.request_chunks: list[bytes] = []
        self.request_size = 0
        self.request_complete = False
        self.request_overflow = False
        self.response_chunks: list[bytes] = []
        self.response_size = 0
        self.response_json = False
        self.response_encoding: bytes | None = None
        self.response_overflow = False
        self.request_type: str | None = None
        self.request_id: bytes | None = None
        self.request_id_header = b""

    def release(self) -> None:
        """Drop the server's callables: a queued exchange keeps only what is to be read."""
        self._receive = self._send = None  # type: ignore[assignment]

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.request_complete:
            body = message.get("body", b"")
            if body and not self.request_overflow:
                self.request_size += len(body)
                if self.request_size > self._max_request:
                    self.request_overflow = True
                    self.request_chunks = []
                else:
                    self.request_chunks.append(body)
            if not message.get("more_body", False):
                self.request_complete = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._model and self.response_json and not self.response_overflow:
                body = message.get("body", b"")
                if body:
                    self.response_size += len(body)
                    if self.response_size > self._max_response:
                        self.response_overflow = True
                        self.response_chunks = []
                    else:
                        self.response_chunks.append(body)
            if not message.get("more_body", False):
                await self._send(message)
                self.last_byte = time.perf_counter()
                return
        elif kind == "http.response.start":
            self.first_byte = time.perf_counter()
            self.status = message["status"]
            if self.request_id is not None:
                message = self._with_request_id(message)
            if self._model:
                for name, value in message.get("headers", ()):
                    name = name.lower()
                    if name == b"content-type":
                        self.response_json = value.lower().startswith(_JSON_TYPES) or (
                            b"+json" in value.lower()
                        )
                    elif name == b"content-encoding":
                        encoding = value.strip().lower()
                        self.response_encoding = None if encoding == b"identity" else encoding
        await self._send(message)

    def _with_request_id(self, message: Message) -> Message:
        """The start message with the request id; an id the app set itself is adopted.

        ASGI requires lower-case header names in responses, so names are compared as sent.
        The app's message and header list are copied, never changed: an app may reuse them.
        """
        wanted = self.request_id_header
        headers = message.get("headers", ())
        for name, value in headers:
            if name == wanted:
                self.request_id = value if 0 < len(value) <= 128 else None
                return message
        copy = dict(message)
        copy["headers"] = [*headers, (wanted, self.request_id)]
        return copy


def decode_body(body: bytes, encoding: bytes, limit: int) -> tuple[bytes, str | None]:
    """Undo gzip/deflate within ``limit`` bytes; other encodings are not read."""
    if encoding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        return b"", "encoded"
    try:
        decoder = zlib.decompressobj(wbits)
        out = decoder.decompress(body, limit)
    except zlib.error:
        return b"", "encoded"
    if decoder.unconsumed_tail:
        return b"", "too_large"
    return out, None
