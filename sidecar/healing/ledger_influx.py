"""Healing ledger records as InfluxDB points, written in the background.

:class:`InfluxLedgerSink` is a ledger :class:`~mlwarden.sidecar.listeners.Listener`
(``ledger.add_listener(sink)``). Each record becomes one point::

    mlwarden_healing,action=rollback,actor=auto,outcome=ok,policy=canary-errors,
        severity=critical,target=canary count=1i,signal_error_rate=0.12,signal_breaker_open=1i
        1735732800250000000

- measurement ``mlwarden_healing`` (``measurement=`` renames it); in VictoriaMetrics the
  series are ``mlwarden_healing_count{action=...}`` and ``mlwarden_healing_signal_<name>``.
- tags ``action``, ``actor``, ``outcome``, ``policy``, ``severity``, ``target`` (empty ones left
  out: line protocol has no empty tag). All bounded: words, configured names, ``auto``/admin.
- fields ``count=1i`` and one ``signal_<name>`` per numeric or boolean signal (booleans as
  ``0i``/``1i``; non-numeric and non-finite signals are left out: a string field is stored as 0
  by VictoriaMetrics, and the reason text stays in the ledger file). Signal names are reduced to
  ``[A-Za-z0-9_]`` so that the series names are valid PromQL.
- the record's ``at`` as the timestamp, in ns rounded to the microsecond.

Why not :class:`mlwarden.middleware.influx.InfluxShipper`: it ships drift reports, takes its
points on an asyncio event loop and counts into the middleware's per-model metrics, while a
ledger listener is called on whichever thread appended. The sink reuses its
:class:`~mlwarden.middleware.influx.InfluxSettings` (``url``, ``bucket``, ``token``, ``org``,
``interval_s``, ``timeout_s``, ``max_buffer_points``, ``max_batch_points``; ``measurement`` is
the sink's own argument since the settings' default names the feature statistics), its write
client (:class:`~mlwarden.middleware.influx.InfluxWriteClient`), line-protocol escaping and
rejected-status rule, and its write behaviour:

- The listener call only formats a line and appends it to a bounded buffer: it never blocks on
  the network and never raises. A full buffer drops its oldest lines (``dropped_buffer_full``).
- One writer thread writes a batch of at most ``max_batch_points`` every ``interval_s`` through
  ``influxdb_client``'s synchronous WriteApi (``retries=False``, the client timeout from
  ``timeout_s``). A failed write keeps its lines for the next round (``write_errors``, a warning
  at most once a minute); a 400/422 means the lines are bad and drops them
  (``dropped_rejected``).
- :meth:`InfluxLedgerSink.close` makes one last bounded flush and counts what is left
  (``dropped_shutdown``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from mlwarden.middleware.influx import (
    REJECTED_STATUSES,
    InfluxSettings,
    InfluxWriteClient,
    escape,
    status_of,
)
from mlwarden.sidecar.healing.ledger_records import LedgerRecord
from mlwarden.sidecar.listeners import Listener

__all__ = ["InfluxLedgerSink"]

log = logging.getLogger("mlwarden.sidecar.ledger")

_MEASUREMENT_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FIELD_RE = re.compile(r"[^A-Za-z0-9_]")
_LOG_EVERY_S = 60.0


def record_line(record: LedgerRecord, measurement: str = "mlwarden_healing") -> str:
    """The line-protocol line of one record (see the module docstring)."""
    tags = (
        ("action", record.action),
        ("actor", record.actor),
        ("outcome", record.outcome),
        ("policy", record.policy),
        ("severity", record.severity),
        ("target", record.target),
    )
    head = measurement + "".join(f",{k}={escape(v)}" for k, v in tags if v)
    fields = ["count=1i"]
    for name, value in record.signals.items():
        key = "signal_" + _FIELD_RE.sub("_", name)
        if isinstance(value, bool):
            fields.append(f"{key}={int(value)}i")
        elif isinstance(value, int | float) and math.isfinite(value):
            fields.append(f"{key}={float(value)!r}")
    at = time.time() if record.at is None else record.at
    return f"{head} {','.join(fields)} {round(at * 1e6) * 1000}"


class InfluxLedgerSink(Listener):
    """A ledger listener that writes records to InfluxDB from a bounded buffer, in a thread.

    Starts its writer thread on creation; call :meth:`close` (or use it as a context manager).
    :meth:`flush` blocks (up to about one write timeout per batch): call it from a thread, not
    from an event loop.
    """

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        measurement: str = "mlwarden_healing",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(measurement, str) or not _MEASUREMENT_RE.fullmatch(measurement):
            raise ValueError(
                f"measurement: must start with a letter and hold only letters, "
                f"digits and '_', got {measurement!r}"
            )
        self.settings = settings
        self.measurement = measurement
        self._clock = clock
        self._buffer: deque[str] = deque()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # one write at a time, the client's only user
        self._stats: Counter[str] = Counter()
        self._closing = False
        self._last_log: float | None = None
        self._writer = InfluxWriteClient(settings)
        self._thread = threading.Thread(
            target=self._run, name="mlwarden-ledger-influx", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"InfluxLedgerSink(url={self.settings.url!r}, bucket={self.settings.bucket!r}, "
            f"measurement={self.measurement!r}, buffered={len(self._buffer)})"
        )

    def __enter__(self) -> InfluxLedgerSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the listener --------------------------------------------------------------------------

    def recorded(self, record: LedgerRecord) -> None:
        """Buffer the record's point; never blocks on the network, never raises."""
        try:
            line = record_line(record, self.measurement)
            with self._cond:
                if self._closing:
                    self._stats["dropped_shutdown"] += 1
                    return
                self._buffer.append(line)
                excess = len(self._buffer) - self.settings.max_buffer_points
                for _ in range(max(0, excess)):
                    self._buffer.popleft()
                    self._stats["dropped_buffer_full"] += 1
                self._cond.notify()
        except Exception:
            self._stats["dropped_invalid"] += 1
            log.exception("mlwarden: could not turn a healing record into an InfluxDB point")

    def stats(self) -> dict[str, int]:
        """Counters for ``/-/status`` and tests: written, errors and losses by reason."""
        with self._cond:
            keys = (
                "written",
                "write_errors",
                "dropped_buffer_full",
                "dropped_rejected",
                "dropped_shutdown",
                "dropped_invalid",
            )
            out = {k: self._stats[k] for k in keys}
            out["buffered"] = len(self._buffer)
            return out

    # -- writing -------------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.interval_s
        batch = self.settings.max_batch_points
        next_at = self._clock() + interval
        while True:
            with self._cond:
                # Wake on the interval, on a full batch, or on close.
                while not self._closing and len(self._buffer) < batch:
                    left = next_at - self._clock()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closing:
                    return
            next_at = self._clock() + interval
            try:
                self._write_batch()
            except Exception:  # a bug here must not end shipping for the process's lifetime
                log.exception("mlwarden: writing healing records to InfluxDB failed")

    def _write_batch(self) -> str:
        """Write up to ``max_batch_points`` of the oldest lines: "ok", "empty", "rejected" or
        "error"."""
        with self._write_lock:
            with self._cond:
                n = min(len(self._buffer), self.settings.max_batch_points)
                lines = [self._buffer.popleft() for _ in range(n)]
            if not lines:
                return "empty"
            try:
                self._writer.write(lines)
            except Exception as exc:
                with self._cond:
                    if status_of(exc) in REJECTED_STATUSES:
                        self._stats["dropped_rejected"] += len(lines)
                        outcome = "rejected"
                    else:
                        self._stats["write_errors"] += 1
                        # Back to the front, as the oldest lines, within the buffer's bound.
                        room = self.settings.max_buffer_points - len(self._buffer)
                        keep = lines[len(lines) - max(0, room) :] if room < len(lines) else lines
                        self._stats["dropped_buffer_full"] += len(lines) - len(keep)
                        self._buffer.extendleft(reversed(keep))
                        outcome = "error"
                now = self._clock()
                if self._last_log is None or now - self._last_log >= _LOG_EVERY_S:
                    self._last_log = now
                    log.warning(
                        "mlwarden: writing %d healing records to InfluxDB at %s failed (%s): %s",
                        len(lines),
                        self.settings.url,
                        outcome,
                        f"{type(exc).__name__}: {str(exc)[:300]}",
                    )
                return outcome
            with self._cond:
                self._stats["written"] += len(lines)
            return "ok"

    def flush(self) -> bool:
        """Write everything buffered now, batch by batch; False at the first failed batch."""
        with self._cond:
            remaining = len(self._buffer)
        while remaining > 0:
            outcome = self._write_batch()
            if outcome == "error":
                return False
            with self._cond:
                remaining = min(remaining - self.settings.max_batch_points, len(self._buffer))
        return True

    def close(self, *, timeout_s: float = 2.0) -> None:
        """Stop the writer, make one last flush within about ``timeout_s``, close the client.

        Lines not written by then are dropped and counted (``dropped_shutdown``). Idempotent.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        deadline = self._clock() + max(0.0, timeout_s)
        self._thread.join(timeout=max(0.0, deadline - self._clock()))
        if not self._thread.is_alive() and self._clock() < deadline:
            with contextlib.suppress(Exception):
                self.flush()
        with self._cond:
            lost = len(self._buffer)
            self._buffer.clear()
            self._stats["dropped_shutdown"] += lost
        if lost:
            log.warning(
                "mlwarden: %d healing records were not written to InfluxDB before shutdown", lost
            )
        # Under the write lock, so that a write still running is never left without its client.
        if self._write_lock.acquire(timeout=max(0.0, deadline - self._clock()) + 0.1):
            try:
                self._writer.close()
            finally:
                self._write_lock.release()
