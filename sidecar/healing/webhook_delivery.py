"""One webhook delivery: how it is checked and encoded, tried, and when it is tried again.

The sender (:mod:`mlwarden.sidecar.healing.webhooks`) owns the queue; for each webhook it
calls :func:`prepare` when it is sent and :func:`deliver` when its turn comes.

- :func:`prepare` refuses, at once, a URL that is not ``http(s)://host/...``, a body that is
  not JSON or above ``max_body_bytes`` and a header with CR, LF or a bad name; it encodes the
  body (non-finite floats as ``"nan"``, ``"inf"``, ``"-inf"``) and sets the sender's own
  headers: ``content-type: application/json``, ``user-agent: mlwarden-sidecar`` and
  ``x-mlwarden-delivery-id``, the same on every attempt of one delivery.
- :func:`deliver` follows its :class:`DeliveryRules`. Each attempt is a ``POST`` bounded by
  ``timeout_s`` as a whole, not per phase, so a receiver that drips its answer cannot hold the
  queue. The response body is read (at most 64 KiB) and thrown away. Redirects are not
  followed (the sender's client does not).
- Connect errors, resets, timeouts and the ``retry_statuses`` (by default
  :data:`DEFAULT_RETRY_STATUSES`) are retried within ``max_attempts``, after an
  :class:`~mlwarden.sidecar.resilience.retry.ExponentialJitterBackoff` wait, stretched to
  ``Retry-After`` when the receiver sends one but never past the backoff's cap. Any other
  status is final: 2xx is a success, anything else (a 400, a redirect) a failure; so is any
  other httpx error (an unsupported protocol, say).
- Every delivery ends in one :class:`WebhookResult`, its URL redacted.

These rules are written here rather than with ``RetryPolicy``: that one serves the proxy's
streamed requests (methods, budgets, deadlines) and lets ``Retry-After`` stretch a wait without
bound, while a webhook wants a plain attempts bound and a capped ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from mlwarden.sidecar.healing.webhook_redaction import httpx_log_redacted, redact_url
from mlwarden.sidecar.resilience.retry import (
    ExponentialJitterBackoff,
    RetryState,
    parse_retry_after,
)

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "Delivery",
    "DeliveryRules",
    "WebhookResult",
    "deliver",
    "prepare",
    "result_of",
]

log = logging.getLogger("mlwarden.sidecar.webhooks")

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_RESPONSE_READ = 64 * 1024
USER_AGENT = "mlwarden-sidecar"
_OWNED_HEADERS = frozenset(
    {
        "content-type",
        "user-agent",
        "x-mlwarden-delivery-id",
        "content-length",
        "transfer-encoding",
        "host",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII: no CR, LF or NUL


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What became of one delivery. ``url`` is redacted (:func:`redact_url`).

    ``status`` is the last response's status (``None`` when the last attempt got none);
    ``error`` is ``None`` on success, else a short word: ``status 400``, ``timeout``,
    ``connect_error``, ``reset``, ``dropped`` (shut down before it was delivered) or an
    exception class name. ``duration_s`` runs from the first attempt to the result.
    """

    name: str
    url: str
    ok: bool
    attempts: int
    status: int | None
    error: str | None
    duration_s: float


@dataclass(slots=True)
class Delivery:
    """One accepted webhook: what to send (encoded and checked already), and its attempts."""

    name: str
    url: str
    body: bytes
    headers: list[tuple[str, str]]
    delivery_id: str
    attempts: int = 0
    started_at: float | None = None
    last_status: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRules:
    """Each attempt bounded by ``timeout_s``; at most ``max_attempts``; the retriable
    failures (and ``retry_statuses``) waited on by ``backoff`` (validated by the sender)."""

    timeout_s: float
    max_attempts: int
    backoff: ExponentialJitterBackoff
    retry_statuses: frozenset[int]


