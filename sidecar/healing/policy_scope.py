"""Where a policy runs: on every replica, or once for the fleet.

A policy whose condition reads a fleet-wide figure (a signal named ``fleet_…``, e.g.
``fleet_error_rate``) is a *fleet policy*: every replica would read the same values and fire
the same remediation, so in a fleet it runs on the leader alone and its route actions are
the fleet's (:mod:`mlwarden.sidecar.fleet.routes`). The engine asks a :class:`PolicyScope`
whether to evaluate a policy this tick and through which routes it acts, so that fleet mode
is one object given to the engine, not flags threaded through its functions.
"""

from __future__ import annotations

from typing import Protocol

from mlwarden.sidecar.healing.policy_config import PolicyConfig
from mlwarden.sidecar.healing.ports import RouteControl

__all__ = ["FLEET_PREFIX", "EveryReplica", "PolicyScope", "is_fleet_policy"]

#: Signals whose names start so are the fleet's figures, the same on every replica.
FLEET_PREFIX = "fleet_"


def is_fleet_policy(policy: PolicyConfig) -> bool:
    """The condition reads at least one fleet-wide signal."""
    return any(name.startswith(FLEET_PREFIX) for name in policy.condition.signals)


class PolicyScope(Protocol):
    """Which policies this replica evaluates, and the routes each acts through."""

    def evaluates(self, policy: PolicyConfig) -> bool:
        """Evaluate ``policy`` on this replica now."""
        ...

    def routes(self, policy: PolicyConfig, local: RouteControl) -> RouteControl:
        """What ``policy``'s route actions force (``local``: this replica's router)."""
        ...

    async def after_tick(self) -> None:
        """Once a tick has acted (the fleet publishes the routes it forced)."""
        ...


class EveryReplica:
    """Without a fleet: every policy runs here and acts on this replica's routes."""

    __slots__ = ()

    def evaluates(self, policy: PolicyConfig) -> bool:
        return True

    def routes(self, policy: PolicyConfig, local: RouteControl) -> RouteControl:
        return local

    async def after_tick(self) -> None:
        return None

    def __repr__(self) -> str:
        return "EveryReplica()"
