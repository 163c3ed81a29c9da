"""What the healing policies may read and do: the port they act through.

The policy engine never holds the sidecar: it is given a :class:`HealingPort`, which the
composition root (:mod:`mlwarden.sidecar.app`) implements over the router, the canary, the
signal board, the ledger and the webhook sender. Tests implement it with plain objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["CanaryControl", "HealingPort", "RouteControl"]


class RouteControl(Protocol):
    """The routing order: the primary, the order with a forced route first, forcing."""

    @property
    def primary(self) -> str: ...
    @property
    def order(self) -> tuple[str, ...]: ...
    @property
    def forced(self) -> str | None: ...
    def force(self, name: str | None) -> None: ...


class CanaryControl(Protocol):
    """The running canary, as far as a policy may touch it."""

    candidate: str
    state: str
    weight: float

    def rollback(self, reason: str, signals: Mapping[str, Any] | None = None) -> None: ...


class HealingPort(Protocol):
    """Everything a policy reads and does. ``canary`` is None without a canary block."""

    @property
    def routes(self) -> RouteControl: ...
    @property
    def canary(self) -> CanaryControl | None: ...

    def is_available(self, name: str) -> bool:
        """Healthy (or unchecked) and its breaker not open."""
        ...

    def read_signals(self, target: str, window_s: float) -> Mapping[str, Any]:
        """Every signal of the vocabulary for ``target`` (None where unknown)."""
        ...

    def read_signal(self, name: str, upstream: str, window_s: float) -> Any:
        """One signal of ``upstream`` (what a function such as ``error_rate_of`` reads)."""
        ...

    def record(self, **fields: Any) -> None:
        """One ledger record (never raises)."""
        ...

    def count_records(self, since: float, **filters: str) -> int:
        """Ledger records since ``since`` (epoch seconds) matching ``filters``."""
        ...

    def recent_records(self, limit: int) -> list[dict[str, Any]]:
        """The newest ledger records, JSON-ready."""
        ...

    def send_webhook(
        self,
        name: str,
        url: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_result: Callable[[Any], None] | None = None,
    ) -> bool:
        """Queue a delivery (False: not queued); ``on_result`` once delivered or given up."""
        ...
