"""The healing loop's outgoing webhooks: a bounded, never-blocking queue and its sender.

Healing policies fire webhooks (a JSON body POSTed to a retraining pipeline's REST API) and
escalations (a Slack-compatible body, built by
:func:`~mlwarden.sidecar.healing.slack_messages.slack_body`, POSTed to an incoming-webhook URL).
Both go through one :class:`WebhookSender`, which owns the queue; its neighbours own how one
delivery is tried and retried (:mod:`~mlwarden.sidecar.healing.webhook_delivery`) and what of a
URL may be logged (:mod:`~mlwarden.sidecar.healing.webhook_redaction`).

- :meth:`WebhookSender.send` is synchronous and never blocks or raises: the body is encoded to
  JSON at once (so later changes to the caller's mapping cannot leak into it) and queued. A
  full queue, a closed sender, a body that is not JSON or is above ``max_body_bytes``, or a URL
  that is not ``http(s)://host/...`` makes it return ``False`` and count why (:meth:`stats`).
  A healing action must never wait on, or fail because of, a notification.
- One background task delivers the queue in order: ``POST`` with ``content-type:
  application/json``, ``user-agent: mlwarden-sidecar`` and ``x-mlwarden-delivery-id`` (the
  same on every attempt of one delivery, so that receivers can drop the duplicates that
  at-least-once delivery implies), retried as
  :func:`~mlwarden.sidecar.healing.webhook_delivery.deliver` says.
- Every accepted delivery gets exactly one
  :class:`~mlwarden.sidecar.healing.webhook_delivery.WebhookResult`, passed to ``on_result``:
  delivered, failed, or dropped at shutdown (``error="dropped"``). :meth:`WebhookSender.aclose`
  gives the queue ``timeout_s`` of grace, then cancels what is left.

Only redacted URLs (:func:`~mlwarden.sidecar.healing.webhook_redaction.redact_url`) reach a
log line or a result; error texts carry exception class names, never exception messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpx

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.healing.slack_messages import slack_body
from mlwarden.sidecar.healing.webhook_delivery import (
    DEFAULT_RETRY_STATUSES,
    Delivery,
    DeliveryRules,
    WebhookResult,
    deliver,
    prepare,
    result_of,
)
from mlwarden.sidecar.healing.webhook_redaction import install_httpx_filter, redact_url
from mlwarden.sidecar.resilience.retry import ExponentialJitterBackoff

__all__ = ["MAX_BODY_BYTES", "WebhookSender", "slack_body"]

log = logging.getLogger("mlwarden.sidecar.webhooks")

MAX_BODY_BYTES = 256 * 1024

# slack_body stays importable from here: the escalation (healing/policies.py) imports it so.


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
        self._rules = DeliveryRules(
            timeout_s=self.timeout_s,
            max_attempts=max_attempts,
            backoff=self.backoff,
            retry_statuses=statuses,
        )
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
        self._queue: deque[Delivery] = deque()
        self._lock = threading.Lock()  # queue and counters; send() may come from any thread
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._current: Delivery | None = None
        self._counts = dict.fromkeys(
            ("sent_ok", "failed", "shed", "rejected", "dropped", "retries"), 0
        )
        install_httpx_filter()

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
            delivery = prepare(name, url, body, headers, max_body_bytes=self.max_body_bytes)
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

    def _count_retry(self) -> None:
        self._count("retries")

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
                result = await deliver(
                    delivery,
                    self._client,
                    self._rules,
                    clock=self._clock,
                    wall_clock=self._wall_clock,
                    sleep=self._sleep,
                    on_retry=self._count_retry,
                )
            except asyncio.CancelledError:
                self._drop(delivery)
                raise
            except Exception as exc:  # a bug here must not stop later deliveries
                log.error("webhook %s: delivery failed unexpectedly", delivery.name, exc_info=True)
                result = self._result(delivery, ok=False, error=type(exc).__name__)
            finally:
                self._current = None
            self._finish(result)

    def _result(self, d: Delivery, *, ok: bool, error: str | None) -> WebhookResult:
        return result_of(d, ok=ok, error=error, clock=self._clock)

    def _drop(self, d: Delivery) -> None:
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
