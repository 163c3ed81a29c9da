"""What the proxy changes in the messages it forwards: headers both ways, and its own answers.

Hop-by-hop headers (RFC 9110 §7.6.1, ``proxy-*`` and whatever ``connection`` names) are
never forwarded; ``host`` and ``content-length`` are the upstream pool's to write; the
``x-forwarded-*`` headers get the client's values appended; the answer names the upstream
that gave it in ``x-mlwarden-upstream``. The upstream's ``date`` and ``server`` are dropped,
as nginx does by default: the serving layer writes one of each on every answer (``date``, and
``server: mlwarden``), where passing them on gave the client two of each. The proxy's own
answers (413, 502, 503, 504, 400) are small JSON bodies made here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "HOP_BY_HOP",
    "OVERLOADED_HEADER",
    "SERVER_HEADER",
    "UPSTREAM_HEADER",
    "header",
    "json_response",
    "request_headers",
    "request_target",
    "response_headers",
    "send_whole",
    "trailer_headers",
]

Headers = list[tuple[bytes, bytes]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus ``proxy-*``
#: and whatever a ``connection`` header names.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: Names the upstream that answered, on every proxied response.
UPSTREAM_HEADER = b"x-mlwarden-upstream"
#: Set on the 503 of a request shed because ``limits.max_concurrent_requests`` were in flight.
OVERLOADED_HEADER = b"x-mlwarden-overloaded"
# Dropped from requests besides the hop-by-hop ones: the pool writes its own host and framing.
_REQUEST_OWNED = frozenset({b"host", b"content-length"})
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
# Dropped from responses besides the hop-by-hop ones: the serving layer writes its own.
_RESPONSE_OWNED = frozenset({b"date", b"server", UPSTREAM_HEADER})
_RESPONSE_DROPPED = HOP_BY_HOP | _RESPONSE_OWNED
# Request headers that are not passed on as they came (the rest are, unless proxy-* or named
# by connection).
_REQUEST_SPECIAL = HOP_BY_HOP | _REQUEST_OWNED | frozenset(_FORWARDED)
#: The ``server`` header of every answer the sidecar gives.
SERVER_HEADER = (b"server", b"mlwarden")


_NONE_NAMED: frozenset[bytes] = frozenset()


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The header names a ``connection`` header lists (names are lower case: the server's
    and the upstream client's parsers lower them)."""
    named: set[bytes] | None = None
    for n, v in headers:
        if n == b"connection":
            named = named or set()
            named.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return frozenset(named) if named else _NONE_NAMED


def _is_hop(name: bytes, named: frozenset[bytes]) -> bool:
    return name in HOP_BY_HOP or name in named or name.startswith(b"proxy-")


def request_headers(scope: dict[str, Any]) -> Headers:
    """The client's headers as the upstream gets them (see the module docstring)."""
    raw: Headers = scope["headers"]
    named = _connection_tokens(raw)
    out: Headers = []
    forwarded: dict[bytes, list[bytes]] | None = None
    host = b""
    special = _REQUEST_SPECIAL
    for item in raw:
        name = item[0]
        if name not in special and not name.startswith(b"proxy-"):
            if not named or name not in named:
                out.append(item)
            continue
        if name == b"host":
            host = item[1]
        elif name in _FORWARDED:
            if forwarded is None:
                forwarded = {}
            forwarded.setdefault(name, []).append(item[1])
    client = scope.get("client")
    ours = (
        client[0].encode() if client else b"unknown",
        scope.get("scheme", "http").encode(),
        host,
    )
    for name, value in zip(_FORWARDED, ours, strict=True):
        given = forwarded.get(name) if forwarded is not None else None
        if given:
            out.append((name, b", ".join([*given, value] if value else given)))
        elif value:
            out.append((name, value))
    return out


def request_target(scope: dict[str, Any]) -> bytes:
    """The request target as the client sent it: raw path and query."""
    path = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string", b"")
    return path + b"?" + query if query else path


def response_headers(headers: Headers, upstream_value: bytes) -> Headers:
    """The upstream's response headers as the client gets them, naming the upstream."""
    named = _connection_tokens(headers)
    if named:
        out = [(n, v) for n, v in headers if not _is_hop(n, named) and n not in _RESPONSE_OWNED]
    else:
        dropped = _RESPONSE_DROPPED
        out = [(n, v) for n, v in headers if n not in dropped and not n.startswith(b"proxy-")]
    out.append((UPSTREAM_HEADER, upstream_value))
    return out


def trailer_headers(trailers: Headers) -> Headers:
    """The upstream's trailers as the client gets them."""
    named = _connection_tokens(trailers)
    return [(n, v) for n, v in trailers if not _is_hop(n, named)]


def header(headers: Headers, name: bytes) -> str | None:
    """The first value of ``name`` (lower case), decoded as latin-1."""
    for n, v in headers:
        if n == name:
            return v.decode("latin-1")
    return None


def json_response(
    status: int, payload: dict[str, Any], *, overloaded: bool = False, close: bool = False
) -> tuple[int, Headers, bytes]:
    """One of the proxy's own answers: status, headers and a JSON body; ``close`` ends the
    connection after it (the rest of a slow body is not waited for)."""
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if overloaded:
        headers.append((OVERLOADED_HEADER, b"true"))
    if close:
        headers.append((b"connection", b"close"))
    return status, headers, body


async def send_whole(send: Send, status: int, headers: Headers, body: bytes) -> None:
    """Send a complete answer in two ASGI messages."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
