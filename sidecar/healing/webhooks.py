"""The healing loop's outgoing webhooks: a bounded, retrying, never-blocking sender.

Healing policies fire webhooks (a JSON body POSTed to a retraining pipeline's REST API) and
escalations (a Slack-compatible body, built by :func:`slack_body`, POSTed to an incoming-webhook
URL). Both go through one :class:`WebhookSender`:

- :meth:`WebhookSender.send` is synchronous and never blocks or raises: the body is encoded to
  JSON at once (so later changes to the caller's mapping cannot leak into it) and queued. A
  full queue, a closed sender, a body that is not JSON or is above ``max_body_bytes``, or a URL
  that is not ``http(s)://host/...`` makes it return ``False`` and count why (:meth:`stats`).
  A healing action must never wait on, or fail because of, a notification.
- One background task delivers the queue in order: ``POST`` with ``content-type:
  application/json``, ``user-agent: mlwarden-sidecar`` and ``x-mlwarden-delivery-id`` (the
  same on every attempt of one delivery, so that receivers can drop the duplicates that
  at-least-once delivery implies). Connect errors, resets, timeouts and the
  ``retry_statuses`` are retried within ``max_attempts``, after an
  :class:`~mlwarden.sidecar.resilience.retry.ExponentialJitterBackoff` wait, stretched to
  ``Retry-After`` when the receiver sends one but never past the backoff's cap. Any other
  status is final: 2xx is a success, anything else (a 400, a redirect: redirects are not
  followed) a failure. Each attempt is bounded by ``timeout_s`` as a whole, not per phase, so a
  receiver that drips its answer cannot hold the queue. The response body is read (at most
  64 KiB) and thrown away.
- Every accepted delivery gets exactly one :class:`WebhookResult`, passed to ``on_result``:
  delivered, failed, or dropped at shutdown (``error="dropped"``). :meth:`WebhookSender.aclose`
  gives the queue ``timeout_s`` of grace, then cancels what is left.

The retry loop is written here rather than with ``RetryPolicy``: that one serves the proxy's
streamed requests (methods, budgets, deadlines) and lets ``Retry-After`` stretch a wait without
bound, while a webhook wants a plain attempts bound and a capped ``Retry-After``.

Secrets in URLs
    Webhook URLs often are credentials: ``https://user:pass@host/``, ``?token=...``, or the
    path itself (Slack's ``/services/T…/B…/<secret>``). Only :func:`redact_url` forms ever
    reach a log line or a :class:`WebhookResult`: scheme, host, port and path, without userinfo,
    query or fragment, and with token-like path segments (16 or more characters with a digit
    or both letter cases, or 32 or more of anything) replaced by ``***``. httpx logs every
    request's full URL at INFO; a filter on the ``httpx`` logger redacts that line for this
    module's requests only (a context variable marks them), so other httpx users' logs are
    untouched.
    Error texts carry exception class names, never exception messages, which may quote the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as _dt
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.resilience.retry import (
    ExponentialJitterBackoff,
    RetryState,
    parse_retry_after,
)

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "MAX_BODY_BYTES",
    "WebhookResult",
    "WebhookSender",
    "redact_url",
    "slack_body",
]

log = logging.getLogger("mlwarden.sidecar.webhooks")

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BODY_BYTES = 256 * 1024
USER_AGENT = "mlwarden-sidecar"
_MAX_RESPONSE_READ = 64 * 1024
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
_ELLIPSIS = "…"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII: no CR, LF or NUL

# --- redaction ------------------------------------------------------------------------------


def _looks_like_token(segment: str) -> bool:
    # Words such as "retraining-pipeline" stay readable; random tokens almost surely hold a
    # digit or both cases (a 24-character one has neither with odds below 1e-8).
    n = len(segment)
    if n >= 32:
        return True
    if n < 16:
        return False
    return any(c.isdigit() for c in segment) or (
        any(c.isupper() for c in segment) and any(c.islower() for c in segment)
    )


def redact_url(url: str) -> str:
    """``url`` as it may be logged: ``scheme://host[:port]/path``, secrets removed.

    Userinfo, query and fragment are dropped; path segments that look like tokens (see the
    module docstring) become ``***``. Never raises: an unparseable URL becomes ``<invalid url>``.
    """
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    path = "/".join("***" if _looks_like_token(seg) else seg for seg in parts.path.split("/"))
    return f"{parts.scheme}://{netloc}{path}"


_IN_WEBHOOK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mlwarden_webhook_request", default=False
)


class _RedactHttpxRequestLog(logging.Filter):
    """Rewrites httpx's ``HTTP Request: POST <url> ...`` line for this module's requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _IN_WEBHOOK.get() and isinstance(record.args, tuple) and len(record.args) >= 2:
            args = list(record.args)
            args[1] = redact_url(str(args[1]))
            record.args = tuple(args)
        return True


