"""The healing policies: signals → condition → actions → ledger → escalation.

Every ``healing.interval_s`` the engine evaluates each policy's condition (parsed at start-up
by :mod:`~mlwarden.sidecar.healing.conditions`) over its target's signals: the sidecar's own
windows of attempts, the target's last health report (drift, the middleware's error rate), the
shadow's agreement and the canary's weight. A condition that has been *true* (unknown is not
true) for ``for_s`` fires the policy: one ``policy_fired`` ledger record with the signal values
it read, then each action in order, each recorded with its outcome. The policy then rests for
``cooldown_s``.

Actions:

- ``route_to_fallback``: force the route to the first available upstream after the target
  in the configured order (the stable version); the remediation stays in place until the
  condition has been false for ``restore_after_s`` (then ``restore_primary`` is recorded), or a
  person or another policy restores it;
- ``restore_primary``: the configured order again;
- ``rollback_canary`` / ``set_weight``: the canary's;
- ``webhook``: POST the policy's JSON body (with the policy, the reason and the signals added
  under ``"mlwarden"``) with retries; the delivery's outcome is recorded;
- ``escalate``: escalate now (once per window, as any escalation).

Escalation (:mod:`~mlwarden.sidecar.healing.escalation`): a policy that fired more than
``escalation.threshold`` times within ``escalation.window_s``, or a critical one, escalates
**once per window**.

Never looping: while a policy's remediation is in place it is not fired again; its fallback
is watched instead, and a fallback that also fails is recorded (``remediation_failed``) and
escalated, not routed around again. A policy whose condition holds again after it rolled the
canary back records ``remediation_ineffective`` and escalates.

In a fleet (:mod:`~mlwarden.sidecar.healing.policy_scope`), a policy over ``fleet_*``
signals runs on the leader alone and its route actions reach every replica; before each
tick the loop refreshes the remote signals of the policies it evaluates, at most
``healing.interval_s`` (a slow Prometheus delays a tick, never stalls the loop).

Tiered defaults (:mod:`~mlwarden.sidecar.healing.default_policies`) apply without
``policies``, unless ``healing.default_policies`` is false. The engine acts through a
:class:`~mlwarden.sidecar.healing.ports.HealingPort`, never on the sidecar itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlwarden.sidecar.config import HealingConfig, SidecarConfig
from mlwarden.sidecar.healing.default_policies import default_policies
from mlwarden.sidecar.healing.escalation import Escalation
from mlwarden.sidecar.healing.policy_config import PolicyAction, PolicyConfig
from mlwarden.sidecar.healing.policy_scope import EveryReplica, PolicyScope
from mlwarden.sidecar.healing.ports import HealingPort, RouteControl
from mlwarden.sidecar.healing.vocabulary import FUNCTIONS

__all__ = ["PolicyEngine"]

log = logging.getLogger("mlwarden.sidecar.healing")


@dataclass(slots=True)
class _State:
    true_since: float | None = None
    false_since: float | None = None
    last_fired: float | None = None
    routed: tuple[str, str] | None = None  # (away from, to) while the remediation holds
    failure_reported: bool = False
    rolled_back: bool = False  # this policy rolled the canary back


class PolicyEngine:
    """Evaluates ``policies`` every ``healing.interval_s``, acting through ``port``; see the
    module docstring. Use :meth:`from_config` for the configured policies plus the defaults.
    ``scope`` says which policies run here and through which routes (default: all, here)."""

    def __init__(
        self,
        policies: tuple[PolicyConfig, ...],
        healing: HealingConfig,
        port: HealingPort,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
        scope: PolicyScope | None = None,
    ) -> None:
        self.policies = policies
        self.scope: PolicyScope = scope if scope is not None else EveryReplica()
        self.healing = healing
        self.port = port
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._states = {p.name: _State() for p in self.policies}
        self.escalation = Escalation(healing.escalation, port, wall_clock=wall_clock)

    @classmethod
    def from_config(cls, config: SidecarConfig, port: HealingPort, **runtime: Any) -> PolicyEngine:
        """The configured policies, then the default tiers unless turned off (on by default
        only when no policy is configured)."""
        raw = [p for p in config.policies if not isinstance(p, PolicyConfig)]
        if raw:
            raise TypeError(
                "the configuration's policies are not parsed: load it with "
                "mlwarden.sidecar.settings (load_sidecar_config, sidecar_config_from_mapping)"
            )
        use_defaults = config.healing.default_policies
        if use_defaults is None:
            use_defaults = not config.policies
        policies = (*config.policies, *(default_policies(config) if use_defaults else ()))
        return cls(policies, config.healing, port, **runtime)

    async def run(self) -> None:
        """Evaluate every ``healing.interval_s`` until cancelled; a failing tick is logged."""
        while True:
            await self._sleep(self.healing.interval_s)
            try:
                await self.refresh()
                self.tick()
                await self.scope.after_tick()
            except Exception:
                log.exception("a healing tick failed; the next one runs as planned")

    # -- one tick -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch the remote signals of the targets this replica evaluates, bounded by one
        interval: a timeout leaves those signals unknown for the tick, never stale."""
        wanted: dict[float, tuple[set[str], set[str]]] = {}
        for policy in self.policies:
            if self.scope.evaluates(policy):
                targets, names = wanted.setdefault(policy.window_s, (set(), set()))
                targets.add(policy.target or self.port.routes.primary)
                names.update(policy.condition.signals)
        if not wanted:
            return
        try:
            async with asyncio.timeout(self.healing.interval_s):
                for window_s, (targets, names) in wanted.items():
                    await self.port.refresh_signals(sorted(targets), window_s, names)
        except TimeoutError:
            log.warning(
                "the policies' signals were not fetched within %gs: unknown this tick",
                self.healing.interval_s,
            )

    def tick(self) -> list[str]:
        """Evaluate each policy once; the names of those that fired."""
        now = self._clock()
        fired = []
        # Policies over the same target and window read the same figures: compute them once.
        signals: dict[tuple[str, float], Mapping[str, Any]] = {}
        for policy in self.policies:
            if not self.scope.evaluates(policy):
                continue  # the fleet's leader evaluates it (policy_scope)
            state = self._states[policy.name]
            target = policy.target or self.port.routes.primary
            key = (target, policy.window_s)
            if key not in signals:
                signals[key] = self._signals(target, policy.window_s)
            explanation = policy.condition.explain(signals[key], self._functions(policy.window_s))
            holds = explanation.result is True
            if state.routed is not None:
                self._watch(policy, state, holds, now)
                continue
            if not holds:
                state.true_since = None
                continue
            if state.true_since is None:
                state.true_since = now
            if now - state.true_since < policy.for_s:
                continue
            if state.last_fired is not None and now - state.last_fired < policy.cooldown_s:
                continue
            state.last_fired = now
            state.true_since = None
            self._fire(policy, state, target, explanation.values)
            fired.append(policy.name)
        return fired

    def followed(self, name: str, routed: tuple[str, str] | None) -> None:
        """The fleet's leader put policy ``name``'s remediation in place (``routed``: away
        from, to) or ended it (None): this replica, should it lead next, watches that
        remediation instead of firing the policy again for the same incident."""
        state = self._states.get(name)
        if state is None:
            return
        state.routed, state.false_since, state.failure_reported = routed, None, False
        state.true_since = None
        if routed is not None:
            state.last_fired = self._clock()  # the fleet's firing: its cooldown holds here

    def _routes(self, policy: PolicyConfig) -> RouteControl:
        return self.scope.routes(policy, self.port.routes)

    def _signals(self, target: str, window_s: float) -> Mapping[str, Any]:
        return self.port.read_signals(target, window_s)

    def _functions(self, window_s: float) -> Mapping[str, Callable[..., Any]]:
        read = self.port.read_signal
        return {
            function: (lambda name, signal=signal: read(signal, name, window_s))
            for function, signal in FUNCTIONS.items()
        }

    # -- firing -------------------------------------------------------------------------------

    def _fire(
        self, policy: PolicyConfig, state: _State, target: str, signals: dict[str, Any]
    ) -> None:
        reason = f"{policy.when} held for {policy.for_s:g}s on {target}"
        log.warning("policy %s fired: %s %s", policy.name, reason, signals)
        self.escalation.record(policy, "policy_fired", target, reason, signals)
        taken = []
        for action in policy.actions:
            taken.append(action.kind)
            self._act(policy, state, action, target, reason, signals)
        if "escalate" in taken:
            return
        if policy.severity == "critical":
            self.escalation.escalate(policy, f"critical policy fired: {reason}", signals, taken)
        elif (repeated := self.escalation.repeated(policy)) is not None:
            self.escalation.escalate(policy, f"{repeated}: {reason}", signals, taken)

    def _act(
        self,
        policy: PolicyConfig,
        state: _State,
        action: PolicyAction,
        target: str,
        reason: str,
        signals: dict[str, Any],
    ) -> None:
        port = self.port
        kind = action.kind
        if kind == "route_to_fallback":
            to = next((n for n in port.routes.order if n != target and port.is_available(n)), None)
            if to is None:
                self.escalation.record(
                    policy,
                    "fallback",
                    target,
                    f"{reason}: no other upstream is available",
                    signals,
                    "failed",
                )
                self.escalation.escalate(
                    policy, f"nowhere to route away from {target}", signals, [kind]
                )
                return
            self._routes(policy).force(to)
            state.routed, state.false_since, state.failure_reported = (target, to), None, False
            self.escalation.record(
                policy, "fallback", to, f"{reason}: traffic moved from {target} to {to}", signals
            )
        elif kind == "restore_primary":
            self._routes(policy).force(None)
            self.escalation.record(policy, "restore_primary", port.routes.primary, reason, signals)
        elif kind == "rollback_canary":
            canary = port.canary
            if canary is not None and canary.state in ("analysing", "promoted"):
                canary.rollback(f"policy {policy.name}: {reason}", signals)
                state.rolled_back = True
            elif state.rolled_back:
                # This policy rolled the canary back before and its condition holds again:
                # the rollback did not help. Say so (once) and call a person; do not loop.
                if state.failure_reported:
                    return
                state.failure_reported = True
                why = f"{reason}: still true after this policy's rollback"
                self.escalation.record(
                    policy,
                    "remediation_ineffective",
                    target,
                    why,
                    signals,
                    "failed",
                    severity="critical",
                )
                self.escalation.escalate(policy, why, signals, [kind])
            else:
                self.escalation.record(
                    policy, "rollback", target, f"{reason}: no canary running", signals, "skipped"
                )
        elif kind == "set_weight":
            canary = port.canary
            if canary is None or canary.state != "analysing":
                self.escalation.record(
                    policy,
                    "set_weight",
                    target,
                    f"{reason}: no canary analysing",
                    signals,
                    "skipped",
                )
            else:
                before, canary.weight = canary.weight, float(action.weight_percent or 0.0)
                self.escalation.record(
                    policy,
                    "set_weight",
                    canary.candidate,
                    f"{reason}: weight {before:g}% -> {canary.weight:g}%",
                    signals,
                )
        elif kind == "webhook":
            body = {
                **(action.body or {}),
                "mlwarden": {
                    "policy": policy.name,
                    "severity": policy.severity,
                    "target": target,
                    "reason": reason,
                    "signals": signals,
                },
            }
            self.escalation.webhook(
                policy, action.url or "", body, dict(action.headers or {}), "webhook", signals
            )
        elif kind == "escalate":
            self.escalation.escalate(policy, reason, signals, [a.kind for a in policy.actions])

    def _watch(self, policy: PolicyConfig, state: _State, holds: bool, now: float) -> None:
        """A remediation in place: restore when the condition has cleared for long enough;
        report (once) and escalate a fallback that fails too; never route again."""
        assert state.routed is not None
        away, to = state.routed
        if self.port.routes.forced != to:
            state.routed = None  # restored or changed by a person or another policy
            return
        if not self.port.is_available(to) and not state.failure_reported:
            state.failure_reported = True
            reason = (
                f"the fallback {to} is failing too, after policy {policy.name} moved "
                f"traffic from {away}"
            )
            self.escalation.record(
                policy, "remediation_failed", to, reason, {}, "failed", severity="critical"
            )
            self.escalation.escalate(policy, reason, {}, ["route_to_fallback"])
        if holds:
            state.false_since = None
            return
        if state.false_since is None:
            state.false_since = now
        if policy.restore_after_s is not None and now - state.false_since >= policy.restore_after_s:
            self._routes(policy).force(None)
            state.routed = None
            self.escalation.record(
                policy,
                "restore_primary",
                away,
                f"{policy.when} false for {policy.restore_after_s:g}s: traffic back to {away}",
                {},
            )

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready, for ``/-/status``."""
        now = self._clock()
        return {
            p.name: {
                "when": p.when,
                "severity": p.severity,
                "actions": [a.kind for a in p.actions],
                "holding_for_s": (
                    None
                    if (s := self._states[p.name]).true_since is None
                    else round(now - s.true_since, 3)
                ),
                "remediation": None
                if s.routed is None
                else {"from": s.routed[0], "to": s.routed[1]},
            }
            for p in self.policies
        }
