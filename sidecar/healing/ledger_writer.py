"""Group commit for the healing ledger: its lines written and fsynced by a thread, in batches.

An fsync takes milliseconds on a disk; the ledger is appended to from breaker and health
listeners on the event loop, most often during the failure storms it records. So
:class:`LedgerWriter` takes the lines off the appending thread: :meth:`LedgerWriter.put`
only queues a line, and one thread takes everything queued, writes it with one write and one
fsync per batch (:meth:`~mlwarden.sidecar.healing.ledger_files.LedgerFile.write_batch`, which
also rotates), and goes back to waiting.

Durability: a line is durable once the fsync of its batch returns. :meth:`LedgerWriter.flush`
waits for that for every line queued before the call; :meth:`LedgerWriter.close` drains the
queue, so nothing queued before a clean stop is lost. A crash (``SIGKILL``, power loss) loses
at most the lines still queued or in the batch being written; the file's crash repair cuts a
torn last line, as before.

The queue is bounded (``max_queued`` lines). When it is full, :meth:`~LedgerWriter.put`
never waits (the caller may be the event loop): the line is dropped, counted (``dropped``)
and logged, once per run of drops. The ledger keeps the record in memory and passes it on all
the same, so ``/-/events``, escalation counts and the metrics still see it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque

from mlwarden.sidecar.healing.ledger_files import LedgerFile

__all__ = ["LedgerWriter"]

log = logging.getLogger("mlwarden.sidecar.ledger")


class LedgerWriter:
    """The thread that writes ``file``; thread-safe. ``stats`` is the ledger's counter, which
    this writer adds ``dropped`` to (the file adds its own keys, from this thread only)."""

    def __init__(self, file: LedgerFile, *, max_queued: int, stats: Counter[str]) -> None:
        self._file = file
        self.max_queued = max_queued
        self._stats = stats
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[bytes] = deque()
        self._queued = 0  # lines accepted so far
        self._done = 0  # lines written (or failed) so far
        self._dropping = False
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name="mlwarden-ledger-writer", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"LedgerWriter({self._file!r}, queued={self.queued}/{self.max_queued})"

    @property
    def queued(self) -> int:
        """Lines accepted and not yet written."""
        with self._cond:
            return self._queued - self._done

    def put(self, line: bytes) -> bool:
        """Queue one line without waiting; False (counted, logged) when the queue is full."""
        with self._cond:
            if self._closing:
                raise RuntimeError(f"the healing ledger writer of {self._file.path} is closed")
            if len(self._queue) >= self.max_queued:
                self._stats["dropped"] += 1
                first = not self._dropping
                self._dropping = True
            else:
                self._queue.append(line)
                self._queued += 1
                self._dropping = False
                self._cond.notify_all()
                return True
        if first:
            log.error(
                "mlwarden: the healing ledger %s is %d lines behind its disk; dropping "
                "records from the file until it catches up (kept in memory, counted in "
                "'dropped')",
                self._file.path,
                self.max_queued,
            )
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every line queued before this call is written and fsynced (or counted
        as a write error); False when ``timeout`` seconds passed first."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting lines, write what is queued and stop the thread. Idempotent; False
        (logged) when ``timeout`` passed with lines still unwritten."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "mlwarden: the healing ledger %s still had %d lines to write at close",
                self._file.path,
                self.queued,
            )
            return False
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return  # closing, and everything is written
                batch = list(self._queue)
                self._queue.clear()
            try:
                self._file.write_batch(batch)
            except Exception:  # a bug, not the disk (write_batch counts OSErrors): keep going
                self._stats["write_errors"] += len(batch)
                log.exception("mlwarden: the healing ledger %s could not write", self._file.path)
            finally:
                with self._cond:
                    self._done += len(batch)
                    self._cond.notify_all()
