"""Background shipping of feature statistics: a bounded buffer and one writer thread.

:class:`InfluxShipper` owns the path from a :class:`~mlwarden.middleware.drift.DriftReport` to
InfluxDB: its points (:mod:`~mlwarden.middleware.influx.lines`) are held in a bounded buffer
and written in the background (:mod:`~mlwarden.middleware.influx.client`) without ever
blocking the event loop or a request.

How writes behave:

- One write at a time, in a dedicated thread, through ``influxdb_client``'s synchronous
  WriteApi (no batching threads of its own, no retries of its own: ``retries=False``), with
  the client's timeout set from ``timeout_s``. The awaiting side also gives up after
  ``timeout_s`` plus a grace period, so that even a hang the socket timeout cannot see (DNS)
  cannot stall ``flush``; the thread's result is still accounted for when it arrives.
- Connection errors, timeouts and every HTTP error other than 400/422 keep the points buffered
  for the next interval and count ``influx_write_errors``; a warning is logged at most once a
  minute. 400/422 mean the points themselves are bad: that batch is dropped and counted as
  ``influx_points_dropped{reason="rejected"}``.
- The buffer holds at most ``max_buffer_points`` points, the batch being written included;
  when it is full the oldest buffered points make room and are counted as
  ``reason="buffer_full"``. Points still buffered when the shipper closes are counted as
  ``reason="shutdown"``.
- ``influxdb_client`` is imported in the writer thread on the first write: the import takes
  about half a second, which a model server should not spend on its event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from mlwarden.middleware.drift import DriftReport
from mlwarden.middleware.health_report import InfluxStatus
from mlwarden.middleware.influx.client import (
    REJECTED_STATUSES,
    InfluxWriteClient,
    describe,
    status_of,
)
from mlwarden.middleware.influx.lines import LineBuilder
from mlwarden.middleware.influx.settings import InfluxSettings
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.middleware.throttle import Throttle

__all__ = ["InfluxShipper"]

log = logging.getLogger("mlwarden.influx")

_LOG_EVERY_S = 60.0
# How much longer than the client's own timeout the event loop waits for a write.
_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class _Outcome:
    duration_s: float
    error: BaseException | None = None


class InfluxShipper:
    """Ships drift reports as points to InfluxDB from a bounded buffer, in the background.

    ``submit`` is called on the event loop and only appends to the buffer; ``run`` (its own
    task) writes a batch every ``interval_s``; ``aclose`` stops it after one last bounded
    flush. All buffer bookkeeping happens on the event loop; only the HTTP write runs in the
    shipper's single writer thread.
    """

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        model: str,
        version: str,
        metrics: MonitorMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.model = model
        self.version = version
        self._clock = clock
        self._lines = LineBuilder(
            settings.measurement, settings.summary_measurement, model, version
        )
        self._buffer: deque[str] = deque()
        self._inflight = 0
        self._inflight_fut: asyncio.Future[_Outcome] | None = None
        self._lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

        self._written = metrics.influx_points_written.labels(model, version)
        self._dropped_full = metrics.influx_points_dropped.labels(model, version, "buffer_full")
        self._dropped_rejected = metrics.influx_points_dropped.labels(model, version, "rejected")
        self._dropped_shutdown = metrics.influx_points_dropped.labels(model, version, "shutdown")
        self._errors = metrics.influx_write_errors.labels(model, version)
        self._buffered_gauge = metrics.influx_buffer_points.labels(model, version)
        self._duration = metrics.influx_write_duration.labels(model, version)
        self._buffered_gauge.set(0)

        self._error_log = Throttle(clock, _LOG_EVERY_S)
        self._reject_log = Throttle(clock, _LOG_EVERY_S)
        self._submit_log = Throttle(clock, _LOG_EVERY_S)
        self._recovery_log = Throttle(clock, _LOG_EVERY_S)
        self._failures = 0
        self._last_success_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None

        # Opened lazily in the writer thread (see the module docstring).
        self._writer = InfluxWriteClient(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlwarden-influx")
        self._executor_used = False

    def __repr__(self) -> str:
        return (
            f"InfluxShipper(url={self.settings.url!r}, bucket={self.settings.bucket!r}, "
            f"model={self.model!r}, version={self.version!r}, buffered={self.buffered})"
        )

    @property
    def buffered(self) -> int:
        """Points waiting to be written, the batch being written included."""
        return len(self._buffer) + self._inflight

    def status(self) -> InfluxStatus:
        """The health report's ``influx`` block (no secrets)."""
        return InfluxStatus(
            buffered_points=self.buffered,
            max_buffer_points=self.settings.max_buffer_points,
            write_in_flight=self._inflight_fut is not None,
            consecutive_failures=self._failures,
            last_success_at=self._last_success_at,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
        )

    # -- producer side (event loop) ------------------------------------------------------------

    def submit(self, report: DriftReport) -> None:
        """Buffer the report's points; never blocks, never raises.

        Called on the event loop after each drift evaluation. When the buffer is full the
        oldest buffered points are dropped and counted: recent statistics are worth more.
        """
        try:
            if self._closed:
                self._dropped_shutdown.inc(len(report.features) + 1)
                return
            lines = self._lines.lines(report)
            buf = self._buffer
            buf.extend(lines)
            excess = len(buf) + self._inflight - self.settings.max_buffer_points
            if excess > 0:
                popleft = buf.popleft
                for _ in range(excess):
                    popleft()
                self._dropped_full.inc(excess)
            self._buffered_gauge.set(len(buf) + self._inflight)
        except Exception:
            if self._submit_log.ready():
                log.warning(
                    "mlwarden: could not turn a drift report into InfluxDB points", exc_info=True
                )

    # -- writer side ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Write a batch of up to ``max_batch_points`` every ``interval_s`` until cancelled.

        Meant to be its own task. ``aclose`` stops it (run then returns normally) without
        cancelling the task that awaits it.
        """
        if self._runner is not None and not self._runner.done():
            raise RuntimeError("InfluxShipper.run() is already running")
        if self._closing:
            return
        self._runner = asyncio.get_running_loop().create_task(
            self._run_forever(), name="mlwarden-influx-writer"
        )
        try:
            await self._runner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and (current is None or current.cancelling() == 0):
                return
            raise

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.interval_s
        next_at = loop.time() + interval
        # Checked on every round as well as cancelled: on Python 3.11, wait_for can swallow a
        # cancellation that arrives just as the awaited future completes.
        while not self._closing:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            # A fixed schedule that skips ticks rather than bunching them after a slow write.
            next_at = max(next_at + interval, loop.time())
            try:
                async with self._lock:
                    await self._write_batch(self.settings.max_batch_points)
            except Exception:  # a bug here must not end shipping for the process's lifetime
                log.exception("mlwarden: InfluxDB shipping tick failed")

    async def flush(self) -> None:
        """Write what is buffered now, batch by batch; stop at the first failed batch.

        Waits for a write already in flight first (at most one at a time), so it returns within
        about two write timeouts at worst, one when nothing else is writing.
        """
        async with self._lock:
            if self._inflight_fut is not None:  # a write whose waiter gave up or was cancelled
                await asyncio.wait({self._inflight_fut}, timeout=self._wait_s)
            remaining = len(self._buffer)
            while remaining > 0:
                n = min(remaining, self.settings.max_batch_points)
                if await self._write_batch(n) != "ok":
                    return
                remaining = min(remaining - n, len(self._buffer))

    @property
    def _wait_s(self) -> float:
        return self.settings.timeout_s + _GRACE_S

    async def _write_batch(self, limit: int) -> str:
        """Write up to ``limit`` of the oldest points; the caller holds the lock.

        Returns "ok", "rejected", "error", "timeout", "busy", "empty" or "closed". The outcome
        is accounted for by ``_settle`` when the thread finishes, even if this wait gave up.
        """
        if self._closed:
            return "closed"
        if self._inflight_fut is not None:
            return "busy"
        buf = self._buffer
        n = min(limit, len(buf))
        if n == 0:
            return "empty"
        popleft = buf.popleft
        batch = [popleft() for _ in range(n)]
        self._inflight = n
        self._executor_used = True
        fut = asyncio.wrap_future(self._executor.submit(self._post, batch))
        self._inflight_fut = fut
        fut.add_done_callback(partial(self._settle, batch))
        # asyncio.wait, not wait_for: giving up must not cancel the future (the write goes on
        # in the thread and _settle still accounts for it), and a cancellation of this task
        # must never be swallowed.
        await asyncio.wait({fut}, timeout=self._wait_s)
        if not fut.done():
            return "timeout"  # the thread's own timeout will end it
        outcome = fut.result()
        if outcome.error is None:
            return "ok"
        return "rejected" if status_of(outcome.error) in REJECTED_STATUSES else "error"

    def _post(self, batch: list[str]) -> _Outcome:
        """The blocking write, in the writer thread: returns the outcome, never raises."""
        start = time.perf_counter()
        try:
            self._writer.write(batch)
        except Exception as exc:
            return _Outcome(time.perf_counter() - start, exc)
        return _Outcome(time.perf_counter() - start)

    def _settle(self, batch: list[str], fut: asyncio.Future[_Outcome]) -> None:
        """Account for a finished write, on the event loop."""
        self._inflight = 0
        self._inflight_fut = None
        # Cancelled cannot happen (nothing cancels it), but never lose points silently.
        outcome = _Outcome(0.0, asyncio.CancelledError()) if fut.cancelled() else fut.result()
        self._duration.observe(outcome.duration_s)
        exc = outcome.error
        n = len(batch)
        if exc is None:
            self._written.inc(n)
            self._last_success_at = self._clock()
            if self._failures:
                if self._recovery_log.ready():
                    log.info(
                        "mlwarden: InfluxDB writes to %s recovered after %d failed attempts",
                        self.settings.url,
                        self._failures,
                    )
                self._failures = 0
        elif status_of(exc) in REJECTED_STATUSES:
            self._dropped_rejected.inc(n)
            self._last_error, self._last_error_at = describe(exc), self._clock()
            if self._reject_log.ready():
                log.warning(
                    "mlwarden: InfluxDB at %s rejected %d points, dropped (%s)%s",
                    self.settings.url,
                    n,
                    describe(exc),
                    _suppressed_note(self._reject_log.take_suppressed()),
                )
        else:
            self._errors.inc()
            if self._closed:
                self._dropped_shutdown.inc(n)
            else:
                # Back to the front: these are the oldest points. The buffer's bound holds,
                # since submit kept room for them while they were in flight.
                self._buffer.extendleft(reversed(batch))
            self._note_error(describe(exc))
        self._buffered_gauge.set(len(self._buffer) + self._inflight)

    def _note_error(self, description: str) -> None:
        self._failures += 1
        self._last_error, self._last_error_at = description, self._clock()
        if self._error_log.ready():
            log.warning(
                "mlwarden: writing to InfluxDB at %s failed, %d points kept for the next "
                "attempt (%s)%s",
                self.settings.url,
                self.buffered,
                description,
                _suppressed_note(self._error_log.take_suppressed()),
            )

    async def aclose(self, *, timeout_s: float = 2.0) -> None:
        """Stop ``run``, make one last flush attempt within ``timeout_s``, close the client.

        Points that could not be written by then are dropped and counted (reason
        ``shutdown``). A write still hanging in the thread is left to its own timeout.
        """
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        try:
            runner = self._runner
            if runner is not None and not runner.done():
                runner.cancel()
                await asyncio.wait({runner}, timeout=max(0.0, deadline - loop.time()))
            left = deadline - loop.time()
            if left > 0 and (self._buffer or self._inflight_fut is not None):
                last = loop.create_task(self.flush(), name="mlwarden-influx-last-flush")
                try:
                    await asyncio.wait({last}, timeout=left)
                finally:
                    if not last.done():
                        last.cancel()  # it only waits on the lock or the thread: ends at once
                        await asyncio.wait({last}, timeout=1.0)
        finally:
            self._closed = True
            lost = len(self._buffer)
            self._buffer.clear()
            if lost:
                self._dropped_shutdown.inc(lost)
                log.warning(
                    "mlwarden: %d points for InfluxDB were not written before shutdown", lost
                )
            self._buffered_gauge.set(self._inflight)
            if self._executor_used:
                # Queued behind a hanging write, if any, so the client is never closed under it.
                closing = asyncio.wrap_future(self._executor.submit(self._writer.close))
                left = deadline - loop.time()
                if left > 0:
                    await asyncio.wait({closing}, timeout=left)
            self._executor.shutdown(wait=False)


def _suppressed_note(n: int) -> str:
    return f"; {n} similar messages suppressed in the last minute" if n else ""
