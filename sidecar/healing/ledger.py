"""The healing ledger: one durable JSON line per healing action, and the recent ones in memory.

Every healing action (a breaker opened or closed, a fallback, a rollback, a promotion, a
webhook fired, an escalation, a manual change through the admin API) is one
:class:`LedgerRecord`. :class:`Ledger` appends it to a JSON-lines file, keeps the most recent
records in memory for ``/-/events`` and for escalation windows, and tells its listeners
(Prometheus counting, the optional InfluxDB sink in
:mod:`mlwarden.sidecar.healing.ledger_influx`).

File format (``ledger.jsonl``): UTF-8 (in fact ASCII: non-ASCII text is ``\\u`` escaped), one
JSON object per line, ``\\n``-terminated, keys always present and in this order::

    {"id": "3f9c1a7b20de-000001", "time": "2025-01-01T12:00:00.250000Z", "at": 1735732800.25,
     "action": "rollback", "target": "canary", "outcome": "ok", "severity": "critical",
     "policy": "canary-errors", "actor": "auto", "reason": "error rate 12% > 5% for 60s",
     "signals": {"error_rate": 0.12, "breaker_open": true}, "details": {}}

- ``id`` is ``<run>-<seq>``: a random 48-bit run prefix drawn when the ledger opens and a
  sequence number that counts the records this ledger object wrote. Unique across restarts
  without coordination, and sortable within one run (a UUID would lose the order).
- ``at`` is epoch seconds (the injected clock); ``time`` is the same instant as ISO-8601 UTC,
  for people and for ``jq``. When reading, ``at`` wins.
- Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"``: the file
  stays strict JSON, which ``/-/events`` (Starlette's ``JSONResponse``) requires.
- Sizes are bounded on creation, so that a line is at most about 16 KiB (several times that
  only when the text is all non-ASCII and escaped): ``reason`` 1,000
  characters, ``target``/``policy``/``actor`` 200, at most 32 ``signals`` with names of at most
  64 characters and string values of at most 200, ``details`` at most 4 KiB of JSON (a larger
  mapping is replaced by ``{"truncated": true, "size_bytes": n}``). Longer text is cut and ends
  with ``…``.

Durability and crash safety:

- Each record is serialised first and then written with one ``os.write`` on a file descriptor
  opened with ``O_APPEND``, followed by ``os.fsync`` (``fsync=False`` skips it, for tests and
  throw-away ledgers). A lock serialises appenders in the process. One process writes a ledger
  file; two processes appending to the same file is not supported (rotation would race).
- A crash (``SIGKILL``, power loss) during a write can leave a torn last line. When the ledger
  opens and the file does not end with ``\\n``, the tail after the last newline is cut off (or,
  when the tail is a whole record that only lacks its newline, the newline is added), a warning
  is logged and ``stats()["torn_repairs"]`` counts it. Readers skip every line that is not a
  valid record and count it (``invalid_lines``): reading never fails because of the file.
- A failed write (disk full, I/O error) never raises from :meth:`Ledger.append`: the record is
  still kept in memory and passed to the listeners, the file is truncated back to its last
  whole line, the error is logged and counted (``write_errors``). A healing action must not fail
  because its audit trail could not be written; the counter is what alerts on it.
- Rotation works like :class:`logging.handlers.RotatingFileHandler`: when a record would take
  the file past ``max_bytes``, ``ledger.jsonl`` becomes ``ledger.jsonl.1``, ``.1`` becomes
  ``.2`` and so on, keeping ``backups`` old files, and the directory is fsynced. A file never
  exceeds ``max_bytes`` by more than one record (only a single record larger than
  ``max_bytes`` can do that, alone in its file).

Start-up: the last ``recent`` records (from the current file, then the backups as needed) are
loaded into a bounded deque, so that ``/-/events`` survives restarts.

Escalation windows (:meth:`Ledger.count_since`) may span days, far more than the deque holds.
The ledger therefore keeps a separate, compact index: the timestamps of the records per
``(policy, action, target)`` key, at most ``index_max_per_key`` (10,000) per key, for at most
4,096 keys, pruned to ``index_horizon_s`` (8 days by default). It is rebuilt at start-up from
every retained file (the scan stops once it is past both the horizon and ``recent``), so
counts survive restarts, and a query costs a pass over a few small deques, never a file scan.
Limits of the answer, documented rather than hidden: records older than the horizon are never
counted (``since`` is clamped to it, so the answer is the same before and after a restart);
records rotated out of the retained files are not counted after a restart
(:meth:`Ledger.coverage_start` says from when counts are complete); and a key holding more than
``index_max_per_key`` timestamps in the window answers that cap (escalation thresholds are
small numbers, so a saturated count still crosses them). The start-up scan reads at most
``(backups + 1) * max_bytes`` (60 MiB by default: about a second, measured at 4 us a line, when
all of it lies within the horizon; after a normal week it reads a few kilobytes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

try:  # a dependency of the package; several times faster to read the files at start-up
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - stay correct without it
    _loads = json.loads

__all__ = [
    "ACTIONS",
    "MAX_QUERY_LIMIT",
    "OUTCOMES",
    "SEVERITIES",
    "Ledger",
    "LedgerListener",
    "LedgerRecord",
]

log = logging.getLogger("mlwarden.sidecar.ledger")

#: The actions the sidecar records; any other ``[a-z_]{1,40}`` word is accepted as well.
ACTIONS = (
    "breaker_opened",
    "breaker_closed",
    "fallback",
    "restore_primary",
    "rollback",
    "promotion",
    "set_weight",
    "webhook",
    "escalation",
    "canary_inconclusive",
    "policy_fired",
    "manual_route",
    "manual_breaker_reset",
)
#: The usual outcomes; any other short ``[a-z_]`` word is accepted as well.
OUTCOMES = ("ok", "failed", "skipped", "pending")
SEVERITIES = ("info", "warning", "critical")
#: The most records :meth:`Ledger.query` returns.
MAX_QUERY_LIMIT = 1000

_WORD_RE = re.compile(r"[a-z_]{1,40}")
_MAX_REASON = 1000
_MAX_NAME = 200  # target, policy, actor
_MAX_SIGNALS = 32
_MAX_SIGNAL_NAME = 64
_MAX_STRING = 200  # signal string values, strings inside details
_MAX_DETAILS_BYTES = 4096
_MAX_DEPTH = 8  # nesting of details
_ELLIPSIS = "…"

_INDEX_MAX_KEYS = 4096
_READ_BLOCK = 64 * 1024
# A torn tail longer than this is cut without trying to parse it.
_MAX_TAIL_PARSE = 1024 * 1024

SignalValue = float | int | bool | str | None
#: A listener gets every record after it is appended (on the appending thread).
LedgerListener = Callable[["LedgerRecord"], object]


# -- records ---------------------------------------------------------------------------------


def _cut(text: object, limit: int) -> str:
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit else s[: limit - 1] + _ELLIPSIS


def _finite(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _signal_value(value: object) -> SignalValue:
    if value is None or isinstance(value, bool | int):
        return value  # type: ignore[return-value]
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, str):
        return _cut(value, _MAX_STRING)
    try:  # numpy scalars and other numbers
        return _finite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return _cut(value, _MAX_STRING)


def _signals(raw: Mapping[str, object] | None) -> Mapping[str, SignalValue]:
    out: dict[str, SignalValue] = {}
    if raw:
        if not isinstance(raw, Mapping):
            raise TypeError(f"signals must be a mapping, got {type(raw).__name__}")
        for name, value in raw.items():
            if len(out) >= _MAX_SIGNALS:
                break  # insertion order decides which ones are kept
            out[_cut(name, _MAX_SIGNAL_NAME)] = _signal_value(value)
    return MappingProxyType(out)


def _jsonable(value: object, depth: int = 0) -> Any:
    """A JSON-safe copy: str keys, lists for sequences, no NaN, strings capped, depth capped."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, str):
        return _cut(value, _MAX_STRING)
    if depth >= _MAX_DEPTH:
        return _cut(repr(value), _MAX_STRING)
    if isinstance(value, Mapping):
        return {_cut(k, _MAX_STRING): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return _signal_value(value)


def _details(raw: Mapping[str, object] | None) -> Mapping[str, Any]:
    if not raw:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise TypeError(f"details must be a mapping, got {type(raw).__name__}")
    clean = _jsonable(raw)
    size = len(json.dumps(clean, separators=(",", ":")))
    if size > _MAX_DETAILS_BYTES:
        clean = {"truncated": True, "size_bytes": size}
    return MappingProxyType(clean)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerRecord:
    """One healing action. Validated and bounded on creation (see the module docstring).

    ``id`` and ``at`` may be left out when the record is handed to :meth:`Ledger.record`: the
    ledger fills them in. ``action`` and ``outcome`` must be ``[a-z_]{1,40}`` words (they
    become metric labels), ``severity`` one of :data:`SEVERITIES` or ``None``. ``signals`` and
    ``details`` are stored as read-only copies.
    """

    action: str
    target: str
    reason: str = ""
    signals: Mapping[str, SignalValue] = field(default_factory=dict)
    outcome: str = "ok"
    policy: str | None = None
    severity: str | None = None
    actor: str = "auto"
    details: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    at: float | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("action", "outcome"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _WORD_RE.fullmatch(value):
                problems.append(
                    f"{name}: must be a word of 1-40 letters a-z and '_', got {value!r}"
                )
        if self.severity is not None and self.severity not in SEVERITIES:
            problems.append(
                f"severity: must be one of {', '.join(SEVERITIES)} or None, got {self.severity!r}"
            )
        if not isinstance(self.target, str) or not self.target:
            problems.append(f"target: must be a non-empty string, got {self.target!r}")
        if not isinstance(self.actor, str) or not self.actor:
            problems.append(f"actor: must be a non-empty string, got {self.actor!r}")
        if self.at is not None and (
            not isinstance(self.at, int | float)
            or isinstance(self.at, bool)
            or not math.isfinite(self.at)
        ):
            problems.append(f"at: must be finite epoch seconds, got {self.at!r}")
        if problems:
            raise ValueError("invalid ledger record: " + "; ".join(problems))
        set_ = object.__setattr__
        set_(self, "target", _cut(self.target, _MAX_NAME))
        set_(self, "actor", _cut(self.actor, _MAX_NAME))
        set_(self, "reason", _cut("" if self.reason is None else self.reason, _MAX_REASON))
        if self.policy is not None:
            set_(self, "policy", _cut(self.policy, _MAX_NAME) or None)
        set_(self, "signals", _signals(self.signals))
        set_(self, "details", _details(self.details))
        set_(self, "id", _cut(self.id, _MAX_NAME))
        if self.at is not None:
            set_(self, "at", float(self.at))

    @property
    def time(self) -> str:
        """``at`` as ISO-8601 UTC (``2025-01-01T12:00:00.250000Z``); empty when unset."""
        return "" if self.at is None else _iso(self.at)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record, keys in file order (plain, mutable copies)."""
        return {
            "id": self.id,
            "time": self.time,
            "at": self.at,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "severity": self.severity,
            "policy": self.policy,
            "actor": self.actor,
            "reason": self.reason,
            "signals": dict(self.signals),
            "details": dict(self.details),
        }

    def to_json(self) -> str:
        """One line of strict JSON, without the newline."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerRecord:
        """A record from its JSON object; unknown keys are ignored (newer writers)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a ledger record must be a JSON object, got {type(d).__name__}")
        at = d.get("at")
        if at is None and d.get("time"):
            try:
                at = datetime.fromisoformat(str(d["time"])).timestamp()
            except ValueError as exc:
                raise ValueError(f"invalid time {d['time']!r}") from exc
        try:
            return cls(
                id=str(d.get("id") or ""),
                at=at,
                action=d["action"],
                target=d["target"],
                reason=d.get("reason") or "",
                signals=d.get("signals") or {},
                outcome=d.get("outcome") or "ok",
                policy=d.get("policy"),
                severity=d.get("severity"),
                actor=d.get("actor") or "auto",
                details=d.get("details") or {},
            )
        except KeyError as exc:
            raise ValueError(f"a ledger record needs {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    @classmethod
    def from_json(cls, line: str | bytes) -> LedgerRecord:
        """A record from one line; ``ValueError`` when it is not a valid record."""
        try:
            d = _loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a JSON line: {exc}") from None
        return cls.from_dict(d)


# -- files -----------------------------------------------------------------------------------

# The window index's key: (policy, action, target).
_Key = tuple[str | None, str, str]


def _index_entry(d: Mapping[str, Any]) -> tuple[_Key, float] | None:
    """The index key and time of a record's JSON object, without building the record; None
    when the fast path does not apply (the caller then builds the record, which validates)."""
    at, action, target, policy = d.get("at"), d.get("action"), d.get("target"), d.get("policy")
    if (
        type(at) is not float
        or not math.isfinite(at)
        or not isinstance(action, str)
        or not _WORD_RE.fullmatch(action)
        or not isinstance(target, str)
        or not target
        or not (policy is None or isinstance(policy, str))
    ):
        return None
    return (None if not policy else _cut(policy, _MAX_NAME), action, _cut(target, _MAX_NAME)), at


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


# -- the ledger ------------------------------------------------------------------------------


class Ledger:
    """The append-only healing ledger. Thread-safe; see the module docstring for the format.

    ``path=None`` keeps records in memory only (the deque and the window index). Use as a
    context manager or call :meth:`close`.

    :meth:`append` writes and fsyncs on the calling thread (a few milliseconds on a disk):
    healing actions are rare, but code on an event loop that records many at once can use
    ``await asyncio.to_thread(ledger.append, ...)``.
    """

    def __init__(
        self,
        path: Path | str | None,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        fsync: bool = True,
        recent: int = 1000,
        index_horizon_s: float = 8 * 86400.0,
        index_max_per_key: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = []
        for name, value, floor in (
            ("max_bytes", max_bytes, 1),
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
        self._index_max_per_key = index_max_per_key
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[LedgerRecord] = deque(maxlen=recent)
        self._index: dict[_Key, deque[float]] = {}
        self._listeners: list[LedgerListener] = []
        self._counts: Counter[tuple[str, str]] = Counter()
        self._stats: Counter[str] = Counter()
        self._run = os.urandom(6).hex()
        self._seq = 0
        self._fd: int | None = None
        self._size = 0
        self._oldest_at: float | None = None  # of the retained files; read when asked
        self._oldest_stale = False
        self._opened_at = clock()
        self._closed = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
            try:
                self._repair_tail()
                self._load()
            except BaseException:
                self._close_fd()
                raise

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

    def close(self) -> None:
        """Close the file; later appends raise ``RuntimeError``. Idempotent."""
        with self._lock:
            self._closed = True
            self._close_fd()

    # -- files ---------------------------------------------------------------------------------

    def _backup(self, i: int) -> Path:
        assert self.path is not None
        return self.path.with_name(f"{self.path.name}.{i}")

    def _backup_numbers(self) -> list[int]:
        """The numbers of the backups that exist (within ``backups``), ascending.

        One directory listing rather than a lookup per possible backup: rotation stays cheap
        with many backups configured.
        """
        assert self.path is not None
        prefix = self.path.name + "."
        found = []
        with os.scandir(self.path.parent) as entries:
            for entry in entries:
                tail = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
                if tail.isdigit() and tail[0] != "0" and int(tail) <= self.backups:
                    found.append(int(tail))
        return sorted(found)

    def _files_newest_first(self) -> list[Path]:
        assert self.path is not None
        return [self.path, *(self._backup(i) for i in self._backup_numbers())]

    def _open(self) -> None:
        assert self.path is not None
        existed = self.path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size
        if not existed:
            _fsync_dir(self.path.parent)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash during a write), or complete a whole record that only
        lacks its newline."""
        assert self.path is not None and self._fd is not None
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

    def _objects_newest_first(self) -> Iterator[dict[str, Any]]:
        """The JSON objects of the retained files, newest first; other lines counted."""
        for path in self._files_newest_first():
            with contextlib.closing(_reverse_lines(path)) as lines:
                for line in lines:
                    try:
                        d = _loads(line)
                    except ValueError:
                        d = None
                    if isinstance(d, dict):
                        yield d
                    else:
                        self._stats["invalid_lines"] += 1

    def _load(self) -> None:
        """Fill the recent deque and the window index from the files.

        Only the ``recent`` newest lines become records; older ones within the horizon only
        give their index key and time (a few times cheaper than building a record).
        """
        cutoff = self._clock() - self.index_horizon_s
        want = self._recent.maxlen or 0
        recent: list[LedgerRecord] = []
        stamps: list[tuple[_Key, float]] = []
        with contextlib.closing(self._objects_newest_first()) as objects:
            for d in objects:
                entry = None if len(recent) < want else _index_entry(d)
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
            self._index_add(key, at)
        self._oldest_stale = True
        self._stats["loaded"] = len(recent)
        if recent:
            log.info("mlwarden: loaded %d recent healing records from %s", len(recent), self.path)

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
        assert self.path is not None
        # Renamed while still open (POSIX allows it): if a rename fails, the fd stays usable.
        if self.backups > 0:
            for i in reversed(self._backup_numbers()):
                if i < self.backups:
                    os.replace(self._backup(i), self._backup(i + 1))
            os.replace(self.path, self._backup(1))
        else:
            self.path.unlink(missing_ok=True)
        self._close_fd()
        _fsync_dir(self.path.parent)
        self._open()
        self._stats["rotations"] += 1
        self._oldest_stale = True

    def _write(self, data: bytes) -> bool:
        """Append one line (rotating first if needed); False when it could not be written."""
        if self._fd is None:  # a rotation that failed half-way: try the file again
            try:
                self._open()
            except OSError as exc:
                self._stats["write_errors"] += 1
                log.error("mlwarden: could not open the healing ledger %s: %s", self.path, exc)
                return False
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            try:
                self._rotate()
            except OSError as exc:
                # Keep appending to the current file: an oversized file beats a lost record.
                self._stats["write_errors"] += 1
                log.error("mlwarden: could not rotate the healing ledger %s: %s", self.path, exc)
                if self._fd is None:
                    return self._write(data)  # reopens, or counts and gives up
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
        except OSError as exc:
            self._stats["write_errors"] += 1
            # Never leave a torn line for the next record to be glued to.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
                self._size = before
            log.error("mlwarden: could not write to the healing ledger %s: %s", self.path, exc)
            return False
        return True

    # -- writing -------------------------------------------------------------------------------

    def add_listener(self, fn: LedgerListener) -> Callable[[], None]:
        """Call ``fn(record)`` after each append; returns a function that removes it.

        Listeners run on the appending thread, outside the ledger's lock, in the order added.
        One that raises is logged and counted (``listener_errors``); the append goes on.
        """
        with self._lock:
            self._listeners.append(fn)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(fn)

        return remove

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
            if self.path is not None:
                self._write(record.to_json().encode() + b"\n")
            self._recent.append(record)
            assert record.at is not None
            self._index_add((record.policy, record.action, record.target), record.at)
            self._counts[(record.action, record.outcome)] += 1
            self._stats["appended"] += 1
            listeners = tuple(self._listeners)
        for fn in listeners:
            try:
                fn(record)
            except Exception:
                with self._lock:
                    self._stats["listener_errors"] += 1
                log.exception(
                    "mlwarden: a healing ledger listener failed on %s %s",
                    record.action,
                    record.target,
                )
        return record

    def _index_add(self, key: _Key, at: float) -> None:
        stamps = self._index.get(key)
        if stamps is None:
            if len(self._index) >= _INDEX_MAX_KEYS:
                # Evict the key that has been quiet longest.
                stale = min(
                    self._index, key=lambda k: self._index[k][-1] if self._index[k] else -math.inf
                )
                del self._index[stale]
                self._stats["index_keys_evicted"] += 1
            stamps = self._index[key] = deque(maxlen=self._index_max_per_key)
        stamps.append(at)
        cutoff = at - self.index_horizon_s
        while stamps and stamps[0] < cutoff:
            stamps.popleft()

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

        Survives restarts and covers windows longer than the recent deque; see the module
        docstring (and :meth:`coverage_start`) for where its answer stops being complete.
        """
        # Clamped to the horizon, so that the answer is the same before and after a restart.
        since = max(since, self._clock() - self.index_horizon_s)
        with self._lock:
            total = 0
            for (p, a, t), stamps in self._index.items():
                if (
                    (policy is not None and p != policy)
                    or (action is not None and a != action)
                    or (target is not None and t != target)
                ):
                    continue
                total += sum(1 for at in stamps if at >= since and (until is None or at < until))
            return total

    def coverage_start(self) -> float:
        """From when :meth:`count_since` counts every record: the later of the index horizon
        and the oldest record the ledger still holds (its retained files, or for an in-memory
        ledger the time it was created)."""
        horizon = self._clock() - self.index_horizon_s
        with self._lock:
            if self.path is None:
                oldest: float | None = self._opened_at
            else:
                if self._oldest_stale:
                    self._oldest_at, self._oldest_stale = self._first_at(), False
                oldest = self._oldest_at
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
                "listener_errors",
                "index_keys_evicted",
            )
            out: dict[str, Any] = {k: self._stats[k] for k in keys}
            out.update(
                path=None if self.path is None else str(self.path),
                size_bytes=self._size,
                recent=len(self._recent),
            )
            return out
