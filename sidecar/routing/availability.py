"""Whether an upstream may be offered a request now: its health check and its breaker.

One rule, asked by the router (candidates), the shadow (skip an unavailable target), the
policies (where to route away to) and the admin (readiness): an upstream is available when it
is healthy (or unchecked) and its breaker is not open within its reset timeout. A breaker
open for longer than its reset timeout is available again: its own admission then lets the
half-open trials through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["Availability"]


class _Breaker(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def opened_at(self) -> float | None: ...
    @property
    def reset_timeout_s(self) -> float: ...


class _Health(Protocol):
    def is_healthy(self, name: str) -> bool: ...


class Availability:
    """``is_available(name)`` over the breakers and the health checker (None: unchecked).

    ``wall_clock`` is epoch seconds: a breaker's ``opened_at`` may be another replica's,
    shared through Redis.
    """

    __slots__ = ("_breakers", "_wall_clock", "health")

    def __init__(
        self,
        breakers: Mapping[str, _Breaker],
        health: _Health | None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._breakers = breakers
        self.health = health
        self._wall_clock = wall_clock

    def is_available(self, name: str) -> bool:
        """Healthy (or unchecked) and its breaker not open within its reset timeout."""
        if self.health is not None and not self.health.is_healthy(name):
            return False
        breaker = self._breakers[name]
        if breaker.state != "open":
            return True
        opened = breaker.opened_at  # as stored: another replica's opening time when shared
        # Unknown opening time: let the breaker's own admission decide.
        return opened is None or self._wall_clock() >= opened + breaker.reset_timeout_s

    def why_not(self, name: str) -> str:
        """The fallback reason for skipping ``name`` untried: ``unhealthy`` or
        ``breaker_open``."""
        if self.health is not None and not self.health.is_healthy(name):
            return "unhealthy"
        return "breaker_open"
