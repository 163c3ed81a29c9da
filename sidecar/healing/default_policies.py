"""The tiered policies a new user gets without writing one.

Small error increase or drift → recorded only; large → route to the stable version and, with
``healing.retrain_webhook_url``, ask for retraining; critical → route away and escalate.
"""

from __future__ import annotations

from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.healing.conditions import parse_condition
from mlwarden.sidecar.healing.policy_config import PolicyAction, PolicyConfig
from mlwarden.sidecar.healing.vocabulary import SIGNALS, function_specs

__all__ = ["default_policies"]


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
        # The middleware's verdict decides (calibrated for the window's size); PSI sizes it.
        policy("drift-small", "drift_detected", "info", [], for_s=60, cooldown_s=900),
        policy(
            "errors-large",
            "requests >= 50 and error_rate > 0.1",
            "warning",
            large,
            for_s=30,
            cooldown_s=600,
        ),
        policy(
            "drift-large",
            "drift_detected and drift_score > 0.25",
            "warning",
            large,
            for_s=60,
            cooldown_s=600,
        ),
        policy(
            "errors-critical",
            "requests >= 50 and error_rate > 0.5",
            "critical",
            [PolicyAction("route_to_fallback"), PolicyAction("escalate")],
            for_s=10,
            cooldown_s=600,
        ),
    )
