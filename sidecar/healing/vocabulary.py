"""The words policy conditions may use: signal names and functions, with their kinds.

Kept apart from the engine so that the policies of the file can be parsed at start-up
(:mod:`~mlwarden.sidecar.healing.policy_config`) without importing the proxy. A signal refers
to the policy's ``target`` upstream (by default the current primary) over the policy's
``window_s``; functions name their upstream.
"""

from __future__ import annotations

from collections.abc import Collection

from mlwarden.sidecar.healing.conditions import FunctionSpec, Kind

__all__ = ["ACTION_KINDS", "SIGNALS", "function_specs"]

#: Signals of the policy's target upstream.
SIGNALS: dict[str, Kind] = {
    # from the sidecar's own windows of attempts
    "requests": "number",  # attempts in the window
    "error_rate": "number",  # 5xx and no-answer share of them
    "p50_latency_seconds": "number",
    "p95_latency_seconds": "number",
    "p99_latency_seconds": "number",
    # from the middleware's health report (the last probe)
    "drift_score": "number",  # the largest PSI over the features
    "drift_detected": "bool",
    "health_error_rate": "number",  # the middleware's own window
    "health_p99_latency_seconds": "number",
    # live quality from ground-truth labels (the middleware's quality block)
    "accuracy": "number",
    "f1": "number",
    "mae": "number",
    "rmse": "number",
    "labelled_samples": "number",  # how many labels the figures rest on
    # from the rest of the loop
    "shadow_agreement": "number",  # agreement rate of the shadow copies (0-1)
    "canary_weight_percent": "number",
}

#: The actions a policy may take (see :mod:`mlwarden.sidecar.healing.policies`).
ACTION_KINDS = (
    "route_to_fallback",
    "restore_primary",
    "rollback_canary",
    "set_weight",
    "webhook",
    "escalate",
)


def function_specs(upstreams: Collection[str]) -> dict[str, FunctionSpec]:
    """``breaker_open("v2")``, ``healthy("v2")``, ``error_rate_of("v2")``,
    ``drift_score_of("v2")``: the name is checked against the configured upstreams."""
    known = sorted(upstreams)

    def check(args: tuple[object, ...]) -> str | None:
        name = args[0]
        if name not in upstreams:
            return f"unknown upstream {name!r} (known: {', '.join(known)})"
        return None

    return {
        "breaker_open": FunctionSpec(("string",), "bool", check),
        "healthy": FunctionSpec(("string",), "bool", check),
        "error_rate_of": FunctionSpec(("string",), "number", check),
        "drift_score_of": FunctionSpec(("string",), "number", check),
    }
