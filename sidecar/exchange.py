"""One client request in flight through the proxy, and relaying an upstream's answer to it.

:class:`Exchange` holds what the proxy forwards and what the client was sent, so the steps of
the request path share one object instead of a dozen parameters. :func:`relay` streams the
chosen upstream's answer back: the response-size limit, trailers, and the bounded capture of
the body for the shadow comparison. Once the head has gone out nothing can be retried: an
upstream failure mid-body ends the client's response early (the server closes the
connection, so the truncation is visible).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mlwarden.middleware.tracing import RequestSpan
from mlwarden.sidecar.forwarding import (
    header,
    json_response,
    response_headers,
    send_whole,
    trailer_headers,
)
from mlwarden.sidecar.routing.shadow import ShadowCopy
from mlwarden.sidecar.upstream import UpstreamError, UpstreamResponse

__all__ = [
    "CLIENT_CLOSED",
    "ClientGone",
    "Exchange",
    "HeldBody",
    "end_server_span",
    "hold_start",
    "relay",
    "report_to_shadow",
]

log = logging.getLogger("mlwarden.sidecar.proxy")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# The status recorded for a client that left before its answer was complete (nginx's word).
CLIENT_CLOSED = 499


class ClientGone(Exception):
    """The client disconnected; nothing is sent and nothing is counted against an upstream."""


class Exchange:
    """One client request on its way through the proxy: what is forwarded (method, target,
    headers, body, deadline), the client's side (``send``, the disconnect ``watcher``), and
    what the client was sent: by which upstream (None: the proxy itself) and the status; the
    server span when traced; whether the server can send trailers; the shadow copy and the
    primary's body captured for it (bounded); the upstreams tried and how many times the
    request was sent (retries and fallbacks alike: the next attempt's resend count)."""

    __slots__ = (
        "body",
        "captured",
        "deadline",
        "headers",
        "method",
        "send",
        "sent",
        "shadow",
        "span",
        "status",
        "target",
        "trailers_ok",
        "tried",
        "upstream",
        "watcher",
    )

    def __init__(self, send: Send, span: RequestSpan | None, trailers_ok: bool) -> None:
        self.send = send
        self.span = span
        self.trailers_ok = trailers_ok
        self.upstream: str | None = None
        self.status = CLIENT_CLOSED
        self.shadow: ShadowCopy | None = None
        self.captured: list[bytes] | None = None
        self.tried: list[str] = []
        self.sent = 0
        self.method = ""
        self.target = b""
        self.headers: Headers = []
        self.body = b""
        self.deadline = 0.0
        self.watcher: asyncio.Future[Any] | None = None

    def client_gone(self) -> bool:
        watcher = self.watcher
        return watcher is not None and watcher.done()


@dataclass(slots=True)
class HeldBody:
    """The start of an upstream's body, read before its head is sent on: the bytes arrived
    first (nothing, when the body is empty), the response the rest comes from, and whether
    the body has ended (a small answer is usually whole here)."""

    first: bytes
    response: UpstreamResponse
    done: bool


async def hold_start(response: UpstreamResponse) -> HeldBody:
    """Wait for the first body bytes (or the body's end) of ``response``. An upstream failing
    before them raises :class:`UpstreamError` here, with the response closed, while the
    attempt can still be retried or moved to the next candidate."""
    try:
        first = await response.read_some()
    except BaseException:
        await response.aclose()
        raise
    return HeldBody(first, response, not first or response.complete)


async def relay(
    ex: Exchange,
    name: str,
    response: UpstreamResponse,
    held: HeldBody,
    *,
    max_response_bytes: int,
    shadow_capture_bytes: int,
    upstream_value: bytes,
) -> bool:
    """Stream ``response`` to the client; False when the upstream failed mid-body or
    sent more than ``limits.max_response_bytes``."""
    send = ex.send
    limit = max_response_bytes
    declared = header(response.headers, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        log.warning(
            "upstream %s: response of %s bytes above max_response_bytes %d",
            name,
            declared,
            limit,
        )
        ex.status = 502
        await send_whole(
            send,
            *json_response(
                502,
                {
                    "error": "upstream response too large",
                    "upstream": name,
                    "max_response_bytes": limit,
                },
            ),
        )
        return False
    headers = response_headers(response.headers, upstream_value)
    # Trailers need the server's ASGI extension and an upstream that announced them in a
    # ``trailer`` header (the head goes out before the trailers arrive). Else they are
    # dropped, as any HTTP/1.1 intermediary may.
    trailer = header(response.headers, b"trailer") if ex.trailers_ok else None
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": response.status,
        "headers": headers,
    }
    if trailer is not None:
        headers.append((b"trailer", trailer.encode("latin-1")))
        start["trailers"] = True
    await send(start)
    ex.status = response.status
    captured = ex.captured
    watcher = ex.watcher
    size = 0
    # Each chunk goes out once the next has been read, so the last goes with the end of the
    # body: a small answer, whole with the head, is one message (and one write).
    chunk, done = held.first, held.done
    try:
        while True:
            if chunk:
                if watcher is not None and watcher.done():
                    raise ClientGone
                size += len(chunk)
                if captured is not None:
                    captured.append(chunk)
                    if size > shadow_capture_bytes:
                        ex.captured = captured = None  # too large to compare: not kept
                if size > limit:
                    log.warning(
                        "upstream %s: response body above max_response_bytes %d, cut",
                        name,
                        limit,
                    )
                    ex.status = 502
                    return False
            if done:
                break
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await response.read_some()
            done = not chunk or response.complete
        await send({"type": "http.response.body", "body": chunk})
    except UpstreamError as exc:
        # The head is out: nothing to retry. Returning unfinished makes the server close
        # the client connection, so the truncation is visible.
        log.warning("upstream %s failed mid-response: %s", name, exc)
        ex.status = 502  # what the client got is a broken answer, whatever its head said
        return False
    except OSError as exc:  # the server could not write to a client that went away
        raise ClientGone from exc
    if trailer is not None:
        await send(
            {
                "type": "http.response.trailers",
                "more_trailers": False,
                "headers": trailer_headers(response.trailers),
            }
        )
    return True


def report_to_shadow(ex: Exchange) -> None:
    """Tell the shadow copy what the primary answered (never raises, never waits)."""
    copy = ex.shadow
    assert copy is not None
    if ex.upstream is None or ex.status == CLIENT_CLOSED or ex.status >= 500:
        copy.primary_failed()
        return
    captured = ex.captured
    copy.primary_answered(ex.status, b"".join(captured) if captured is not None else None)


def end_server_span(span: RequestSpan, ex: Exchange, error: BaseException | None = None) -> None:
    """End the proxy's server span. A client that left got no status we could name (499 is
    the metrics' word for it): the span says ``client_closed`` instead."""
    span.detach()
    gone = ex.status == CLIENT_CLOSED
    span.finish(
        route=None,
        status=None if gone else ex.status,
        error=error,
        attributes={"mlwarden.upstream": ex.upstream or "none"},
        end_time_ns=None,
        failure="client_closed" if gone and error is None else None,
    )
