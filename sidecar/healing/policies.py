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

Escalation: a policy that fired more than ``escalation.threshold`` times within
``escalation.window_s``, or a critical one, escalates **once per window**: an ``escalation``
record and a Slack-compatible body to ``escalation.webhook_url``, naming the policy, the
signals, the actions taken and the recent ledger entries.

Never looping: while a policy's remediation is in place it is not fired again; its fallback
is watched instead, and a fallback that also fails is recorded (``remediation_failed``) and
escalated, not routed around again. A policy whose condition holds again after it rolled the
canary back records ``remediation_ineffective`` and escalates.

Tiered defaults (without ``policies``, unless ``healing.default_policies`` is false): small
error increase or drift → recorded only; large → route to the stable version and, with
``healing.retrain_webhook_url``, ask for retraining; critical → route away and escalate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlwarden.sidecar.config import HealingConfig, SidecarConfig
from mlwarden.sidecar.healing.conditions import parse_condition
from mlwarden.sidecar.healing.policy_config import PolicyAction, PolicyConfig
from mlwarden.sidecar.healing.ports import HealingPort
from mlwarden.sidecar.healing.vocabulary import FUNCTIONS, SIGNALS, function_specs

__all__ = ["PolicyEngine", "default_policies"]

log = logging.getLogger("mlwarden.sidecar.healing")

#: Ledger entries an escalation carries.
ESCALATION_RECENT = 10


