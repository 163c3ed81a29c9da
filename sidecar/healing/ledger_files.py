"""The healing ledger's file: a rotating, fsynced JSON-lines file that survives crashes.

:class:`LedgerFile` owns ``ledger.jsonl`` and its numbered backups: appending a line durably,
rotating, repairing a torn last line at start-up, and reading the retained lines back, newest
first. What a line holds is :mod:`mlwarden.sidecar.healing.ledger_records`; the ledger that
decides what to write and keeps the recent records is :mod:`mlwarden.sidecar.healing.ledger`.

Durability and crash safety:

- Records are serialised first and then written with one ``os.write`` per batch on a file
  descriptor opened with ``O_APPEND``, followed by one ``os.fsync`` (``fsync=False`` skips it,
  for tests and throw-away ledgers; ``fsyncs`` counts them): the group commit of
  :mod:`~mlwarden.sidecar.healing.ledger_writer`, whose one thread makes every write. One process
  writes a ledger file; two processes appending to the same file is not supported (rotation
  would race).
- A crash (``SIGKILL``, power loss) during a write can leave a torn last line. When the file
  opens and does not end with ``\\n``, the tail after the last newline is cut off (or, when
  the tail is a whole record that only lacks its newline, the newline is added), a warning is
  logged and ``torn_repairs`` counts it. Readers skip every line that is not a valid record
  and count it (``invalid_lines``): reading never fails because of the file.
- A failed write (disk full, I/O error) never raises: :meth:`LedgerFile.write_batch` answers
  how many records it wrote, the file is truncated back to its last whole line, the error is
  logged and counted (``write_errors``, one per record lost, and one per failed rotation). A
  healing action must not fail because its audit trail could not be written; the counter is
  what alerts on it.
- Rotation works like :class:`logging.handlers.RotatingFileHandler`: when a record would take
  the file past ``max_bytes``, ``ledger.jsonl`` becomes ``ledger.jsonl.1``, ``.1`` becomes
  ``.2`` and so on, keeping ``backups`` old files, and the directory is fsynced. A file never
  exceeds ``max_bytes`` by more than one record (only a single record larger than
  ``max_bytes`` can do that, alone in its file).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlwarden.sidecar.healing.ledger_records import LedgerRecord, loads

__all__ = ["LedgerFile"]

log = logging.getLogger("mlwarden.sidecar.ledger")

_READ_BLOCK = 64 * 1024
# A torn tail longer than this is cut without trying to parse it.
_MAX_TAIL_PARSE = 1024 * 1024


class LedgerFile:
    """``path`` and up to ``backups`` rotated copies, each at most about ``max_bytes``.

    Opening it creates the directory and the file as needed and repairs a torn last line.
    Not locked: one thread writes (the ledger's writer); :meth:`oldest_at` and :attr:`size`
    may be read from others. ``stats`` is the ledger's counter, which
    this file adds to (``write_errors``, ``torn_repairs``, ``torn_bytes``, ``invalid_lines``,
    ``rotations``, ``fsyncs``).
    """

    def __init__(
        self, path: Path, *, max_bytes: int, backups: int, fsync: bool, stats: Counter[str]
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self._stats = stats
        self._fd: int | None = None
        self._size = 0
        self._oldest_at: float | None = None  # of the retained files; read when asked
        self._oldest_stale = True
        self._generation = 0  # rotations so far: an answer read across one is not kept
        self._oldest_lock = threading.Lock()  # the writer thread rotates; callers ask
        path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        try:
            self._repair_tail()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"LedgerFile({str(self.path)!r}, max_bytes={self.max_bytes}, backups={self.backups})"

    @property
    def size(self) -> int:
        """Bytes in the current file."""
        return self._size

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _backup_numbers(self) -> list[int]:
        """The numbers of the backups that exist (within ``backups``), ascending.

        One directory listing rather than a lookup per possible backup: rotation stays cheap
        with many backups configured.
        """
        prefix = self.path.name + "."
        found = []
        with os.scandir(self.path.parent) as entries:
            for entry in entries:
                tail = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
                if tail.isdigit() and tail[0] != "0" and int(tail) <= self.backups:
                    found.append(int(tail))
        return sorted(found)

    def _files_newest_first(self) -> list[Path]:
        return [self.path, *(self._backup(i) for i in self._backup_numbers())]

    def _open(self) -> None:
        existed = self.path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size
        if not existed:
            _fsync_dir(self.path.parent)

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash during a write), or complete a whole record that only
        lacks its newline."""
        assert self._fd is not None
        size = self._size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Find the last newline, reading backwards in blocks.
            pos, keep = size, 0
            while pos > 0:
                n = min(_READ_BLOCK, pos)
                pos -= n
                f.seek(pos)
                i = f.read(n).rfind(b"\n")
                if i >= 0:
                    keep = pos + i + 1
                    break
            tail = b""
            if size - keep <= _MAX_TAIL_PARSE:
                f.seek(keep)
                tail = f.read(size - keep)
        whole = False
        if tail:
            try:
                LedgerRecord.from_json(tail)
                whole = True
            except ValueError:
                pass
        if whole:
            os.write(self._fd, b"\n")
            self._size += 1
            log.warning(
                "mlwarden: the healing ledger %s ended without a newline after a whole "
                "record; added it",
                self.path,
            )
        else:
            os.ftruncate(self._fd, keep)
            self._size = keep
            log.warning(
                "mlwarden: the healing ledger %s ended with a torn line (a crash during "
                "a write?); cut %d bytes after the last whole record",
                self.path,
                size - keep,
            )
            self._stats["torn_bytes"] += size - keep
        self._stats["torn_repairs"] += 1
        if self.fsync:
            os.fsync(self._fd)

    def objects_newest_first(self) -> Iterator[dict[str, Any]]:
        """The JSON objects of the retained files, newest first; other lines counted."""
        for path in self._files_newest_first():
            with contextlib.closing(_reverse_lines(path)) as lines:
                for line in lines:
                    try:
                        d = loads(line)
                    except ValueError:
                        d = None
                    if isinstance(d, dict):
                        yield d
                    else:
                        self._stats["invalid_lines"] += 1

    def oldest_at(self) -> float | None:
        """``at`` of the oldest valid record the retained files hold; read again after each
        rotation, None when there is none."""
        with self._oldest_lock:
            if not self._oldest_stale:
                return self._oldest_at
            generation = self._generation
        # Read on the caller's thread while the writer may rotate: kept only if it did not.
        oldest = self._first_at()
        with self._oldest_lock:
            if generation == self._generation:
                self._oldest_at, self._oldest_stale = oldest, False
        return oldest

    def _first_at(self) -> float | None:
        """``at`` of the oldest valid record in the oldest retained file."""
        for path in reversed(self._files_newest_first()):
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:
                continue
            with f:
                for line in f:
                    try:
                        return LedgerRecord.from_json(line).at
                    except ValueError:
                        continue
        return None

    def _rotate(self) -> None:
        # Renamed while still open (POSIX allows it): if a rename fails, the fd stays usable.
        if self.backups > 0:
            for i in reversed(self._backup_numbers()):
                if i < self.backups:
                    os.replace(self._backup(i), self._backup(i + 1))
            os.replace(self.path, self._backup(1))
        else:
            self.path.unlink(missing_ok=True)
        self.close()
        _fsync_dir(self.path.parent)
        self._open()
        self._stats["rotations"] += 1
        with self._oldest_lock:
            self._generation += 1
            self._oldest_stale = True

    def write(self, data: bytes) -> bool:
        """Append one line (rotating first if needed); False when it could not be written."""
        return self.write_batch([data]) == 1

    def write_batch(self, lines: Sequence[bytes]) -> int:
        """Append ``lines`` in order with one write and one fsync per file they go to (group
        commit); how many were written. Rotation falls between lines, as for single writes."""
        written = 0
        chunk: list[bytes] = []
        chunk_bytes = 0
        for line in lines:
            if chunk and self._size + chunk_bytes + len(line) > self.max_bytes:
                written += self._write_chunk(chunk)
                chunk, chunk_bytes = [], 0
            if not chunk and not self._ready(len(line)):
                continue  # counted and logged
            chunk.append(line)
            chunk_bytes += len(line)
        if chunk:
            written += self._write_chunk(chunk)
        return written

    def _ready(self, incoming: int) -> bool:
        """Open the file if needed and rotate it if ``incoming`` bytes would not fit."""
        if self._fd is None:  # a rotation that failed half-way: try the file again
            try:
                self._open()
            except OSError as exc:
                self._stats["write_errors"] += 1
                log.error("mlwarden: could not open the healing ledger %s: %s", self.path, exc)
                return False
        if self._size > 0 and self._size + incoming > self.max_bytes:
            try:
                self._rotate()
            except OSError as exc:
                # Keep appending to the current file: an oversized file beats a lost record.
                self._stats["write_errors"] += 1
                log.error("mlwarden: could not rotate the healing ledger %s: %s", self.path, exc)
                if self._fd is None:
                    return self._ready(0)  # reopens, or counts and gives up
        return True

    def _write_chunk(self, chunk: list[bytes]) -> int:
        """One write and one fsync of whole lines; on failure none of them stays."""
        data = b"".join(chunk)
        fd, before = self._fd, self._size
        assert fd is not None
        try:
            written = os.write(fd, data)
            while written < len(data):  # only on a nearly full disk; never seen otherwise
                n = os.write(fd, data[written:])
                if n == 0:
                    raise OSError(errno.ENOSPC, "short write")
                written += n
            self._size = before + written
            if self.fsync:
                os.fsync(fd)
                self._stats["fsyncs"] += 1
        except OSError as exc:
            self._stats["write_errors"] += len(chunk)
            # Never leave a torn line for the next record to be glued to.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
                self._size = before
            log.error(
                "mlwarden: could not write %d records to the healing ledger %s: %s",
                len(chunk),
                self.path,
                exc,
            )
            return 0
        return len(chunk)


def _reverse_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of ``path``, last first, read in blocks from the end.

    A final segment without a newline is yielded too; it fails to parse and is counted.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, also when the caller stops early
    except FileNotFoundError:
        return
    with f:
        pos = f.seek(0, os.SEEK_END)
        tail = b""
        while pos > 0:
            n = min(_READ_BLOCK, pos)
            pos -= n
            f.seek(pos)
            lines = (f.read(n) + tail).split(b"\n")
            tail = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line
        if tail:
            yield tail


def _fsync_dir(directory: Path) -> None:
    # Makes renames and newly created files durable; not every platform lets you open one.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
