"""Sending one shadow copy to the candidate: which headers go, the bound in time, the capped read.

The mirror's workers (:mod:`mlwarden.sidecar.routing.shadow`) call :func:`send_copy` once per
copy. The candidate gets the client's request minus per-connection headers, with
:data:`SHADOW_HEADER` added so that it can tell shadow traffic (and skip side effects). The
exchange is bounded by ``timeout_s``; a 2xx..4xx answer is read up to ``max_body_bytes``
(larger: ``None``, not compared), a 5xx is not read. The outcome is one word of the mirror's
``SHADOW_OUTCOMES``: ``ok`` (answered below 500), ``error`` or ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mlwarden.sidecar.upstream import UpstreamError, UpstreamPool, UpstreamTimeout

__all__ = ["SHADOW_HEADER", "Headers", "send_copy", "shadow_headers"]

log = logging.getLogger("mlwarden.sidecar.shadow")

Headers = list[tuple[bytes, bytes]]

#: Sent on every copy so that the candidate can tell shadow traffic (no side effects, say).
SHADOW_HEADER = b"x-mlwarden-shadow"
_SHADOW_HEADER_VALUE = b"1"

# Never copied to the shadow: per-connection headers (RFC 9110 §7.6.1), the framing and host
# the pool writes itself, and ``expect`` (the pool does not wait for 100-continue).
_DROPPED_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"x-mlwarden-upstream",
        SHADOW_HEADER,
    }
)


def shadow_headers(headers: Headers) -> Headers:
    """The client's headers as the candidate gets them, :data:`SHADOW_HEADER` last."""
    named = {
        t.strip().lower() for n, v in headers if n.lower() == b"connection" for t in v.split(b",")
    }
    out = [
        (n, v)
        for n, v in headers
        if (lname := n.lower()) not in _DROPPED_HEADERS
        and lname not in named
        and not lname.startswith(b"proxy-")
    ]
    out.append((SHADOW_HEADER, _SHADOW_HEADER_VALUE))
    return out


async def send_copy(
    pool: UpstreamPool,
    method: str,
    target: bytes,
    headers: Headers,
    body: bytes,
    *,
    timeout_s: float,
    max_body_bytes: int,
    name: str,
) -> tuple[str, int, bytes | None]:
    """(outcome, status, body or None when too large); never raises but cancellation.

    ``target`` is the request-target (path and query); ``name`` the shadow upstream's, for logs.
    """
    headers = shadow_headers(headers)
    try:
        async with asyncio.timeout(timeout_s):
            response = await pool.request(method, target, headers, body, timeout_s=timeout_s)
            try:
                status = response.status
                if status >= 500:
                    return "error", status, None
                return "ok", status, await _read_capped(response, max_body_bytes)
            finally:
                await response.aclose()
    except (TimeoutError, UpstreamTimeout):
        return "timeout", 0, None
    except UpstreamError as exc:
        log.debug("shadow %s: %s", name, exc)
        return "error", 0, None
    except Exception:  # a bad header (ValueError), a pool closed under us...
        log.debug("shadow %s: exchange failed", name, exc_info=True)
        return "error", 0, None


async def _read_capped(response: Any, limit: int) -> bytes | None:
    for name, value in response.headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.iter_body():
        size += len(chunk)
        if size > limit:
            return None  # aclose() drops the connection with the rest of the body
        chunks.append(chunk)
    return b"".join(chunks)