def prepare(
    name: str,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None,
    *,
    max_body_bytes: int,
) -> Delivery:
    """A delivery of ``body`` as JSON to ``url``, checked now so that a bad one fails the send
    rather than every attempt later; ``ValueError`` (its message never quotes the URL or a
    header) when the URL, the body or a header is refused. The sender's own headers (content
    type, user agent, delivery id, framing) win over ``headers``."""
    # The messages of these errors are logged: they must not quote the URL or a header.
    if not isinstance(url, str):
        raise ValueError(f"url: expected a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError("url: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url: expected http:// or https:// with a host")
    if not isinstance(body, Mapping):
        raise ValueError(f"body: expected a mapping, got {type(body).__name__}")
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # non-finite floats: written as the ledger writes them
        text = json.dumps(_finite_floats(body), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, RecursionError) as exc:
        raise ValueError(f"body: not JSON ({type(exc).__name__})") from None
    data = text.encode("utf-8")
    if len(data) > max_body_bytes:
        raise ValueError(f"body: {len(data)} bytes, above max_body_bytes ({max_body_bytes})")
    extra: list[tuple[str, str]] = []
    for key, value in (headers or {}).items():
        # checked here, so that a bad header fails send() rather than every attempt later
        if not (
            isinstance(key, str)
            and _HEADER_NAME.fullmatch(key)
            and isinstance(value, str)
            and _HEADER_VALUE.fullmatch(value)
        ):
            raise ValueError("headers: invalid header name or value")
        if key.lower() not in _OWNED_HEADERS:
            extra.append((key, value))
    delivery_id = uuid.uuid4().hex
    all_headers = [
        ("content-type", "application/json"),
        ("user-agent", USER_AGENT),
        ("x-mlwarden-delivery-id", delivery_id),
        *extra,
    ]
    return Delivery(str(name), url, data, all_headers, delivery_id)


def _finite_floats(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _finite_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_floats(v) for v in value]
    return value


class _AttemptFailed(Exception):
    """One attempt ended without a usable response; ``kind`` says how, ``retriable`` whether."""

    def __init__(self, kind: str, *, retriable: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retriable = retriable


async def deliver(
    d: Delivery,
    client: httpx.AsyncClient,
    rules: DeliveryRules,
    *,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[Any]],
    on_retry: Callable[[], None],
) -> WebhookResult:
    """Try ``d`` until it succeeds, fails for good or runs out of attempts; ``on_retry()``
    before each wait. Raises only what a bug or cancellation raises."""
    d.started_at = clock()
    while True:
        d.attempts += 1
        retry_after: str | None = None
        try:
            status, retry_after = await _attempt(client, d, rules.timeout_s)
        except _AttemptFailed as failure:
            d.last_status = None
            error, retriable = failure.kind, failure.retriable
        else:
            d.last_status = status
            if 200 <= status < 300:
                return result_of(d, ok=True, error=None, clock=clock)
            error, retriable = f"status {status}", status in rules.retry_statuses
        if not retriable or d.attempts >= rules.max_attempts:
            return result_of(d, ok=False, error=error, clock=clock)
        delay = _delay_s(d, retry_after, rules.backoff, clock=clock, wall_clock=wall_clock)
        on_retry()
        log.info(
            "webhook %s to %s: %s on attempt %d, retrying in %.2fs",
            d.name,
            redact_url(d.url),
            error,
            d.attempts,
            delay,
        )
        await sleep(delay)


async def _attempt(
    client: httpx.AsyncClient, d: Delivery, timeout_s: float
) -> tuple[int, str | None]:
    with httpx_log_redacted():
        try:
            async with asyncio.timeout(timeout_s):
                async with client.stream(
                    "POST",
                    d.url,
                    content=d.body,
                    headers=d.headers,
                    timeout=httpx.Timeout(timeout_s),
                ) as response:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= _MAX_RESPONSE_READ:
                            break
                    return response.status_code, response.headers.get("retry-after")
        except (TimeoutError, httpx.TimeoutException):
            raise _AttemptFailed("timeout", retriable=True) from None
        except httpx.ConnectError:
            raise _AttemptFailed("connect_error", retriable=True) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError):
            raise _AttemptFailed("reset", retriable=True) from None
        except httpx.HTTPError as exc:  # unsupported protocol, local protocol error, ...
            raise _AttemptFailed(type(exc).__name__, retriable=False) from None


def _delay_s(
    d: Delivery,
    retry_after: str | None,
    backoff: ExponentialJitterBackoff,
    *,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
) -> float:
    assert d.started_at is not None
    state = RetryState(d.attempts, d.started_at, clock())
    delay = backoff.delay_s(state)
    asked = parse_retry_after(retry_after, now_epoch_s=wall_clock())
    if asked is not None:
        delay = max(delay, min(asked, backoff.max_interval_s))
    return delay


def result_of(
    d: Delivery, *, ok: bool, error: str | None, clock: Callable[[], float]
) -> WebhookResult:
    """The result of ``d`` now, its URL redacted."""
    duration = 0.0 if d.started_at is None else max(0.0, clock() - d.started_at)
    return WebhookResult(
        name=d.name,
        url=redact_url(d.url),
        ok=ok,
        attempts=d.attempts,
        status=d.last_status,
        error=error,
        duration_s=duration,
    )
