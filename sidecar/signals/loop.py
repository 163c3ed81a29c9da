"""Signals from the sidecar's own parts: the breakers, the shadow copies and the canary."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mlwarden.sidecar.signals.source import Signal, SignalSource

__all__ = ["BreakerSignals", "CanarySignals", "ShadowSignals"]


class _Stateful(Protocol):
    @property
    def state(self) -> str: ...


class BreakerSignals(SignalSource):
    """Whether an upstream's circuit breaker is open."""

    SIGNALS = (
        Signal(
            "breaker_open",
            "bool",
            "its circuit breaker is open",
            plain=False,
            function="breaker_open",
        ),
    )

    __slots__ = ("_breakers",)

    def __init__(self, breakers: Mapping[str, _Stateful]) -> None:
        self._breakers = breakers

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        breaker = self._breakers.get(target)
        return {"breaker_open": None if breaker is None else breaker.state == "open"}


class ShadowSignals(SignalSource):
    """The agreement of the shadow copies with the primary's answers (0-1)."""

    SIGNALS = (Signal("shadow_agreement", "number", "agreement rate of the shadow copies (0-1)"),)

    __slots__ = ("_agreement",)

    def __init__(self, agreement: Callable[[], float | None]) -> None:
        self._agreement = agreement

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        return {"shadow_agreement": self._agreement()}


class CanarySignals(SignalSource):
    """The canary's current weight."""

    SIGNALS = (Signal("canary_weight_percent", "number", "the candidate's share of traffic"),)

    __slots__ = ("_weight",)

    def __init__(self, weight: Callable[[], float | None]) -> None:
        self._weight = weight

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        return {"canary_weight_percent": self._weight()}
