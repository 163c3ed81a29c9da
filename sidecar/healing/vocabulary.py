"""The words policy conditions may use, derived from the signal sources, and the actions.

Kept apart from the engine so that the policies of the file can be parsed at start-up
(:mod:`~mlwarden.sidecar.healing.policy_config`) without building anything. A signal refers
to the policy's ``target`` upstream (by default the current primary) over the policy's
``window_s``; functions name their upstream. Each word exists because a source in
:mod:`mlwarden.sidecar.signals` declares it.
"""

from __future__ import annotations

from collections.abc import Collection

from mlwarden.sidecar.healing.conditions import FunctionSpec, Kind
from mlwarden.sidecar.signals.fleet import FleetSignals
from mlwarden.sidecar.signals.fleet_drift import FleetDriftSignals
from mlwarden.sidecar.signals.health import HealthSignals
from mlwarden.sidecar.signals.loop import BreakerSignals, CanarySignals, ShadowSignals
from mlwarden.sidecar.signals.source import Signal, declared
from mlwarden.sidecar.signals.windows import WindowSignals

__all__ = ["ACTION_KINDS", "FUNCTIONS", "SIGNALS", "VOCABULARY", "function_specs"]

#: Every signal of every source the policies read, by name.
VOCABULARY: dict[str, Signal] = declared(
    (
        WindowSignals,
        HealthSignals,
        BreakerSignals,
        ShadowSignals,
        CanarySignals,
        FleetSignals,
        FleetDriftSignals,
    )
)

#: Signals of the policy's target upstream, with their kinds.
SIGNALS: dict[str, Kind] = {s.name: s.kind for s in VOCABULARY.values() if s.plain}

#: ``function name -> signal``: ``error_rate_of("v2")`` reads ``error_rate`` of ``v2``.
FUNCTIONS: dict[str, str] = {
    s.function: s.name for s in VOCABULARY.values() if s.function is not None
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
        function: FunctionSpec(("string",), VOCABULARY[signal].kind, check)
        for function, signal in FUNCTIONS.items()
    }
