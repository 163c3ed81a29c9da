"""The healing ledger's record: one healing action, its bounds, and its JSON line.

Every healing action (a breaker opened or closed, a fallback, a rollback, a promotion, a
webhook fired, an escalation, a manual change through the admin API) is one
:class:`LedgerRecord`, validated and bounded when it is created. The file that holds the lines
is :mod:`mlwarden.sidecar.healing.ledger_files`; the ledger that appends, keeps and queries them
is :mod:`mlwarden.sidecar.healing.ledger`.

Format (one line of ``ledger.jsonl``): UTF-8 (in fact ASCII: non-ASCII text is ``\\u``
escaped), one JSON object per line, ``\\n``-terminated, keys always present and in this order::

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
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

try:  # a dependency of the package; several times faster to read the files at start-up
    from orjson import loads
except ImportError:  # pragma: no cover - stay correct without it
    loads = json.loads

__all__ = [
    "ACTIONS",
    "OUTCOMES",
    "SEVERITIES",
    "IndexKey",
    "LedgerRecord",
    "SignalValue",
    "index_entry",
    "loads",
]

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
    "canary_followed",
    "fleet_degraded",
    "fleet_restored",
    "fleet_decision_refused",
    "fleet_route_followed",
)
#: The usual outcomes; any other short ``[a-z_]`` word is accepted as well.
OUTCOMES = ("ok", "failed", "skipped", "pending")
SEVERITIES = ("info", "warning", "critical")

_WORD_RE = re.compile(r"[a-z_]{1,40}")
_MAX_REASON = 1000
_MAX_NAME = 200  # target, policy, actor
_MAX_SIGNALS = 32
_MAX_SIGNAL_NAME = 64
_MAX_STRING = 200  # signal string values, strings inside details
_MAX_DETAILS_BYTES = 4096
_MAX_DEPTH = 8  # nesting of details
_ELLIPSIS = "…"

SignalValue = float | int | bool | str | None
#: What the ledger's window index counts by: (policy, action, target).
IndexKey = tuple[str | None, str, str]


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

    ``id`` and ``at`` may be left out when the record is handed to the ledger's ``record()``:
    the ledger fills them in. ``action`` and ``outcome`` must be ``[a-z_]{1,40}`` words (they
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
            d = loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a JSON line: {exc}") from None
        return cls.from_dict(d)


def index_entry(d: Mapping[str, Any]) -> tuple[IndexKey, float] | None:
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
