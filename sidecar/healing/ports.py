"""What the healing policies may read and do: the port they act through.

The policy engine never holds the sidecar: it is given a :class:`HealingPort`. The
composition root (:mod:`mlwarden.sidecar.app`) gives it a :class:`PartsPort` over the router,
the canary, the signal board, the ledger and the webhook sender; tests may give plain objects.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CanaryControl", "HealingPort", "PartsPort", "RouteControl"]


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

    async def refresh_signals(
        self, targets: Sequence[str], window_s: float, names: Collection[str]
    ) -> None:
        """Fetch what remote sources (PromQL) answer for ``targets`` before the reads, of
        the sources that read one of the signals ``names``."""
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


class _Board(Protocol):
    def read(self, target: str, window_s: float) -> Mapping[str, Any]: ...
    def read_one(self, name: str, target: str, window_s: float) -> Any: ...
    async def refresh(
        self, targets: Iterable[str], window_s: float, names: Collection[str] | None = None
    ) -> None: ...


class _Records(Protocol):
    def count_since(self, since: float, **filters: Any) -> int: ...
    def query(self, *, limit: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class PartsPort:
    """A :class:`HealingPort` over the parts themselves (no part holds another)."""

    routes: RouteControl
    canary: CanaryControl | None
    is_available: Callable[[str], bool]
    signals: _Board
    ledger: _Records
    record: Callable[..., None]
    send_webhook: Callable[..., bool]

    def read_signals(self, target: str, window_s: float) -> Mapping[str, Any]:
        return self.signals.read(target, window_s)

    def read_signal(self, name: str, upstream: str, window_s: float) -> Any:
        return self.signals.read_one(name, upstream, window_s)

    async def refresh_signals(
        self, targets: Sequence[str], window_s: float, names: Collection[str]
    ) -> None:
        await self.signals.refresh(targets, window_s, names)

    def count_records(self, since: float, **filters: str) -> int:
        return self.ledger.count_since(since, **filters)

    def recent_records(self, limit: int) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.ledger.query(limit=limit)]
