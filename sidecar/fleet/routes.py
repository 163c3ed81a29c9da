"""Fleet policies: evaluated once for the fleet, their routes applied by every replica.

A policy over ``fleet_*`` signals (:func:`~mlwarden.sidecar.healing.policy_scope.
is_fleet_policy`) reads the same figures on every replica, so :class:`FleetPolicyScope` lets
only the leader evaluate it while Redis answers (with Redis down every replica does, as the
rest of fleet mode decides alone). Its ``route_to_fallback`` / ``restore_primary`` force the
leader's router and are published (:meth:`FleetState.publish_route`, fenced by the leader's
term: a deposed leader's write is refused) right after the tick; every replica's fleet loop
reads the route and forces it once per new version (``fleet_route_followed`` in its ledger,
not a decision: the fleet's one ``policy_fired`` is the leader's). A replica that followed a
remediation remembers it in its engine, so that as the next leader it watches the
remediation instead of firing again for the same incident.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mlwarden.sidecar.fleet.coordinator import Fleet
from mlwarden.sidecar.healing.policy_config import PolicyConfig
from mlwarden.sidecar.healing.policy_scope import is_fleet_policy
from mlwarden.sidecar.healing.ports import RouteControl

__all__ = ["FleetPolicyScope", "FleetRoutes"]

log = logging.getLogger("mlwarden.sidecar.fleet")

#: ``followed(policy, (away, to) | None)``: the engine hears a remediation it did not take.
Followed = Callable[[str, "tuple[str, str] | None"], None]


class FleetRoutes:
    """The fleet's forced route: published by the leader, forced by every replica.

    ``router`` is this replica's; ``record(**fields)`` writes its ledger; ``followed`` is the
    policy engine's :meth:`~mlwarden.sidecar.healing.policies.PolicyEngine.followed`.
    """

    def __init__(
        self,
        fleet: Fleet,
        router: RouteControl,
        *,
        record: Callable[..., None],
        followed: Followed | None = None,
    ) -> None:
        self.fleet = fleet
        self.router = router
        self.followed = followed
        self._record = record
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._applied = 0  # the route's version this replica runs
        self.refused = 0

    def __repr__(self) -> str:
        return f"FleetRoutes({self.fleet.config.name!r}, applied={self._applied})"

    def forced(self, policy: str, away: str, to: str | None) -> None:
        """A fleet policy forced ``to`` here (None: restored): published at once when this
        replica leads, kept local when it decides alone (Redis down)."""
        token = self.fleet.lease.token
        if token is not None and self.fleet.is_leader:
            self._pending = (token, {"route": to, "policy": policy, "away": away})

    async def publish(self) -> None:
        """Send the pending route under the term it was decided in (bounded by Redis's
        timeout); a refused write is recorded and the fleet's route applied instead."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        token, fields = pending
        state = self.fleet.state
        async with asyncio.timeout(self.fleet.config.redis_timeout_s * 4):
            try:
                version = await state.publish_route(token, self.fleet.replica, fields)
            except BaseException:
                if self._pending is None:
                    self._pending = pending  # the fleet's loop tries again, same term
                raise
            if version:
                self._applied = max(self._applied, version)
                return
            self.refused += 1
            log.warning(
                "fleet routes: %s's write refused (term %d deposed)", self.fleet.replica, token
            )
            self._record(
                action="fleet_decision_refused",
                target=str(fields["route"] or fields["away"]),
                reason=f"this replica's term {token} was over: policy {fields['policy']}'s "
                f"route to {fields['route']} was not the fleet's; the fleet's route is applied",
                policy=fields["policy"],
                severity="warning",
            )
            self.fleet.lease.lapse()
            shared = await state.read_route()
        self._applied = 0
        if shared is None:  # the fleet never forced a route: undo this replica's
            if self.router.forced == fields["route"]:
                self.router.force(None)
            if self.followed is not None:
                self.followed(str(fields["policy"]), None)
            return
        self._apply(shared)

    async def follow(self) -> None:
        """One pass of the fleet's loop: force the fleet's route when its version is new."""
        shared = await self.fleet.state.read_route()
        if shared is None or shared.get("version", 0) <= self._applied:
            return
        if shared.get("replica") == self.fleet.replica and shared.get("token") == (
            self.fleet.lease.token
        ):
            self._applied = shared["version"]  # this replica's own write of this term
            return
        self._apply(shared)

    def _apply(self, shared: dict[str, Any]) -> None:
        self._applied = int(shared.get("version", 0))
        route, policy, away = shared.get("route"), shared.get("policy"), shared.get("away")
        if route is not None and route not in self.router.order:
            log.warning("fleet routes: the fleet's route %r is not an upstream here", route)
            return
        changed = self.router.forced != route
        self.router.force(route)
        if self.followed is not None and isinstance(policy, str):
            self.followed(policy, (str(away), route) if route is not None else None)
        if changed:
            self._record(
                action="fleet_route_followed",
                target=str(route if route is not None else self.router.primary),
                reason=f"the fleet's route by {shared.get('replica')} (term {shared.get('token')})"
                f", policy {policy}: "
                + (f"traffic moved from {away} to {route}" if route else "configured order"),
                policy=policy if isinstance(policy, str) else None,
                severity="info",
                signals={"version": float(self._applied)},
            )


class _PublishingRoutes:
    """The router as one fleet policy forces it: locally, then for the fleet."""

    __slots__ = ("_local", "_policy", "_routes")

    def __init__(self, local: RouteControl, routes: FleetRoutes, policy: PolicyConfig) -> None:
        self._local = local
        self._routes = routes
        self._policy = policy

    @property
    def primary(self) -> str:
        return self._local.primary

    @property
    def order(self) -> tuple[str, ...]:
        return self._local.order

    @property
    def forced(self) -> str | None:
        return self._local.forced

    def force(self, name: str | None) -> None:
        away = self._policy.target or self._local.primary
        self._local.force(name)
        self._routes.forced(self._policy.name, away, name)


class FleetPolicyScope:
    """A :class:`~mlwarden.sidecar.healing.policy_scope.PolicyScope` for a fleet's replica:
    fleet policies on the leader (everywhere while Redis is down), the rest everywhere."""

    def __init__(self, fleet: Fleet, routes: FleetRoutes) -> None:
        self.fleet = fleet
        self.fleet_routes = routes
        self._fleet_policy: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"FleetPolicyScope({self.fleet!r})"

    def _is_fleet(self, policy: PolicyConfig) -> bool:
        known = self._fleet_policy.get(policy.name)
        if known is None:
            known = self._fleet_policy[policy.name] = is_fleet_policy(policy)
        return known

    def evaluates(self, policy: PolicyConfig) -> bool:
        if not self._is_fleet(policy):
            return True
        return self.fleet.is_leader or not self.fleet.available

    def routes(self, policy: PolicyConfig, local: RouteControl) -> RouteControl:
        if not self._is_fleet(policy):
            return local
        return _PublishingRoutes(local, self.fleet_routes, policy)

    async def after_tick(self) -> None:
        """Publish what the tick forced, now: followers apply it within one poll."""
        try:
            await self.fleet_routes.publish()
        except Exception as exc:  # Redis failing: the fleet's loop will notice
            log.warning("fleet routes: not published (%s)", exc)
