"""The ``fleet:`` block: many sidecar replicas acting as one, through Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlwarden.sidecar.config.checks import (
    boolean,
    http_url,
    optional,
    redis_address,
    seconds,
    string,
    text,
)
from mlwarden.sidecar.config.schema import Block, setting

__all__ = ["FleetConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetConfig(Block):
    """Replicas of one service sharing their decisions through the Redis at ``redis_url``:
    the holder of a lease (``lease_ttl_s``, renewed every third of it, with a fencing token
    per term) runs the canary analysis and publishes its decisions; the others apply them
    within ``poll_interval_s``. ``name`` keys the fleet's state in Redis (one per service);
    ``replica`` names this sidecar (empty: host name and process id). Redis down: each
    replica decides alone, recorded in its ledger, until it is back. ``prometheus_url``: a
    Prometheus scraping every replica, read by the policies' ``fleet_*`` signals (the
    fleet's figures, not this replica's share; None: those signals are unknown)."""

    _key: ClassVar[str] = "fleet"
    redis_url: str = setting(check=redis_address, repr=False)
    name: str = setting("mlwarden", text)
    replica: str = setting("", string)
    lease_ttl_s: float = setting(10.0, seconds(ge=1, le=300))
    poll_interval_s: float = setting(1.0, seconds(gt=0, le=60))
    redis_timeout_s: float = setting(0.5, seconds(gt=0, le=10))
    drift: bool = setting(True, boolean)
    drift_upstream: str = setting("", string)
    drift_model: str = setting("", string)
    drift_interval_s: float = setting(5.0, seconds(ge=0.1, le=300))
    prometheus_url: str | None = setting(None, optional(http_url))
