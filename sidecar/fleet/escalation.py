"""Escalation for a fleet: the leader escalates on the fleet's heals, once per window.

In a fleet a follower's policies still fire and act on its own routes, and their
``policy_fired`` records count in the fleet's sets (:mod:`~mlwarden.sidecar.fleet.counts`);
escalating is the leader's alone (:attr:`Escalation.decides`). On every pass of the fleet's
loop the leader sweeps the policies: one that fired more than ``escalation.threshold`` times
in the fleet within ``escalation.window_s``, or a critical one that fired anywhere since the
last sweep, escalates, at most once per window in the fleet (the window's ``escalation``
records are the fleet's too). So three heals on three replicas are one escalation, where
each replica alone counted one. Redis down: every replica escalates on its own counts, as
without a fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mlwarden.sidecar.fleet.counts import FleetCounts

__all__ = ["FleetEscalation"]


class FleetEscalation:
    """The leader's sweep over ``engine``'s policies (a :class:`PolicyEngine`)."""

    def __init__(
        self,
        engine: Any,
        counts: FleetCounts,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._counts = counts
        self._wall = wall_clock
        self._swept_at: float | None = None

    def sweep(self) -> int:
        """Escalate what the fleet's counts call for; how many escalations were attempted."""
        escalation = self._engine.escalation
        config = escalation.config
        now = self._wall()
        since_sweep = self._swept_at if self._swept_at is not None else now - config.window_s
        self._swept_at = now
        attempted = 0
        for policy in self._engine.policies:
            fired = self._counts.count(now - config.window_s, "policy_fired", policy.name)
            if fired is None:
                continue  # the mirror is not fresh: nothing to judge on
            if policy.severity == "critical":
                recent = self._counts.count(since_sweep, "policy_fired", policy.name) or 0
                if recent:
                    escalation.escalate(policy, "critical policy fired in the fleet", {}, [])
                    attempted += 1
            elif fired > config.threshold:
                reason = (
                    f"fired {fired} times in the fleet within {config.window_s:g}s "
                    f"(more than {config.threshold})"
                )
                escalation.escalate(policy, reason, {"fleet_firings": float(fired)}, [])
                attempted += 1
        return attempted
