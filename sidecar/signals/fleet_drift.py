"""Signals of drift judged on the whole fleet's rows (:mod:`mlwarden.sidecar.fleet.drift`).

They read the fleet's last verdict on the upstream whose middleware's counts the fleet sums
(``fleet.drift_upstream``, by default the primary); for any other target, without a fleet,
without a fresh verdict or with Redis down they read ``None`` (unknown), so a condition over
them never holds on missing data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlwarden.sidecar.signals.source import Signal, SignalSource

__all__ = ["FleetDriftSignals"]

_UNKNOWN = {"fleet_drift_detected": None, "fleet_drift_ratio": None}


class FleetDriftSignals(SignalSource):
    """``fleet_drift()``: the fleet's drift component (None: no fleet, or drift off)."""

    SIGNALS = (
        Signal(
            "fleet_drift_detected",
            "bool",
            "drift on the sum of every replica's rows (the fleet leader's verdict)",
        ),
        Signal(
            "fleet_drift_ratio",
            "number",
            "over the fleet's rows, the largest drift test statistic over its threshold "
            "(1 or more: a test fired)",
        ),
    )

    __slots__ = ("_fleet_drift",)

    def __init__(self, fleet_drift: Callable[[], Any]) -> None:
        self._fleet_drift = fleet_drift

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        drift = self._fleet_drift()
        if drift is None or target != drift.target:
            return dict(_UNKNOWN)
        verdict = drift.current()
        if verdict is None or not verdict.get("enough_data"):
            return dict(_UNKNOWN)
        return {
            "fleet_drift_detected": bool(verdict.get("detected")),
            "fleet_drift_ratio": verdict.get("ratio"),
        }
