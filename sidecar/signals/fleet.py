"""The fleet's figures as policy signals: ``fleet_requests``, ``fleet_error_rate``,
``fleet_p99_latency_seconds``.

A policy over ``error_rate`` judges this replica's share of the traffic; one over
``fleet_error_rate`` judges every replica's, from PromQL at ``fleet.prometheus_url`` (the
queries are :class:`~mlwarden.sidecar.signals.prometheus.PrometheusSignals`', the canary's
with ``canary.source: prometheus``). Such a policy is a *fleet policy*: it runs on the
fleet's leader only (:mod:`mlwarden.sidecar.healing.policy_scope`). The policy loop awaits
:meth:`FleetSignals.refresh` before each tick; a value is None without a Prometheus, when a
query failed, or while a refresh is under way: a condition over it is unknown, never true.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlwarden.sidecar.signals.prometheus import PrometheusSignals
from mlwarden.sidecar.signals.source import Signal, SignalSource

__all__ = ["FleetSignals"]

#: Each fleet signal and the PrometheusSignals figure it is.
_FIGURES = {
    "fleet_requests": "requests",
    "fleet_error_rate": "error_rate",
    "fleet_p99_latency_seconds": "p99_latency_seconds",
}


class FleetSignals(SignalSource):
    """The target's figures over every replica, read through ``prometheus`` (None: no
    Prometheus configured, every value unknown)."""

    SIGNALS = (
        Signal(
            "fleet_requests",
            "number",
            "requests to the target over the window, over every replica, from PromQL",
        ),
        Signal(
            "fleet_error_rate",
            "number",
            "share of the target's attempts that failed, over every replica, from PromQL",
        ),
        Signal(
            "fleet_p99_latency_seconds",
            "number",
            "99th percentile of the target's attempt latency, over every replica, from PromQL",
        ),
    )

    __slots__ = ("_fetched", "prometheus")

    def __init__(self, prometheus: PrometheusSignals | None) -> None:
        self.prometheus = prometheus
        self._fetched: dict[tuple[str, float], dict[str, float | None]] = {}

    def __repr__(self) -> str:
        url = None if self.prometheus is None else self.prometheus.url
        return f"FleetSignals({url!r})"

    async def refresh(self, targets: Iterable[str], window_s: float) -> None:
        """Query each target; a target any of whose queries failed reads as unknown (a
        failed ``requests`` query would otherwise read as no traffic)."""
        prometheus = self.prometheus
        if prometheus is None:
            return
        wanted = tuple(dict.fromkeys(targets))
        # Unknown until fetched: a cancelled (timed-out) refresh leaves nothing stale behind.
        for target in wanted:
            self._fetched.pop((target, window_s), None)
        fetched = {}
        for target in wanted:
            errors = prometheus.errors_total
            # One target per refresh: the shared instance keeps only its last refresh's figures.
            await prometheus.refresh((target,), window_s)
            figures = prometheus.read(target, window_s)
            failed = prometheus.errors_total > errors
            fetched[(target, window_s)] = {
                name: None if failed else figures.get(figure) for name, figure in _FIGURES.items()
            }
        self._fetched.update(fetched)
        if len(self._fetched) > 64:  # bounded: the policies' (target, window) pairs only
            self._fetched = fetched

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        return dict(self._fetched.get((target, window_s)) or dict.fromkeys(_FIGURES))
