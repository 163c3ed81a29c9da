"""The canary decided once for a fleet: the lease's holder analyses, the others follow.

:class:`FleetCanary` replaces the canary's own loop when a ``fleet:`` block is configured.
Every :attr:`~mlwarden.sidecar.fleet.coordinator.Fleet.interval_s`:

- the leader, on the canary's own ``interval_s``, analyses (:meth:`CanaryController.tick`);
  after any change of the canary (a step, a promotion, a rollback, also one its breaker
  caused) it publishes the new state under its fencing token. A refused write (this replica
  was deposed meanwhile) is recorded (``fleet_decision_refused``) and the fleet's state
  adopted instead. A replica that has just won the lease first adopts the fleet's last
  decision, so a takeover continues the canary where the previous leader left it and
  decides nothing twice.
- a follower reads the fleet's state and adopts a version it has not applied yet
  (:meth:`CanaryController.adopt`: weight, step, state and routing; recorded as
  ``canary_followed``, not as a decision of its own);
- Redis unavailable: the replica analyses alone, as a sidecar without a fleet does.
  Afterwards a rollback wins: a replica that rolled back alone does not adopt the fleet's
  state of a canary still running; as the leader it publishes its rollback, as a follower it
  proposes it, and the leader rolls the fleet back at its next pass (``rollback`` recorded
  once, naming the proposer). Anything else it decided alone (a step, a promotion, on its
  share of the traffic) gives way: it applies the fleet's state again, even one it had
  applied before (``canary_followed``, "back from deciding alone"), so no replica keeps a
  weight the fleet did not decide.

The analysis reads what the canary's signal source gives: with ``canary.source: prometheus``
the whole fleet's figures (every replica's series), else the leader's own share of the
traffic (as valid, and slower to conclude).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mlwarden.sidecar.fleet.coordinator import Fleet
from mlwarden.sidecar.routing.canary import CanaryController

__all__ = ["FleetCanary"]

_RUNNING = ("analysing", "promoted")

log = logging.getLogger("mlwarden.sidecar.fleet")


class FleetCanary:
    """See the module docstring; ``record(**fields)`` writes this sidecar's ledger."""

    def __init__(
        self,
        canary: CanaryController,
        fleet: Fleet,
        *,
        record: Callable[..., None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.canary = canary
        self.fleet = fleet
        self._record = record
        self._clock = clock
        self._sleep = sleep
        self._applied = 0  # the fleet state's version this replica runs
        self._published: tuple[str, float, int] | None = None
        self._led_term: int | None = None
        self._fleet_over = False  # the fleet's state of the canary is over too
        self._alone = False  # a pass ran with Redis down: this replica decided alone
        self._reconciling = False  # the next adopted state undoes decisions taken alone
        self._last_analysis = clock()
        canary.decides = self.decides

    def decides(self) -> bool:
        """This replica takes the canary's decisions: it leads, or Redis is down."""
        return self.fleet.is_leader or not self.fleet.available

    async def run(self) -> None:
        c = self.canary
        self._last_analysis = self._clock()
        try:
            # Until the canary is over here and for the fleet: a replica that ended it alone
            # (Redis down) stays to publish or propose its rollback once Redis is back.
            while c.state in _RUNNING or not self._fleet_over:
                await self._sleep(self.fleet.interval_s)
                try:
                    await self._pass()
                except Exception as exc:  # Redis failing between the fleet's passes
                    log.warning("fleet canary: %s (the fleet's loop will notice)", exc)
        finally:
            closing = getattr(c.fleet, "aclose", None)
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing()

    async def _pass(self) -> None:
        """One pass: lead, follow, or decide alone (see the module docstring)."""
        c, fleet = self.canary, self.fleet
        if not fleet.available:
            self._alone = True
        elif self._alone:
            # Back from deciding alone: the fleet's state is applied again even when its
            # version is one this replica had applied before (its own steps or promotion
            # since are undone; its own rollback still wins, in _follow).
            self._alone = False
            self._applied = 0
            self._reconciling = True
        if fleet.is_leader:
            if self._led_term != fleet.lease.token:
                # A new term: from the fleet's last decision (or this replica's own
                # rollback, which wins and is published below).
                keep_own = await self._follow()
                self._led_term = fleet.lease.token
                self._published = None if keep_own else self._current()
            await self._take_proposals()
            await self._analyse_when_due()
            await self._publish()
        elif fleet.available:
            self._led_term = None
            await self._follow()
        else:
            await self._analyse_when_due()  # alone until Redis is back
        if fleet.available and c.state not in _RUNNING:
            shared = await fleet.state.read_canary(c.candidate)
            self._fleet_over = shared is not None and shared.get("state") not in _RUNNING

    async def _analyse_when_due(self) -> None:
        if self._clock() - self._last_analysis >= self.canary.config.interval_s:
            self._last_analysis = self._clock()
            await self._analyse()

    def _current(self) -> tuple[str, float, int]:
        c = self.canary
        return (c.state, c.weight, c.step)

    async def _analyse(self) -> None:
        c = self.canary
        if c.fleet is not None and c.state == "analysing":
            await c.fleet.refresh((c.candidate, c.stable), c.config.interval_s)
        c.tick()

    async def _publish(self) -> None:
        current = self._current()
        if current == self._published:
            return
        token = self.fleet.lease.token
        if token is None or not self.fleet.is_leader:
            return
        state, weight, step = current
        version = await self.fleet.state.publish_canary(
            self.canary.candidate,
            token,
            self.fleet.replica,
            {"state": state, "weight": weight, "step": step},
        )
        if version:
            self._published = current
            self._applied = version
            return
        log.warning("fleet canary: %s's write refused (term %d deposed)", self.fleet.replica, token)
        self._record(
            action="fleet_decision_refused",
            target=self.canary.candidate,
            reason=f"this replica's term {token} was over: its canary {state} at {weight:g}% "
            "was not the fleet's; the fleet's state is applied instead",
            severity="warning",
        )
        self.fleet.lease.lapse()
        await self._follow()

    async def _take_proposals(self) -> None:
        proposals = await self.fleet.state.take_proposals(self.canary.candidate)
        c = self.canary
        if proposals and c.state in _RUNNING:
            replica, reason = sorted(proposals.items())[0]
            c.rollback(f"proposed by {replica}, which rolled back alone: {reason}")

    async def _follow(self) -> bool:
        """Adopt the fleet's newer decision; True when this replica's own rollback stands
        instead (to be published by the leader, or proposed to it)."""
        shared: dict[str, Any] | None = await self.fleet.state.read_canary(self.canary.candidate)
        c = self.canary
        running = shared is None or shared.get("state") in _RUNNING
        if c.state == "rolled_back" and running:
            # This replica rolled back on its own (deciding alone): the rollback wins.
            if self.fleet.is_leader:
                self._published = None  # published by the caller's next _publish()
            else:
                await self.fleet.state.propose_rollback(
                    c.candidate, self.fleet.replica, c.history[-1].reason if c.history else ""
                )
            return True
        if shared is None or shared.get("version", 0) <= self._applied:
            return False
        self._applied = shared["version"]
        changed = self.canary.adopt(
            str(shared.get("state", "analysing")),
            float(shared.get("weight", self.canary.weight)),
            int(shared.get("step", self.canary.step)),
        )
        alone, self._reconciling = self._reconciling, False
        if changed:
            self._record(
                action="canary_followed",
                target=self.canary.candidate,
                reason=("back from deciding alone, " if alone else "")
                + f"the fleet's decision by {shared.get('replica')} (term "
                f"{shared.get('token')}): {shared.get('state')} at {shared.get('weight')}%",
                severity="info",
                signals={"version": float(shared["version"])},
            )
        return False
