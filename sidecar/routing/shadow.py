"""Shadow traffic: the mirror that copies a sample of client requests to a candidate version.

This module owns the mirror: sampling, the bounded queue and the workers that send the copies,
holding the shadow's answer until the primary's is in, and settling each copy exactly once.
It forwards nothing to the client and decides nothing about routing: the proxy calls two
synchronous O(1) methods and never waits for the shadow. Its neighbours own the rest:
:mod:`~mlwarden.sidecar.routing.shadow_exchange` what one copy sends and reads,
:mod:`~mlwarden.sidecar.routing.shadow_comparison` how two answers are judged and the agreement
rate, :mod:`~mlwarden.sidecar.routing.shadow_metrics` the counts and the Prometheus metrics.

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

No comparison when the primary failed (``primary_failed()`` or a 5xx) or the shadow failed
(5xx, connect error, reset, timeout): counted as *uncompared*. Otherwise
:func:`~mlwarden.sidecar.routing.shadow_comparison.judge` gives the verdict.
``agreement_rate()`` is agree / (agree + disagree) over the last ``agreement_window``
comparisons no older than ``agreement_window_s``; ``None`` below ``min_comparisons``.

Every accepted copy ends in exactly one of ``comparisons`` (agree, disagree, incomparable) or
``uncompared`` (:data:`~mlwarden.sidecar.routing.shadow_metrics.UNCOMPARED_REASONS`); every
sampled copy in exactly one request outcome
(:data:`~mlwarden.sidecar.routing.shadow_metrics.SHADOW_OUTCOMES`), counted by its
:class:`~mlwarden.sidecar.routing.shadow_metrics.ShadowTally`.

Memory is bounded: ``max_queue`` copies waiting (each holding the request body, which the proxy
already bounds), ``max_concurrent`` in flight, ``max_pending`` answers held for comparison,
every captured body at most ``max_body_bytes``, windows of fixed size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from mlwarden.middleware.predictions import PredictionReader
from mlwarden.sidecar.routing.shadow_comparison import AgreementWindow, judge
from mlwarden.sidecar.routing.shadow_exchange import Headers, send_copy
from mlwarden.sidecar.routing.shadow_metrics import ShadowTally

if TYPE_CHECKING:
    from mlwarden.sidecar.config import ShadowTrafficConfig
    from mlwarden.sidecar.routing.shadow_metrics import ShadowMetrics
    from mlwarden.sidecar.upstream import UpstreamPool

__all__ = ["ShadowCopy", "ShadowMirror"]

log = logging.getLogger("mlwarden.sidecar.shadow")

# States of either side of a copy.
_PENDING, _ANSWERED, _FAILED = 0, 1, 2


class ShadowCopy:
    """One sampled request on its way to the shadow; the proxy reports the primary's answer.

    Both reporting methods are synchronous, O(1), idempotent (the first report wins) and never
    raise. ``outcome`` (one of ``SHADOW_OUTCOMES``) is set once the shadow exchange ended;
    ``result`` (one of ``COMPARISON_RESULTS`` or ``UNCOMPARED_REASONS``) once the copy is
    settled.
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
            if body is not None and len(body) <= self._mirror._max_body_bytes:
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
    """Mirrors a sample of requests to ``target`` through ``pool``; see the module doc.

    Built from the validated ``shadow:`` block by :meth:`from_config`; the keyword arguments
    are that block's keys (``sample_percent`` to ``rel_tol``, meaning and checks there) and
    the mirror's own bounds, not configurable: ``agreement_window`` comparisons no older than
    ``agreement_window_s`` make the agreement rate, none below ``min_comparisons``; a shadow
    answer waits at most ``primary_wait_s`` for the primary's, at most ``max_pending`` at once.

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
        *,
        target: str,
        sample_percent: float,
        max_concurrent: int,
        max_queue: int,
        timeout_s: float,
        max_body_bytes: int,
        abs_tol: float,
        rel_tol: float,
        agreement_window: int = 1000,
        agreement_window_s: float = 300.0,
        min_comparisons: int = 20,
        primary_wait_s: float = 60.0,
        max_pending: int = 256,
        reader: PredictionReader | None = None,
        is_available: Callable[[str], bool] | None = None,
        metrics: ShadowMetrics | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Not configuration keys (the block's are validated there): bounds a caller might get
        # wrong, such as a minimum the window can never reach.
        if not (1 <= min_comparisons <= agreement_window and max_pending >= 1):
            raise ValueError(
                f"min_comparisons={min_comparisons!r}, agreement_window={agreement_window!r}, "
                f"max_pending={max_pending!r}: need 1 <= min_comparisons <= agreement_window "
                "and max_pending >= 1"
            )
        if not (agreement_window_s > 0 and primary_wait_s > 0):
            raise ValueError(
                f"agreement_window_s={agreement_window_s!r}, primary_wait_s={primary_wait_s!r}: "
                "must be above 0"
            )
        self.pool = pool
        self.target = target
        self._max_concurrent = max_concurrent
        self._max_queue = max_queue
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._abs_tol = abs_tol
        self._rel_tol = rel_tol
        self._primary_wait_s = primary_wait_s
        self._max_pending = max_pending
        self._reader = reader if reader is not None else PredictionReader()
        self._is_available = is_available
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._percent = float(sample_percent)
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=max_queue)
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
        self._tally = ShadowTally(
            target,
            metrics,
            window=AgreementWindow(agreement_window, agreement_window_s, clock),
            min_comparisons=min_comparisons,
        )
        self._metrics = metrics
        if metrics is not None:
            metrics.attach(self)

    @classmethod
    def from_config(
        cls,
        block: ShadowTrafficConfig,
        pool: UpstreamPool,
        *,
        reader: PredictionReader | None = None,
        is_available: Callable[[str], bool] | None = None,
        metrics: ShadowMetrics | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ShadowMirror:
        """The mirror of the validated ``shadow:`` block, sending through ``pool``."""
        return cls(
            pool,
            target=block.target,
            sample_percent=block.sample_percent,
            max_concurrent=block.max_concurrent,
            max_queue=block.max_queue,
            timeout_s=block.timeout_s,
            max_body_bytes=block.max_body_bytes,
            abs_tol=block.abs_tol,
            rel_tol=block.rel_tol,
            reader=reader,
            is_available=is_available,
            metrics=metrics,
            rng=rng,
            clock=clock,
        )

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
            self._tally.sampled += 1
            if not self._running or (
                self._is_available is not None and not self._is_available(self.target)
            ):
                self._tally.request("shed")
                return None
            copy = ShadowCopy(self, method, target, list(headers), body)
            try:
                self._queue.put_nowait(copy)
            except asyncio.QueueFull:
                self._tally.request("shed")
                return None
            self._active += 1
            self._idle.clear()
            return copy
        except Exception:
            log.exception("shadow %s: offer failed; the copy is shed", self.target)
            with contextlib.suppress(Exception):
                self._tally.request("shed")
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
            for i in range(self._max_concurrent)
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
        return self._tally.agreement_rate()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def snapshot(self) -> dict[str, Any]:
        """The mirror's state for ``/-/status`` (JSON-ready)."""
        return {
            "target": self.target,
            "running": self._running,
            "sample_percent": self._percent,
            "sampled": self._tally.sampled,
            "queue_depth": self._queue.qsize(),
            "max_queue": self._max_queue,
            "in_flight": self._in_flight,
            "max_concurrent": self._max_concurrent,
            "awaiting_primary": len(self._held),
            **self._tally.snapshot(),
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
        outcome, status, body = await send_copy(
            self.pool,
            copy.method,
            copy.target,
            copy.headers,
            copy.body,
            timeout_s=self._timeout_s,
            max_body_bytes=self._max_body_bytes,
            name=self.target,
        )
        copy.body = b""  # the request is no longer needed; do not hold it while waiting
        copy.headers = []
        self._tally.exchange_took(self._clock() - started)
        self._tally.request(outcome)
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

    # -- holding answers until both are in -----------------------------------------------------

    def _hold(self, copy: ShadowCopy) -> None:
        now = self._clock()
        held = self._held
        oldest_allowed = now - self._primary_wait_s
        while held:
            first = next(iter(held))
            if held[first] >= oldest_allowed and len(held) + len(self._ready) < self._max_pending:
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
                async with asyncio.timeout(self._primary_wait_s):
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
        oldest_allowed = self._clock() - self._primary_wait_s
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
        result, disagreement = judge(
            copy._primary_status,
            copy._primary_body,
            copy._shadow_status,
            copy._shadow_body,
            reader=self._reader,
            abs_tol=self._abs_tol,
            rel_tol=self._rel_tol,
        )
        if disagreement is not None:
            self._tally.last_disagreement = disagreement
        self._settle(copy, result)

    # -- counting ------------------------------------------------------------------------------

    def _settle(self, copy: ShadowCopy, result: str) -> None:
        if copy.result is not None:
            return
        copy.result = result
        copy._primary_body = copy._shadow_body = None
        self._tally.result(result)

    def _drop(self, copy: ShadowCopy) -> None:
        """Discard an accepted copy (mirror closing, or a bug in handling it)."""
        if copy.outcome is None:
            copy.outcome = "dropped"
            self._tally.request("dropped")
        self._settle(copy, "dropped")

    def _done_active(self) -> None:
        self._active -= 1
        if self._active <= 0:
            self._active = 0
            self._idle.set()