_httpx_filter_lock = threading.Lock()


def _install_httpx_filter() -> None:
    with _httpx_filter_lock:
        logger = logging.getLogger("httpx")
        if not any(isinstance(f, _RedactHttpxRequestLog) for f in logger.filters):
            logger.addFilter(_RedactHttpxRequestLog())


# --- results --------------------------------------------------------------------------------


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
class _Delivery:
    name: str
    url: str
    body: bytes
    headers: list[tuple[str, str]]
    delivery_id: str
    attempts: int = 0
    started_at: float | None = None
    last_status: int | None = None


class _AttemptFailed(Exception):
    """One attempt ended without a usable response; ``kind`` says how, ``retriable`` whether."""

    def __init__(self, kind: str, *, retriable: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retriable = retriable


# --- the sender -----------------------------------------------------------------------------


class WebhookSender:
    """Queues webhook deliveries and sends them from one background task.

    ``client`` is used as given and left open; without one, the sender owns (and closes in
    :meth:`aclose`) an ``httpx.AsyncClient`` that ignores proxy variables and does not follow
    redirects. ``backoff`` defaults to 0.5 s doubling to a 10 s cap, with full jitter.
    ``clock`` (durations), ``wall_clock`` (HTTP-date ``Retry-After``) and ``sleep`` are
    injectable so that tests assert exact waits without waiting.

    Call :meth:`send` from the event loop's thread; from another thread it works too (the
    worker is woken through ``call_soon_threadsafe``).
    """

    def __init__(
        self,
        *,
        max_queue: int = 100,
        timeout_s: float = 5.0,
        max_attempts: int = 4,
        backoff: ExponentialJitterBackoff | None = None,
        retry_statuses: Iterable[int] = DEFAULT_RETRY_STATUSES,
        max_body_bytes: int = MAX_BODY_BYTES,
        client: httpx.AsyncClient | None = None,
        on_result: Callable[[WebhookResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        problems: list[str] = []
        for key, value in (
            ("max_queue", max_queue),
            ("max_attempts", max_attempts),
            ("max_body_bytes", max_body_bytes),
        ):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                problems.append(f"{key}: {value!r}, expected an integer >= 1")
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
            problems.append(f"timeout_s: {timeout_s!r}, expected a number of seconds > 0")
        statuses = frozenset(retry_statuses) if not isinstance(retry_statuses, str) else None
        if statuses is None or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            problems.append(f"retry_statuses: {retry_statuses!r}, expected HTTP status codes")
        if problems:
            raise ConfigError(problems, source="webhooks")
        assert statuses is not None
        self.max_queue = max_queue
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.backoff = (
            backoff
            if backoff is not None
            else ExponentialJitterBackoff(base_interval_s=0.5, multiplier=2.0, max_interval_s=10.0)
        )
        self.retry_statuses = statuses
        self.max_body_bytes = max_body_bytes
        self._on_result = on_result
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._owns_client = client is None
        self._client = (
            client
            if client is not None
            else httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                trust_env=False,
                follow_redirects=False,
            )
        )
        self._client_closed = False
        self._queue: deque[_Delivery] = deque()
        self._lock = threading.Lock()  # queue and counters; send() may come from any thread
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._current: _Delivery | None = None
        self._counts = dict.fromkeys(
            ("sent_ok", "failed", "shed", "rejected", "dropped", "retries"), 0
        )
        _install_httpx_filter()

    def __repr__(self) -> str:
        return (
            f"WebhookSender(max_queue={self.max_queue}, timeout_s={self.timeout_s}, "
            f"max_attempts={self.max_attempts}, backoff={self.backoff!r}, "
            f"retry_statuses={sorted(self.retry_statuses)})"
        )

    # --- enqueue ---------------------------------------------------------------------------

    def send(
        self,
        name: str,
        url: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Queue ``body`` as JSON for ``url``; ``False`` (and counted) when it is not queued.

        Never blocks, never raises. ``headers`` are added to the request; the sender's own
        (content type, user agent, delivery id, framing) cannot be overridden.
        """
        try:
            delivery = self._prepare(name, url, body, headers)
        except Exception as exc:
            self._count("rejected")
            log.warning("webhook %s to %s not sent: %s", name, redact_url(url), exc)
            return False
        with self._lock:
            if self._closed or len(self._queue) >= self.max_queue:
                self._counts["shed"] += 1
                why = "sender closed" if self._closed else f"queue full ({self.max_queue})"
                log.warning("webhook %s to %s shed: %s", delivery.name, redact_url(url), why)
                return False
            self._queue.append(delivery)
        self._wake()
        return True

    def _prepare(
        self, name: str, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None
    ) -> _Delivery:
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
        if len(data) > self.max_body_bytes:
            raise ValueError(
                f"body: {len(data)} bytes, above max_body_bytes ({self.max_body_bytes})"
            )
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
        return _Delivery(str(name), url, data, all_headers, delivery_id)

    def _wake(self) -> None:
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return  # start() looks at the queue
        if threading.get_ident() == self._loop_thread:
            event.set()
        else:
            # a closed loop means nothing will deliver anyway
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery task on the running loop (idempotent)."""
        if self._task is not None:
            return
        if self._closed:
            raise RuntimeError("WebhookSender is closed")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._wakeup.set()  # deliveries queued before start()
        self._task = self._loop.create_task(self._run(), name="mlwarden-webhooks")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, give queued deliveries ``timeout_s`` to go out, then drop the rest.

        Dropped deliveries are counted (``dropped``) and reported to ``on_result`` with
        ``error="dropped"``. An owned client is closed. Safe to call more than once.
        """
        with self._lock:
            self._closed = True
        task = self._task
        if task is not None and not task.done():
            self._wake()
            done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
            if not done:
                task.cancel()
                await asyncio.wait({task})
        if task is not None and task.done() and not task.cancelled() and task.exception():
            log.error("webhook worker failed", exc_info=task.exception())
        while True:
            with self._lock:
                if not self._queue:
                    break
                delivery = self._queue.popleft()
            self._drop(delivery)
        if self._owns_client and not self._client_closed:
            self._client_closed = True
            await self._client.aclose()

    def stats(self) -> dict[str, int]:
        """Counters: ``sent_ok``, ``failed``, ``shed`` (queue full or closed), ``rejected``
        (bad URL, header or body), ``dropped`` (at shutdown), ``retries``; and ``queued``."""
        with self._lock:
            return {**self._counts, "queued": len(self._queue)}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    # --- delivery --------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            with self._lock:
                delivery = self._queue.popleft() if self._queue else None
                closed = self._closed
            if delivery is None:
                if closed:
                    return
                self._wakeup.clear()
                with self._lock:
                    idle = not self._queue and not self._closed
                if idle:
                    await self._wakeup.wait()
                continue
            self._current = delivery
            try:
                result = await self._deliver(delivery)
            except asyncio.CancelledError:
                self._drop(delivery)
                raise
            except Exception as exc:  # a bug here must not stop later deliveries
                log.error("webhook %s: delivery failed unexpectedly", delivery.name, exc_info=True)
                result = self._result(delivery, ok=False, error=type(exc).__name__)
            finally:
                self._current = None
            self._finish(result)

    async def _deliver(self, d: _Delivery) -> WebhookResult:
        d.started_at = self._clock()
        while True:
            d.attempts += 1
            retry_after: str | None = None
            try:
                status, retry_after = await self._attempt(d)
            except _AttemptFailed as failure:
                d.last_status = None
                error, retriable = failure.kind, failure.retriable
            else:
                d.last_status = status
                if 200 <= status < 300:
                    return self._result(d, ok=True, error=None)
                error, retriable = f"status {status}", status in self.retry_statuses
            if not retriable or d.attempts >= self.max_attempts:
                return self._result(d, ok=False, error=error)
            delay = self._delay_s(d, retry_after)
            self._count("retries")
            log.info(
                "webhook %s to %s: %s on attempt %d, retrying in %.2fs",
                d.name,
                redact_url(d.url),
                error,
                d.attempts,
                delay,
            )
            await self._sleep(delay)

    async def _attempt(self, d: _Delivery) -> tuple[int, str | None]:
        token = _IN_WEBHOOK.set(True)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._client.stream(
                    "POST",
                    d.url,
                    content=d.body,
                    headers=d.headers,
                    timeout=httpx.Timeout(self.timeout_s),
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
        finally:
            _IN_WEBHOOK.reset(token)

    def _delay_s(self, d: _Delivery, retry_after: str | None) -> float:
        assert d.started_at is not None
        state = RetryState(d.attempts, d.started_at, self._clock())
        delay = self.backoff.delay_s(state)
        asked = parse_retry_after(retry_after, now_epoch_s=self._wall_clock())
        if asked is not None:
            delay = max(delay, min(asked, self.backoff.max_interval_s))
        return delay

    def _result(self, d: _Delivery, *, ok: bool, error: str | None) -> WebhookResult:
        duration = 0.0 if d.started_at is None else max(0.0, self._clock() - d.started_at)
        return WebhookResult(
            name=d.name,
            url=redact_url(d.url),
            ok=ok,
            attempts=d.attempts,
            status=d.last_status,
            error=error,
            duration_s=duration,
        )

    def _drop(self, d: _Delivery) -> None:
        self._count("dropped")
        log.warning(
            "webhook %s to %s dropped at shutdown after %d attempts",
            d.name,
            redact_url(d.url),
            d.attempts,
        )
        self._report(self._result(d, ok=False, error="dropped"))

    def _finish(self, result: WebhookResult) -> None:
        if result.ok:
            self._count("sent_ok")
            log.debug(
                "webhook %s to %s delivered (status %s, %d attempts)",
                result.name,
                result.url,
                result.status,
                result.attempts,
            )
        else:
            self._count("failed")
            log.warning(
                "webhook %s to %s failed after %d attempts: %s",
                result.name,
                result.url,
                result.attempts,
                result.error,
            )
        self._report(result)

    def _report(self, result: WebhookResult) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(result)
        except Exception:
            log.error("webhook %s: on_result hook failed", result.name, exc_info=True)


def _finite_floats(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _finite_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_floats(v) for v in value]
    return value


# --- Slack ----------------------------------------------------------------------------------

_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_MAX = 10
_RECENT_MAX = 10
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fit(text: object, limit: int) -> str:
    """``text`` escaped for Slack and at most ``limit`` characters, never cut inside ``&amp;``."""
    raw = text if isinstance(text, str) else str(text)
    escaped = _escape(raw)
    if len(escaped) <= limit:
        return escaped
    out: list[str] = []
    used = 0
    for ch in raw:
        piece = _ESCAPES.get(ch, ch)
        if used + len(piece) > limit - len(_ELLIPSIS):
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + _ELLIPSIS


def _join_fit(head: str, lines: Sequence[str], limit: int) -> str:
    """``head`` and as many whole ``lines`` as fit in ``limit`` (already escaped text)."""
    text = head
    for i, line in enumerate(lines):
        more = f"\n_…and {len(lines) - i} more_"
        candidate = f"{text}\n{line}"
        rest_after = i + 1 < len(lines)
        if len(candidate) + (len(more) if rest_after else 0) > limit:
            return text + more if len(text) + len(more) <= limit else text
        text = candidate
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def _entry_time(entry: Mapping[str, Any]) -> str:
    if entry.get("time"):
        return str(entry["time"])
    at = entry.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at):
        try:
            when = _dt.datetime.fromtimestamp(at, tz=_dt.UTC)
        except (OverflowError, OSError, ValueError):
            return str(at)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return "?"


def slack_body(
    *,
    title: str,
    severity: str,
    policy: str,
    reason: str,
    signals: Mapping[str, Any],
    actions: Sequence[str],
    recent: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A Slack incoming-webhook body (Block Kit) for an escalation.

    Blocks: a header (``title``); a section with ``reason`` as text and fields for severity,
    policy and each signal (at most 10 fields: extra signals are summed up in the last one);
    a section of the actions taken; and, when ``recent`` is not empty, a section with up to
    10 ledger entries (``LedgerRecord.to_dict()`` mappings, in the order given: the ledger's
    ``query`` gives newest first) as time, action, target and outcome. ``text`` is the
    notification fallback. Every text is escaped (``&``, ``<``, ``>``) and cut to Slack's
    limits, so user-controlled text cannot mention ``@channel`` or forge a link.
    """
    fields = [
        f"*Severity*\n{_fit(severity, _FIELD_MAX - 12)}",
        f"*Policy*\n{_fit(policy, _FIELD_MAX - 12)}",
    ]
    items = list(signals.items())
    room = _FIELDS_MAX - len(fields)
    shown = items if len(items) <= room else items[: room - 1]
    for key, value in shown:
        name = _fit(key, 100)
        fields.append(f"*{name}*\n{_fit(_format_value(value), _FIELD_MAX - len(name) - 3)}")
    if len(shown) < len(items):
        fields.append(f"*…*\n{len(items) - len(shown)} more signals")
    summary: dict[str, Any] = {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*Reason*\n" + _fit(reason or "-", _SECTION_MAX - 9)},
        "fields": [{"type": "mrkdwn", "text": f} for f in fields],
    }
    action_lines = [f"• {_fit(a, 500)}" for a in actions] or ["none"]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _fit(title or "mlwarden", _HEADER_MAX),
                "emoji": True,
            },
        },
        summary,
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _join_fit("*Actions taken*", action_lines, _SECTION_MAX),
            },
        },
    ]
    if recent:
        lines = [
            f"`{_fit(_entry_time(e), 40)}` {_fit(e.get('action', '?'), 100)} → "
            f"{_fit(e.get('target', '?'), 200)}: {_fit(e.get('outcome', '?'), 100)}"
            for e in list(recent)[:_RECENT_MAX]
        ]
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _join_fit("*Recent healing actions*", lines, _SECTION_MAX),
                },
            }
        )
    fallback = _fit(f"[{severity}] {title} ({policy}): {reason}", _SECTION_MAX)
    return {"text": fallback, "blocks": blocks}
