"""The blocks of the healing loop: the ledger, healing (the loop and its escalation), and the
shape of the ``policies`` list.

The policies themselves (conditions over the healing vocabulary, actions) are the healing
layer's to parse: :mod:`mlwarden.sidecar.healing.policy_config`. This package checks only that
``policies`` is a list of at most :data:`MAX_POLICIES` entries and hands them over as written
(see :data:`~mlwarden.sidecar.config.sidecar_config.PolicyParser`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlwarden.sidecar.config.checks import (
    boolean,
    http_url,
    number,
    optional,
    seconds,
    show,
    string,
    text,
)
from mlwarden.sidecar.config.schema import Block, Problems, setting

__all__ = [
    "MAX_POLICIES",
    "EscalationConfig",
    "HealingConfig",
    "LedgerConfig",
    "load_healing",
    "load_policy_entries",
]

#: Entries the ``policies`` list may hold.
MAX_POLICIES = 100


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerConfig(Block):
    """The healing ledger: every automatic or manual action, one JSON line, fsynced, rotated
    at ``max_bytes`` keeping ``backups`` files; written by a thread in group commits, at most
    ``max_queued`` lines waiting (beyond: dropped and counted). Without ``path`` it is kept in
    memory only (``/-/events`` still serves it). With ``influx_url`` each record is also written to
    InfluxDB (measurement ``mlwarden_healing``)."""

    _key: ClassVar[str] = "ledger"
    path: str | None = setting(None, optional(text))
    max_bytes: int = setting(10 * 2**20, number(int, ge=4096, le=2**40))
    backups: int = setting(5, number(int, ge=0, le=1000))
    fsync: bool = setting(True, boolean)
    recent: int = setting(1000, number(int, ge=1, le=100_000))
    max_queued: int = setting(10_000, number(int, ge=1, le=1_000_000))
    influx_url: str | None = setting(None, optional(http_url))
    influx_bucket: str = setting("mlwarden", text)
    influx_org: str = setting("", string)
    influx_token: str = setting("", string, repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class EscalationConfig(Block):
    """When healing repeats, tell a person: a policy firing more than ``threshold`` times
    within ``window_s`` (default 3 in 7 days), or a critical one, escalates once per window:
    a Slack-compatible JSON body POSTed to ``webhook_url`` (without one: recorded only)."""

    _key: ClassVar[str] = "healing.escalation"
    webhook_url: str | None = setting(None, optional(http_url), repr=False)
    threshold: int = setting(3, number(int, ge=1, le=10_000))
    window_s: float = setting(7 * 86_400.0, seconds(gt=0, le=366 * 86_400))


@dataclass(frozen=True, kw_only=True, slots=True)
class HealingConfig(Block):
    """The policy loop: evaluated every ``interval_s``. ``default_policies`` (on when no
    ``policies`` are written) gives the tiered defaults; ``retrain_webhook_url`` is what their
    large tier calls (a retraining pipeline's REST endpoint)."""

    _key: ClassVar[str] = "healing"
    interval_s: float = setting(5.0, seconds(gt=0, le=3600))
    default_policies: bool | None = setting(None, optional(boolean))
    retrain_webhook_url: str | None = setting(None, optional(http_url), repr=False)
    escalation: EscalationConfig = field(default_factory=EscalationConfig, metadata={"check": None})


def load_healing(raw: Any, problems: Problems) -> HealingConfig:
    """``healing`` with its nested ``escalation`` block."""
    if raw is None:
        return HealingConfig()
    if not isinstance(raw, Mapping):
        problems.add("healing", f"expected a mapping, got {show(raw)}")
        return HealingConfig()
    raw = dict(raw)
    escalation = EscalationConfig._load(
        raw.pop("escalation", None) or {}, "healing.escalation", problems
    )
    base = HealingConfig._load(raw, "healing", problems)
    if base is None or escalation is None:
        return HealingConfig()
    return dataclasses.replace(base, escalation=escalation)


def load_policy_entries(raw: Any, problems: Problems) -> tuple[Any, ...]:
    """The ``policies`` entries as written (each one's content is the healing layer's)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add("policies", f"expected a list of policies, got {show(raw)}")
        return ()
    if len(raw) > MAX_POLICIES:
        problems.add("policies", f"at most {MAX_POLICIES} policies, got {len(raw)}")
    return tuple(raw[:MAX_POLICIES])
