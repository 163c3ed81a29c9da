"""The healing ledger: every healing action appended durably, the recent ones kept in memory.

:class:`Ledger` appends each :class:`~mlwarden.sidecar.healing.ledger_records.LedgerRecord`
(the record and its JSON line: :mod:`~mlwarden.sidecar.healing.ledger_records`) to its file
(rotation, fsync and crash repair: :mod:`~mlwarden.sidecar.healing.ledger_files`) through a
writer thread (group commit: :mod:`~mlwarden.sidecar.healing.ledger_writer`), keeps the
most recent records in memory for ``/-/events`` and an index for escalation windows, answers
queries over both, and tells its listeners (Prometheus counting, the optional InfluxDB sink in
:mod:`mlwarden.sidecar.healing.ledger_influx`). An append never fails because of the file: a
record that could not be written is still kept, passed on and counted (``write_errors``, or
``dropped`` when the writer's queue was full).

Durability: :meth:`Ledger.append` does not wait for the disk (an fsync is milliseconds, and
appends come from listeners on the event loop). A record is durable once the fsync of the batch
its line was written in returns; :meth:`Ledger.flush` waits for that, and :meth:`Ledger.close`
writes and fsyncs everything appended before it. A crash loses at most the records appended
in the last moments (still queued), never a whole record already in the file.

Start-up: the last ``recent`` records (from the current file, then the backups as needed) are
loaded into a bounded deque, so that ``/-/events`` survives restarts.

Escalation windows (:meth:`Ledger.count_since`) may span days, far more than the deque holds:
they are counted from a compact index of record times per ``(policy, action, target)``, rebuilt
at start-up, within ``index_horizon_s`` (8 days by default); what its answer covers, and where
it stops being complete, is :mod:`~mlwarden.sidecar.healing.ledger_index`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.sidecar.config import LedgerConfig
from mlwarden.sidecar.healing.ledger_files import LedgerFile
from mlwarden.sidecar.healing.ledger_index import WindowIndex
from mlwarden.sidecar.healing.ledger_records import IndexKey, LedgerRecord, index_entry
from mlwarden.sidecar.healing.ledger_writer import LedgerWriter
from mlwarden.sidecar.listeners import FanOut, Listener

if TYPE_CHECKING:
    from mlwarden.sidecar.config import LedgerConfig

__all__ = ["MAX_QUERY_LIMIT", "Ledger"]

log = logging.getLogger("mlwarden.sidecar.ledger")

#: The most records :meth:`Ledger.query` returns.
MAX_QUERY_LIMIT = 1000

#: A listener gets every record after it is appended (on the appending thread).


# One default per key: the ``ledger:`` block's, also when a ledger is built directly.
_BLOCK = LedgerConfig()


class Ledger:
    """The append-only healing ledger. Thread-safe; see the module docstring.

    ``path=None`` keeps records in memory only (the deque and the window index); otherwise
    ``max_bytes``, ``backups`` and ``fsync`` shape the file (``ledger:`` block, or
    :meth:`from_config`). ``recent`` records are kept in memory; the window index keeps
    ``index_horizon_s`` of history, at most ``index_max_per_key`` times per key. ``clock`` is
    epoch seconds. Use as a context manager or call :meth:`close`.

    :meth:`append` only queues the record's line (at most ``max_queued``, then dropped and
    counted) for the writer thread, so it can be called on an event loop; :meth:`flush` waits
    until the lines are fsynced (``await asyncio.to_thread(ledger.flush)`` on a loop).
    """

    def __init__(
        self,
        path: Path | str | None,
        *,
        max_bytes: int = _BLOCK.max_bytes,
        backups: int = _BLOCK.backups,
        fsync: bool = _BLOCK.fsync,
        recent: int = _BLOCK.recent,
        index_horizon_s: float = 8 * 86400.0,
        index_max_per_key: int = 10_000,
        clock: Callable[[], float] = time.time,
        max_queued: int = 10_000,
    ) -> None:
        problems = []
        for name, value, floor in (
            ("max_bytes", max_bytes, 1),
            ("max_queued", max_queued, 1),
            ("backups", backups, 0),
            ("recent", recent, 0),
            ("index_max_per_key", index_max_per_key, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < floor:
                problems.append(f"{name}: must be an integer >= {floor}, got {value!r}")
        if (
            not isinstance(index_horizon_s, int | float)
            or isinstance(index_horizon_s, bool)
            or not math.isfinite(index_horizon_s)
            or index_horizon_s <= 0
        ):
            problems.append(
                f"index_horizon_s: must be a finite number of seconds > 0, got {index_horizon_s!r}"
            )
        if problems:
            raise ValueError("invalid ledger settings: " + "; ".join(problems))
        self.path = None if path is None else Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.index_horizon_s = float(index_horizon_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[LedgerRecord] = deque(maxlen=recent)
        self._listeners = FanOut()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._stats: Counter[str] = Counter()
        self._index = WindowIndex(
            horizon_s=self.index_horizon_s, max_per_key=index_max_per_key, stats=self._stats
        )
        self._run = os.urandom(6).hex()
        self._seq = 0
        self._file: LedgerFile | None = None
        self._writer: LedgerWriter | None = None
        self._opened_at = clock()
        self._closed = False
        if self.path is not None:
            self._file = LedgerFile(
                self.path, max_bytes=max_bytes, backups=backups, fsync=fsync, stats=self._stats
            )
            try:
                self._load(self._file)
            except BaseException:
                self._file.close()
                raise
            self._writer = LedgerWriter(self._file, max_queued=max_queued, stats=self._stats)

    @classmethod
    def from_config(cls, block: LedgerConfig, *, clock: Callable[[], float] = time.time) -> Ledger:
        """The ledger of the validated ``ledger:`` block (its ``influx_*`` keys are the sink's)."""
        return cls(
            block.path,
            max_bytes=block.max_bytes,
            backups=block.backups,
            fsync=block.fsync,
            recent=block.recent,
            max_queued=block.max_queued,
            clock=clock,
        )

    def __repr__(self) -> str:
        return (
            f"Ledger(path={str(self.path) if self.path else None!r}, "
            f"max_bytes={self.max_bytes}, backups={self.backups}, "
            f"recent={len(self._recent)}/{self._recent.maxlen})"
        )

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record appended before this call is in the file and fsynced (or
        counted as a write error); False when ``timeout`` seconds passed first. Blocks: on an
        event loop, run it in a thread."""
        return True if self._writer is None else self._writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write and fsync what was appended, then close the file; later appends raise
        ``RuntimeError``. Waits for the disk up to ``timeout`` seconds (then logs how many
        records were not written). Idempotent: a second call returns at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._writer is not None and self._writer.close(timeout) and self._file is not None:
            self._file.close()

    # -- start-up ------------------------------------------------------------------------------

    def _load(self, file: LedgerFile) -> None:
        """Fill the recent deque and the window index from the files.

        Only the ``recent`` newest lines become records; older ones within the horizon only
        give their index key and time (a few times cheaper than building a record).
        """
        cutoff = self._clock() - self.index_horizon_s
        want = self._recent.maxlen or 0
        recent: list[LedgerRecord] = []
        stamps: list[tuple[IndexKey, float]] = []
        with contextlib.closing(file.objects_newest_first()) as objects:
            for d in objects:
                entry = None if len(recent) < want else index_entry(d)
                if entry is None:
                    try:
                        rec = LedgerRecord.from_dict(d)
                    except ValueError:
                        self._stats["invalid_lines"] += 1
                        continue
                    if len(recent) < want:
                        recent.append(rec)
                    assert rec.at is not None
                    entry = (rec.policy, rec.action, rec.target), rec.at
                if entry[1] >= cutoff:
                    stamps.append(entry)
                elif len(recent) >= want:
                    break  # past the horizon and enough recent records
        self._recent.extend(reversed(recent))
        for key, at in reversed(stamps):
            self._index.add(key, at)
        self._stats["loaded"] = len(recent)
        if recent:
            log.info("mlwarden: loaded %d recent healing records from %s", len(recent), self.path)

    # -- writing -------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener.recorded(record)`` after each append.

        Listeners run on the appending thread, outside the ledger's lock, in the order added.
        One that raises is logged and counted (``listener_errors``); the append goes on.
        """
        with self._lock:
            self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def append(
        self,
        action: str,
        target: str,
        *,
        reason: str = "",
        signals: Mapping[str, object] | None = None,
        outcome: str = "ok",
        policy: str | None = None,
        severity: str | None = None,
        actor: str = "auto",
        details: Mapping[str, object] | None = None,
    ) -> LedgerRecord:
        """Record one healing action now and return the record (with its ``id`` and ``at``).

        ``ValueError`` when the record is invalid (a bad action word, say): that is a bug in
        the caller. I/O errors do not raise (see the module docstring).
        """
        return self.record(
            LedgerRecord(
                action=action,
                target=target,
                reason=reason,
                signals=signals or {},
                outcome=outcome,
                policy=policy,
                severity=severity,
                actor=actor,
                details=details or {},
            )
        )

    def record(self, record: LedgerRecord) -> LedgerRecord:
        """Append a prepared record; an empty ``id`` and a missing ``at`` are filled in."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the healing ledger {self.path} is closed")
            self._seq += 1
            changes: dict[str, Any] = {}
            if not record.id:
                changes["id"] = f"{self._run}-{self._seq:06d}"
            if record.at is None:
                changes["at"] = float(self._clock())
            if changes:
                record = replace(record, **changes)
            if self._writer is not None:
                self._writer.put(record.to_json().encode() + b"\n")
            self._recent.append(record)
            assert record.at is not None
            self._index.add((record.policy, record.action, record.target), record.at)
            self._counts[(record.action, record.outcome)] += 1
            self._stats["appended"] += 1
        self._listeners.recorded(record)
        return record

    # -- reading -------------------------------------------------------------------------------

    def query(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        policy: str | None = None,
        severity: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[LedgerRecord]:
        """Recent records that match every given filter, newest first, from memory.

        ``since <= at < until``; ``limit`` is capped at :data:`MAX_QUERY_LIMIT` and at the
        ``recent`` records kept.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"limit: must be an integer >= 0, got {limit!r}")
        limit = min(limit, MAX_QUERY_LIMIT)
        with self._lock:
            records = list(self._recent)
        out: list[LedgerRecord] = []
        if limit == 0:
            return out
        for rec in reversed(records):
            at = rec.at
            assert at is not None
            if (
                (action is not None and rec.action != action)
                or (target is not None and rec.target != target)
                or (policy is not None and rec.policy != policy)
                or (severity is not None and rec.severity != severity)
                or (since is not None and at < since)
                or (until is not None and at >= until)
            ):
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    def count_since(
        self,
        since: float,
        *,
        policy: str | None = None,
        action: str | None = None,
        target: str | None = None,
        until: float | None = None,
    ) -> int:
        """How many records match in ``since <= at < until``, from the window index.

        Survives restarts and covers windows longer than the recent deque; see
        :mod:`~mlwarden.sidecar.healing.ledger_index` (and :meth:`coverage_start`) for where its
        answer stops being complete.
        """
        # Clamped to the horizon, so that the answer is the same before and after a restart.
        since = max(since, self._clock() - self.index_horizon_s)
        with self._lock:
            return self._index.count(since, until, policy=policy, action=action, target=target)

    def coverage_start(self) -> float:
        """From when :meth:`count_since` counts every record: the later of the index horizon
        and the oldest record the ledger still holds (its retained files, or for an in-memory
        ledger the time it was created)."""
        horizon = self._clock() - self.index_horizon_s
        with self._lock:
            oldest = self._opened_at if self._file is None else self._file.oldest_at()
        return horizon if oldest is None else max(horizon, oldest)

    def counts(self) -> dict[tuple[str, str], int]:
        """Records appended by this process per ``(action, outcome)`` (not the loaded ones)."""
        with self._lock:
            return dict(self._counts)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready summary for ``/-/status``: counters of what happened to the file."""
        with self._lock:
            keys = (
                "appended",
                "loaded",
                "write_errors",
                "torn_repairs",
                "torn_bytes",
                "invalid_lines",
                "rotations",
                "index_keys_evicted",
                "dropped",
                "fsyncs",
            )
            out: dict[str, Any] = {k: self._stats[k] for k in keys}
            out["queued"] = 0 if self._writer is None else self._writer.queued
            out["listener_errors"] = self._listeners.errors
            out.update(
                path=None if self.path is None else str(self.path),
                size_bytes=0 if self._file is None else self._file.size,
                recent=len(self._recent),
            )
            return out
