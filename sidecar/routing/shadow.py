"""Shadow traffic: copies of a sample of client requests sent to a candidate model version.

This module owns the mirror: sampling, the bounded queue and workers that send the copies, the
comparison of the candidate's ("shadow's") answer with the primary's, and the windowed
agreement rate that healing policies read as ``shadow_agreement``. It forwards nothing to the
client and decides nothing about routing: the proxy calls two synchronous O(1) methods and
never waits for the shadow.

How the proxy uses it::

    copy = mirror.offer(method, target, headers, body)    # before or alongside the primary
    ...                                                   # forward to the primary as usual
    if copy is not None:
        copy.primary_answered(status, captured_body)      # body ≤ max_body_bytes, else None
        # or copy.primary_failed() when no upstream answered

:meth:`ShadowMirror.offer` draws the sample and, if the queue has room, enqueues the copy;
a worker sends it at once, concurrently with the primary. The shadow's answer is then held
until the primary's is reported (at most ``primary_wait_s``, at most ``max_pending`` answers
held), and the two are compared off the caller's path: by the worker when the primary was
first, by the mirror's comparator task otherwise. The answer is dropped after the comparison.

Comparison rules (``result``):

- the primary failed (``primary_failed()`` or a 5xx) or the shadow failed (5xx, connect error,
  reset, timeout): no comparison (counted as *uncompared*, see below);
- both 2xx: both bodies are read with the :class:`~mlwarden.middleware.payloads.PredictionReader`
  as JSON. Class labels agree when equal; numeric predictions agree when
  ``|a - b| <= abs_tol`` or ``|a - b| <= rel_tol * |a|`` (``a`` the primary's). A response
  with several predictions (a batch) is one comparison: it agrees only when every element
  agrees. Confidences are not compared (they say how sure the model is, not what it answered).
  ``incomparable``: a body that is not JSON or holds no prediction, or different numbers of
  predictions (or classes on one side only);
- otherwise the statuses decide: the same status agrees (both refused the input alike), a
  different one disagrees (e.g. 200 against 422).

``agreement_rate()`` is agree / (agree + disagree) over the last ``agreement_window``
comparisons no older than ``agreement_window_s``; ``None`` below ``min_comparisons``.
Incomparable answers do not count toward it.

Every accepted copy ends in exactly one of ``comparisons`` (agree, disagree, incomparable) or
``uncompared`` (:data:`UNCOMPARED_REASONS`); every sampled copy in exactly one request outcome
(:data:`SHADOW_OUTCOMES`).

Metrics (:class:`ShadowMetrics`; label values are configured target names and fixed words):

- ``mlwarden_shadow_requests_total{target,outcome}``: ``ok`` (answered below 500), ``error``
  (5xx, connect error, reset, malformed), ``timeout``, ``shed`` (sampled but not sent: queue
  full, target unavailable, mirror not running), ``dropped`` (accepted, then discarded when the
  mirror closed).
- ``mlwarden_shadow_comparisons_total{target,result}``: agree, disagree, incomparable.
- ``mlwarden_shadow_uncompared_total{target,reason}``: accepted copies not compared, by
  :data:`UNCOMPARED_REASONS`.
- ``mlwarden_shadow_duration_seconds{target}``: histogram of the shadow exchanges sent.
- ``mlwarden_shadow_agreement_ratio{target}``: gauge, :meth:`ShadowMirror.agreement_rate`
  read at scrape time (absent while below ``min_comparisons``).
- ``mlwarden_shadow_queue_depth{target}``: gauge, copies waiting for a worker.

Memory is bounded: ``max_queue`` copies waiting (each holding the request body, which the proxy
already bounds), ``max_concurrent`` in flight, ``max_pending`` answers held for comparison,
every captured body at most ``max_body_bytes``, windows of fixed size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlwarden.middleware.errors import ConfigError, PayloadError
from mlwarden.middleware.fastmetrics import FastCounter, FastFamilies, FastHistogram
from mlwarden.middleware.payloads import PredictionReader, Predictions
from mlwarden.sidecar.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

__all__ = [
    "COMPARISON_RESULTS",
    "SHADOW_DURATION_BUCKETS",
    "SHADOW_HEADER",
    "SHADOW_OUTCOMES",
    "UNCOMPARED_REASONS",
    "ShadowConfig",
    "ShadowCopy",
    "ShadowMetrics",
    "ShadowMirror",
    "compare_predictions",
]

log = logging.getLogger("mlwarden.sidecar.shadow")

Headers = list[tuple[bytes, bytes]]

#: What became of a sampled copy's request.
SHADOW_OUTCOMES = ("ok", "error", "timeout", "shed", "dropped")
#: The verdict of one comparison.
COMPARISON_RESULTS = ("agree", "disagree", "incomparable")
#: Why an accepted copy was not compared. ``shadow_failed``: the shadow errored or timed out;
#: ``primary_failed``: the primary reported a failure or a 5xx; ``too_large``: a 2xx body
#: above ``max_body_bytes`` (or not captured by the proxy); ``primary_missing``: the primary's
#: answer was not reported within ``primary_wait_s`` (or more than ``max_pending`` waited);
#: ``dropped``: the mirror closed first.
UNCOMPARED_REASONS = ("shadow_failed", "primary_failed", "too_large", "primary_missing", "dropped")
#: Sent on every copy so that the candidate can tell shadow traffic (no side effects, say).
SHADOW_HEADER = b"x-mlwarden-shadow"
#: Shadow exchanges: bounded by ``timeout_s`` (default 5 s).
SHADOW_DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

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
_SHADOW_HEADER_VALUE = b"1"

# States of either side of a copy.
_PENDING, _ANSWERED, _FAILED = 0, 1, 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowConfig:
    """How much traffic is mirrored to ``target`` and how its answers are compared.

    ``sample_percent`` of client requests (0 to 100) are copied; at most ``max_concurrent`` are in
    flight and ``max_queue`` wait (beyond: shed). Each copy is bounded by ``timeout_s``, its
    answer read up to ``max_body_bytes`` (larger: not compared). Numeric predictions agree
    within ``abs_tol`` or ``rel_tol`` (relative to the primary's value). The agreement rate is
    taken over the last ``agreement_window`` comparisons no older than ``agreement_window_s``,
    and only once there are ``min_comparisons``. A shadow answer waits at most
    ``primary_wait_s`` for the primary's, and at most ``max_pending`` answers wait at once.
    """

    target: str
    sample_percent: float
    max_concurrent: int = 4
    max_queue: int = 64
    timeout_s: float = 5.0
    max_body_bytes: int = 256 * 1024
    abs_tol: float = 1e-6
    rel_tol: float = 1e-3
    agreement_window: int = 1000
    agreement_window_s: float = 300.0
    min_comparisons: int = 20
    primary_wait_s: float = 60.0
    max_pending: int = 256

    def __post_init__(self) -> None:
        problems: list[str] = []

        def number(key: str, value: object) -> bool:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                problems.append(f"{key}={value!r}: must be a finite number")
                return False
            return True

        def integer(key: str, value: object, minimum: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                problems.append(f"{key}={value!r}: must be an integer of at least {minimum}")

        if not isinstance(self.target, str) or not self.target:
            problems.append(f"target={self.target!r}: must be a non-empty upstream name")
        if number("sample_percent", self.sample_percent) and not (0 <= self.sample_percent <= 100):
            problems.append(f"sample_percent={self.sample_percent!r}: must be within 0..100")
        for key in (
            "max_concurrent",
            "max_queue",
            "max_body_bytes",
            "agreement_window",
            "min_comparisons",
            "max_pending",
        ):
            integer(key, getattr(self, key), 1)
        for key in ("timeout_s", "agreement_window_s", "primary_wait_s"):
            value = getattr(self, key)
            if number(key, value) and not value > 0:
                problems.append(f"{key}={value!r}: must be above 0")
        for key in ("abs_tol", "rel_tol"):
            value = getattr(self, key)
            if number(key, value) and value < 0:
                problems.append(f"{key}={value!r}: must be 0 or more")
        if (
            isinstance(self.min_comparisons, int)
            and isinstance(self.agreement_window, int)
            and self.min_comparisons > self.agreement_window
        ):
            problems.append(
                f"min_comparisons={self.min_comparisons!r}: must not exceed "
                f"agreement_window={self.agreement_window!r}"
            )
        if problems:
            raise ConfigError(problems)


def compare_predictions(
    primary: Predictions, shadow: Predictions, *, abs_tol: float, rel_tol: float
) -> str:
    """``agree``, ``disagree`` or ``incomparable``: the rules in the module docstring."""
    if not (primary.classes or primary.values) or not (shadow.classes or shadow.values):
        return "incomparable"
    if len(primary.classes) != len(shadow.classes) or len(primary.values) != len(shadow.values):
        return "incomparable"
    if primary.classes != shadow.classes:
        return "disagree"
    for a, b in zip(primary.values, shadow.values, strict=True):
        diff = abs(a - b)
        if diff > abs_tol and diff > rel_tol * abs(a):
            return "disagree"
    return "agree"


class _AgreementWindow:
    """The last ``size`` agree/disagree verdicts no older than ``max_age_s``.

    Locked: the comparator appends on the event loop while a scrape may read from another
    thread.
    """

    __slots__ = ("_agreed", "_clock", "_entries", "_lock", "_max_age_s", "_size")

    def __init__(self, size: int, max_age_s: float, clock: Callable[[], float]) -> None:
        self._size = size
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: deque[tuple[float, bool]] = deque()
        self._agreed = 0
        self._lock = threading.Lock()

    def add(self, agreed: bool) -> None:
        now = self._clock()
        with self._lock:
            if len(self._entries) >= self._size:
                self._agreed -= self._entries.popleft()[1]
            self._entries.append((now, agreed))
            self._agreed += agreed
            self._evict(now)

    def counts(self) -> tuple[int, int]:
        """(agreed, total) within the window."""
        with self._lock:
            self._evict(self._clock())
            return self._agreed, len(self._entries)

    def _evict(self, now: float) -> None:
        entries = self._entries
        oldest_allowed = now - self._max_age_s
        while entries and entries[0][0] < oldest_allowed:
            self._agreed -= entries.popleft()[1]


class ShadowCopy:
    """One sampled request on its way to the shadow; the proxy reports the primary's answer.

    Both reporting methods are synchronous, O(1), idempotent (the first report wins) and never
    raise. ``outcome`` (one of :data:`SHADOW_OUTCOMES`) is set once the shadow exchange ended;
    ``result`` (one of :data:`COMPARISON_RESULTS` or :data:`UNCOMPARED_REASONS`) once the copy
    is settled.
    """

    __slots__ = (
        "_mirror",
        "_primary",
        "_primary_body",
        "_primary_status",
        "_shadow",
        "_shadow_body",
        "_shadow_status",
        "body",
        "headers",
        "method",
        "outcome",
        "result",
        "target",
    )

    def __init__(
        self, mirror: ShadowMirror, method: str, target: bytes, headers: Headers, body: bytes
    ) -> None:
        self._mirror = mirror
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self._primary = _PENDING
        self._primary_status = 0
        self._primary_body: bytes | None = None
        self._shadow = _PENDING
        self._shadow_status = 0
        self._shadow_body: bytes | None = None
        self.outcome: str | None = None
        self.result: str | None = None

    def __repr__(self) -> str:
        return (
            f"<ShadowCopy {self.method} {self.target!r} outcome={self.outcome} "
            f"result={self.result}>"
        )

    @property
    def settled(self) -> bool:
        return self.result is not None

    def primary_answered(self, status: int, body: bytes | None) -> None:
        """The primary answered ``status``; ``body`` as captured, None if not (too large)."""
        if self._primary != _PENDING or self.result is not None:
            return
        try:
            self._primary_status = int(status)
            if body is not None and len(body) <= self._mirror.config.max_body_bytes:
                self._primary_body = body
            self._primary = _ANSWERED
            if self._shadow != _PENDING:
                self._mirror._both_in(self)
        except Exception:  # never into the proxy
            log.exception("shadow: reporting the primary's answer failed")

    def primary_failed(self) -> None:
        """No upstream answered the client's request: nothing to compare with."""
        if self._primary != _PENDING or self.result is not None:
            return
        try:
            self._primary = _FAILED
            if self._shadow != _PENDING:
                self._mirror._both_in(self)
        except Exception:
            log.exception("shadow: reporting the primary's failure failed")


class ShadowMirror:
    """Mirrors a sample of requests to ``config.target`` through ``pool``; see the module doc.

    ``reader`` reads predictions from both answers (default: the standard formats).
    ``is_available(target)``, when given, is asked on each sampled request: False sheds the
    copy (the proxy passes its health verdict). ``metrics`` records the shadow's metrics
    (none when omitted; :meth:`snapshot` counts either way). ``rng`` draws the sample (seed it
    in tests), ``clock`` (monotonic seconds) times exchanges, ages windows and held answers.

    Lifecycle: :meth:`start` on the running loop (or ``async with``), :meth:`aclose` at the
    end. The pool belongs to the caller and is not closed here; give the shadow a pool of its
    own (``max_connections >= max_concurrent``) so that it never competes with client traffic.
    """

    def __init__(
        self,
        pool: UpstreamPool,
        config: ShadowConfig,
        *,
        reader: PredictionReader | None = None,
        is_available: Callable[[str], bool] | None = None,
        metrics: ShadowMetrics | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.config = config
        self.target = config.target
        self._reader = reader if reader is not None else PredictionReader()
        self._is_available = is_available
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._percent = float(config.sample_percent)
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=config.max_queue)
        self._ready: deque[ShadowCopy] = deque()  # both answers in, for the comparator
        self._ready_wakeup: asyncio.Event = asyncio.Event()
        self._held: dict[ShadowCopy, float] = {}  # shadow answered, primary awaited: since
        self._active = 0  # accepted copies neither settled nor held
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._closed = False
        self._in_flight = 0
        self._window = _AgreementWindow(config.agreement_window, config.agreement_window_s, clock)
        self._requests = dict.fromkeys(SHADOW_OUTCOMES, 0)
        self._results = dict.fromkeys(COMPARISON_RESULTS + UNCOMPARED_REASONS, 0)
        self._sampled = 0
        self._last_disagreement: dict[str, Any] | None = None
        self._metrics = metrics
        self._m_requests: dict[str, Any] = {}
        self._m_results: dict[str, Any] = {}
        self._m_duration: Any = None
        if metrics is not None:
            metrics.attach(self)
            self._m_requests = {o: metrics.requests.labels(self.target, o) for o in SHADOW_OUTCOMES}
            self._m_results = {
                r: metrics.comparisons.labels(self.target, r) for r in COMPARISON_RESULTS
            }
            self._m_results.update(
                {r: metrics.uncompared.labels(self.target, r) for r in UNCOMPARED_REASONS}
            )
            self._m_duration = metrics.duration.labels(self.target)

    def __repr__(self) -> str:
        return (
            f"ShadowMirror(target={self.target!r}, sample_percent={self._percent}, "
            f"running={self._running}, queued={self._queue.qsize()}, "
            f"in_flight={self._in_flight})"
        )

    # -- the proxy's side ----------------------------------------------------------------------

    @property
    def sample_percent(self) -> float:
        """The share of requests mirrored; settable at run time (an admin action, 0 stops)."""
        return self._percent

    @sample_percent.setter
    def sample_percent(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value <= 100):
            raise ValueError(f"sample_percent={value!r}: must be a number within 0..100")
        self._percent = float(value)

    def offer(self, method: str, target: bytes, headers: Headers, body: bytes) -> ShadowCopy | None:
        """Sample this request; if taken and there is room, queue a copy and return it.

        Synchronous, O(1) (one shallow copy of the header list) and never raises: a shed copy
        (queue full, target unavailable, mirror not running) is counted and ``None`` returned,
        as for a request not sampled.
        """
        try:
            percent = self._percent
            if percent <= 0.0 or (percent < 100.0 and self._rng.random() * 100.0 >= percent):
                return None
            self._sampled += 1
            if not self._running or (
                self._is_available is not None and not self._is_available(self.target)
            ):
                self._count_request("shed")
                return None
            copy = ShadowCopy(self, method, target, list(headers), body)
            try:
                self._queue.put_nowait(copy)
            except asyncio.QueueFull:
                self._count_request("shed")
                return None
            self._active += 1
            self._idle.clear()
            return copy
        except Exception:
            log.exception("shadow %s: offer failed; the copy is shed", self.target)
            with contextlib.suppress(Exception):
                self._count_request("shed")
            return None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start ``max_concurrent`` workers and the comparator on the running loop."""
        if self._closed:
            raise RuntimeError("the shadow mirror is closed")
        if self._running:
            return
        loop = asyncio.get_running_loop()
        name = f"mlwarden-shadow-{self.target}"
        self._tasks = [
            loop.create_task(self._worker(), name=f"{name}-worker-{i}")
            for i in range(self.config.max_concurrent)
        ]
        self._tasks.append(loop.create_task(self._comparator(), name=f"{name}-comparator"))
        self._running = True

    async def join(self) -> None:
        """Wait until every accepted copy was sent and every comparison that can run has run
        (answers still waiting for their primary are not waited for)."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Stop the workers (cancelling copies in flight), drop the queue; all counted."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        while not self._queue.empty():
            copy = self._queue.get_nowait()
            self._queue.task_done()
            self._drop(copy)
            self._done_active()
        while self._ready:
            self._drop(self._ready.popleft())
            self._done_active()
        held, self._held = self._held, {}
        for copy in held:
            self._settle(copy, "dropped")
        if self._metrics is not None:
            self._metrics.detach(self)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- what policies and the admin read ------------------------------------------------------

    def agreement_rate(self) -> float | None:
        """agree / (agree + disagree) over the window; None below ``min_comparisons``."""
        agreed, total = self._window.counts()
        if total < self.config.min_comparisons or total == 0:
            return None
        return agreed / total

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def snapshot(self) -> dict[str, Any]:
        """The mirror's state for ``/-/status`` (JSON-ready)."""
        agreed, total = self._window.counts()
        cfg = self.config
        return {
            "target": self.target,
            "running": self._running,
            "sample_percent": self._percent,
            "sampled": self._sampled,
            "queue_depth": self._queue.qsize(),
            "max_queue": cfg.max_queue,
            "in_flight": self._in_flight,
            "max_concurrent": cfg.max_concurrent,
            "awaiting_primary": len(self._held),
            "requests": dict(self._requests),
            "comparisons": {r: self._results[r] for r in COMPARISON_RESULTS},
            "uncompared": {r: self._results[r] for r in UNCOMPARED_REASONS},
            "agreement_rate": self.agreement_rate(),
            "window": {
                "comparisons": total,
                "agreed": agreed,
                "max_comparisons": cfg.agreement_window,
                "max_age_s": cfg.agreement_window_s,
                "min_comparisons": cfg.min_comparisons,
            },
            "last_disagreement": self._last_disagreement,
        }

    # -- workers -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        queue = self._queue
        while True:
            copy = await queue.get()
            self._in_flight += 1
            try:
                await self._handle(copy)
            except asyncio.CancelledError:
                self._drop(copy)
                raise
            except Exception:
                log.exception("shadow %s: handling a copy failed", self.target)
                self._drop(copy)
            finally:
                self._in_flight -= 1
                queue.task_done()
                self._done_active()

    async def _handle(self, copy: ShadowCopy) -> None:
        started = self._clock()
        outcome, status, body = await self._send(copy)
        copy.body = b""  # the request is no longer needed; do not hold it while waiting
        copy.headers = []
        if self._m_duration is not None:
            self._m_duration.observe(self._clock() - started)
        self._count_request(outcome)
        copy.outcome = outcome
        if outcome != "ok":
            copy._shadow = _FAILED
            self._settle(copy, "shadow_failed")
            return
        copy._shadow = _ANSWERED
        copy._shadow_status = status
        copy._shadow_body = body
        if copy._primary != _PENDING:
            self._compare(copy)
        else:
            self._hold(copy)

    async def _send(self, copy: ShadowCopy) -> tuple[str, int, bytes | None]:
        """(outcome, status, body or None when too large); never raises but cancellation."""
        cfg = self.config
        named = {
            t.strip().lower()
            for n, v in copy.headers
            if n.lower() == b"connection"
            for t in v.split(b",")
        }
        headers = [
            (n, v)
            for n, v in copy.headers
            if (lname := n.lower()) not in _DROPPED_HEADERS
            and lname not in named
            and not lname.startswith(b"proxy-")
        ]
        headers.append((SHADOW_HEADER, _SHADOW_HEADER_VALUE))
        try:
            async with asyncio.timeout(cfg.timeout_s):
                response = await self.pool.request(
                    copy.method, copy.target, headers, copy.body, timeout_s=cfg.timeout_s
                )
                try:
                    status = response.status
                    if status >= 500:
                        return "error", status, None
                    return "ok", status, await self._read_capped(response)
                finally:
                    await response.aclose()
        except (TimeoutError, UpstreamTimeout):
            return "timeout", 0, None
        except UpstreamError as exc:
            log.debug("shadow %s: %s", self.target, exc)
            return "error", 0, None
        except Exception:  # a bad header (ValueError), a pool closed under us...
            log.debug("shadow %s: exchange failed", self.target, exc_info=True)
            return "error", 0, None

    async def _read_capped(self, response: Any) -> bytes | None:
        limit = self.config.max_body_bytes
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

    # -- holding answers until both are in -----------------------------------------------------

    def _hold(self, copy: ShadowCopy) -> None:
        now = self._clock()
        held = self._held
        oldest_allowed = now - self.config.primary_wait_s
        while held:
            first = next(iter(held))
            if held[first] >= oldest_allowed and len(held) + len(self._ready) < (
                self.config.max_pending
            ):
                break
            del held[first]
            self._settle(first, "primary_missing")
        held[copy] = now

    def _both_in(self, copy: ShadowCopy) -> None:
        """A held copy got its primary's answer (called from the proxy): compare it later."""
        if self._held.pop(copy, None) is None:
            return  # not held: its worker compares it, or it was already settled
        self._active += 1
        self._idle.clear()
        self._ready.append(copy)
        self._ready_wakeup.set()

    async def _comparator(self) -> None:
        ready = self._ready
        wakeup = self._ready_wakeup
        while True:
            # Wake up at least every primary_wait_s to settle answers whose primary never came.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.primary_wait_s):
                    await wakeup.wait()
            wakeup.clear()
            while ready:
                copy = ready.popleft()
                try:
                    self._compare(copy)
                except Exception:
                    log.exception("shadow %s: comparing failed", self.target)
                    self._settle(copy, "dropped")
                self._done_active()
            self._expire_held()

    def _expire_held(self) -> None:
        held = self._held
        oldest_allowed = self._clock() - self.config.primary_wait_s
        while held:
            first = next(iter(held))
            if held[first] >= oldest_allowed:
                return
            del held[first]
            self._settle(first, "primary_missing")

    # -- comparing -----------------------------------------------------------------------------

    def _compare(self, copy: ShadowCopy) -> None:
        """Both answers are in: settle the copy with its verdict."""
        if copy._primary == _FAILED or copy._primary_status >= 500:
            self._settle(copy, "primary_failed")
            return
        p_status, s_status = copy._primary_status, copy._shadow_status
        if 200 <= p_status < 300 and 200 <= s_status < 300:
            p_body, s_body = copy._primary_body, copy._shadow_body
            if p_body is None or s_body is None:
                self._settle(copy, "too_large")
                return
            cfg = self.config
            try:
                primary = self._reader.read(p_body, None)
                shadow = self._reader.read(s_body, None)
            except PayloadError:
                result = "incomparable"
            else:
                result = compare_predictions(
                    primary, shadow, abs_tol=cfg.abs_tol, rel_tol=cfg.rel_tol
                )
                if result == "disagree":
                    self._last_disagreement = {
                        "primary": _summary(primary),
                        "shadow": _summary(shadow),
                    }
        elif p_status == s_status:
            result = "agree"
        else:
            result = "disagree"
            self._last_disagreement = {
                "primary": {"status": p_status},
                "shadow": {"status": s_status},
            }
        self._settle(copy, result)

    # -- counting ------------------------------------------------------------------------------

    def _settle(self, copy: ShadowCopy, result: str) -> None:
        if copy.result is not None:
            return
        copy.result = result
        copy._primary_body = copy._shadow_body = None
        self._results[result] += 1
        counter = self._m_results.get(result)
        if counter is not None:
            counter.inc()
        if result == "agree" or result == "disagree":
            self._window.add(result == "agree")

    def _drop(self, copy: ShadowCopy) -> None:
        """Discard an accepted copy (mirror closing, or a bug in handling it)."""
        if copy.outcome is None:
            copy.outcome = "dropped"
            self._count_request("dropped")
        self._settle(copy, "dropped")

    def _done_active(self) -> None:
        self._active -= 1
        if self._active <= 0:
            self._active = 0
            self._idle.set()

    def _count_request(self, outcome: str) -> None:
        self._requests[outcome] += 1
        counter = self._m_requests.get(outcome)
        if counter is not None:
            counter.inc()


def _summary(predictions: Predictions, limit: int = 10) -> dict[str, Any]:
    """The first few predictions, for the admin's view of the last disagreement."""
    out: dict[str, Any] = {}
    if predictions.classes:
        out["classes"] = predictions.classes[:limit]
    if predictions.values:
        out["values"] = predictions.values[:limit]
    out["count"] = predictions.count
    return out


class _ShadowGauges(Collector):
    """The agreement ratio and queue depth of each attached mirror, read at scrape time."""

    def __init__(self, owner: ShadowMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily("mlwarden_shadow_agreement_ratio", "", labels=["target"]),
            GaugeMetricFamily("mlwarden_shadow_queue_depth", "", labels=["target"]),
        ]

    def collect(self) -> Iterator[Metric]:
        ratio = GaugeMetricFamily(
            "mlwarden_shadow_agreement_ratio",
            "Share of compared shadow answers that agreed with the primary's, over the "
            "recent window (absent below the minimum number of comparisons).",
            labels=["target"],
        )
        depth = GaugeMetricFamily(
            "mlwarden_shadow_queue_depth", "Shadow copies waiting for a worker.", labels=["target"]
        )
        for target, mirror in self._owner.mirrors():
            rate = mirror.agreement_rate()
            if rate is not None:
                ratio.add_metric([target], rate)
            depth.add_metric([target], float(mirror.queue_depth))
        yield ratio
        yield depth


class ShadowMetrics:
    """The shadow metrics in ``registry`` (one instance per registry), for every mirror.

    A mirror given these metrics attaches itself; one mirror per target at a time (a second
    one is refused until the first is closed).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        families = FastFamilies()
        self.requests = FastCounter(
            "mlwarden_shadow_requests_total",
            "Requests sampled for the shadow target, by outcome: ok, error, timeout, shed "
            "(not sent), dropped (discarded at shut-down).",
            ("target", "outcome"),
        )
        self.comparisons = FastCounter(
            "mlwarden_shadow_comparisons_total",
            "Shadow answers compared with the primary's: agree, disagree, incomparable.",
            ("target", "result"),
        )
        self.uncompared = FastCounter(
            "mlwarden_shadow_uncompared_total",
            "Shadow copies sent but not compared, by reason: shadow_failed, primary_failed, "
            "too_large, primary_missing, dropped.",
            ("target", "reason"),
        )
        self.duration = FastHistogram(
            "mlwarden_shadow_duration_seconds",
            "Time of each shadow exchange.",
            ("target",),
            SHADOW_DURATION_BUCKETS,
        )
        for family in (self.requests, self.comparisons, self.uncompared, self.duration):
            families.add(family)
        self._mirrors: dict[str, ShadowMirror] = {}
        self._lock = threading.Lock()
        registry.register(families)
        registry.register(_ShadowGauges(self))

    def __repr__(self) -> str:
        return f"ShadowMetrics(targets={sorted(self._mirrors)!r})"

    def attach(self, mirror: ShadowMirror) -> None:
        with self._lock:
            current = self._mirrors.get(mirror.target)
            if current is not None and current is not mirror:
                raise ValueError(f"a shadow mirror for {mirror.target!r} is already attached")
            self._mirrors[mirror.target] = mirror

    def detach(self, mirror: ShadowMirror) -> None:
        with self._lock:
            if self._mirrors.get(mirror.target) is mirror:
                del self._mirrors[mirror.target]

    def mirrors(self) -> list[tuple[str, ShadowMirror]]:
        with self._lock:
            return list(self._mirrors.items())