def default_policies(config: SidecarConfig) -> tuple[PolicyConfig, ...]:
    """The tiers a new user gets without writing a policy (see the module docstring)."""
    names = [u.name for u in config.upstreams]
    functions = function_specs(names)
    retrain = config.healing.retrain_webhook_url
    large: list[PolicyAction] = [PolicyAction("route_to_fallback")]
    if retrain is not None:
        large.append(PolicyAction("webhook", url=retrain, body={"reason": "retrain"}))

    def policy(
        name: str, when: str, severity: str, actions: list[PolicyAction], **timing: float
    ) -> PolicyConfig:
        return PolicyConfig(
            name=name,
            when=when,
            severity=severity,
            actions=tuple(actions),
            condition=parse_condition(when, signals=SIGNALS, functions=functions),
            restore_after_s=300.0 if actions else None,
            **timing,
        )

    return (
        policy(
            "errors-small",
            "requests >= 50 and error_rate > 0.02",
            "info",
            [],
            for_s=60,
            cooldown_s=900,
        ),
        policy("drift-small", "drift_score > 0.1", "info", [], for_s=60, cooldown_s=900),
        policy(
            "errors-large",
            "requests >= 50 and error_rate > 0.1",
            "warning",
            large,
            for_s=30,
            cooldown_s=600,
        ),
        policy("drift-large", "drift_score > 0.25", "warning", large, for_s=60, cooldown_s=600),
        policy(
            "errors-critical",
            "requests >= 50 and error_rate > 0.5",
            "critical",
            [PolicyAction("route_to_fallback"), PolicyAction("escalate")],
            for_s=10,
            cooldown_s=600,
        ),
    )


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
    module docstring. Use :meth:`from_config` for the configured policies plus the defaults."""

    def __init__(
        self,
        policies: tuple[PolicyConfig, ...],
        healing: HealingConfig,
        port: HealingPort,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.policies = policies
        self.healing = healing
        self.port = port
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._states = {p.name: _State() for p in self.policies}

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
                self.tick()
            except Exception:
                log.exception("a healing tick failed; the next one runs as planned")

    # -- one tick -----------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Evaluate each policy once; the names of those that fired."""
        now = self._clock()
        fired = []
        # Policies over the same target and window read the same figures: compute them once.
        signals: dict[tuple[str, float], Mapping[str, Any]] = {}
        for policy in self.policies:
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
        self._record(policy, "policy_fired", target, reason, signals)
        taken = []
        for action in policy.actions:
            taken.append(action.kind)
            self._act(policy, state, action, target, reason, signals)
        wall = self._wall()
        window = self.healing.escalation.window_s
        fired = self.port.count_records(wall - window, policy=policy.name, action="policy_fired")
        threshold = self.healing.escalation.threshold
        if policy.severity == "critical" and "escalate" not in taken:
            self._escalate(policy, f"critical policy fired: {reason}", signals, taken)
        elif fired > threshold and "escalate" not in taken:
            self._escalate(
                policy,
                f"fired {fired} times within {window:g}s (more than {threshold}): {reason}",
                signals,
                taken,
            )

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
                self._record(
                    policy,
                    "fallback",
                    target,
                    f"{reason}: no other upstream is available",
                    signals,
                    "failed",
                )
                self._escalate(policy, f"nowhere to route away from {target}", signals, [kind])
                return
            port.routes.force(to)
            state.routed, state.false_since, state.failure_reported = (target, to), None, False
            self._record(
                policy, "fallback", to, f"{reason}: traffic moved from {target} to {to}", signals
            )
        elif kind == "restore_primary":
            port.routes.force(None)
            self._record(policy, "restore_primary", port.routes.primary, reason, signals)
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
                self._record(
                    policy,
                    "remediation_ineffective",
                    target,
                    why,
                    signals,
                    "failed",
                    severity="critical",
                )
                self._escalate(policy, why, signals, [kind])
            else:
                self._record(
                    policy, "rollback", target, f"{reason}: no canary running", signals, "skipped"
                )
        elif kind == "set_weight":
            canary = port.canary
            if canary is None or canary.state != "analysing":
                self._record(
                    policy,
                    "set_weight",
                    target,
                    f"{reason}: no canary analysing",
                    signals,
                    "skipped",
                )
            else:
                before, canary.weight = canary.weight, float(action.weight_percent or 0.0)
                self._record(
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
            self._webhook(
                policy, action.url or "", body, dict(action.headers or {}), "webhook", signals
            )
        elif kind == "escalate":
            self._escalate(policy, reason, signals, [a.kind for a in policy.actions])

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
            self._record(
                policy, "remediation_failed", to, reason, {}, "failed", severity="critical"
            )
            self._escalate(policy, reason, {}, ["route_to_fallback"])
        if holds:
            state.false_since = None
            return
        if state.false_since is None:
            state.false_since = now
        if policy.restore_after_s is not None and now - state.false_since >= policy.restore_after_s:
            self.port.routes.force(None)
            state.routed = None
            self._record(
                policy,
                "restore_primary",
                away,
                f"{policy.when} false for {policy.restore_after_s:g}s: traffic back to {away}",
                {},
            )

    # -- escalation and webhooks --------------------------------------------------------------

    def _escalate(
        self, policy: PolicyConfig, reason: str, signals: dict[str, Any], actions: list[str]
    ) -> None:
        esc = self.healing.escalation
        wall = self._wall()
        if self.port.count_records(wall - esc.window_s, policy=policy.name, action="escalation"):
            return  # once per window
        recent = self.port.recent_records(ESCALATION_RECENT)
        url = esc.webhook_url
        self._record(
            policy,
            "escalation",
            _host(url) if url else "log",
            reason,
            signals,
            "ok" if url is None else "pending",
            severity="critical",
        )
        if url is None:
            return
        from mlwarden.sidecar.healing.webhooks import slack_body

        body = slack_body(
            title=f"mlwarden: policy {policy.name} escalated",
            severity=policy.severity,
            policy=policy.name,
            reason=reason,
            signals=signals,
            actions=actions,
            recent=recent,
        )
        self._webhook(policy, url, body, {}, "escalation_webhook", signals)

    def _webhook(
        self,
        policy: PolicyConfig,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str],
        what: str,
        signals: dict[str, Any],
    ) -> None:
        host = _host(url)

        def done(result: Any) -> None:
            self._record(
                policy,
                "webhook",
                host,
                f"{what} to {host}: "
                + (
                    f"HTTP {result.status}"
                    if result.ok
                    else f"failed after {result.attempts} attempt(s)"
                    f" ({result.error or result.status})"
                ),
                signals,
                "ok" if result.ok else "failed",
                details={"attempts": result.attempts, "status": result.status},
            )

        if not self.port.send_webhook(
            f"{policy.name}:{what}", url, body, headers=headers, on_result=done
        ):
            self._record(
                policy,
                "webhook",
                host,
                f"{what} to {host} not sent (no sender, or its queue is full)",
                signals,
                "failed",
            )

    def _record(
        self,
        policy: PolicyConfig,
        action: str,
        target: str,
        reason: str,
        signals: Mapping[str, Any],
        outcome: str = "ok",
        *,
        severity: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.port.record(
            action=action,
            target=target,
            reason=reason,
            signals=dict(signals),
            outcome=outcome,
            policy=policy.name,
            severity=severity or policy.severity,
            details=details,
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


def _host(url: str | None) -> str:
    """The host of a URL, for records and logs (a webhook URL may carry a secret path)."""
    from urllib.parse import urlsplit

    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return host if parts.port is None else f"{host}:{parts.port}"
