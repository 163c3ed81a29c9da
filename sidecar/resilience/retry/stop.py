"""When to stop trying: after a number of attempts, after a delay, or either (``a | b``)."""

from __future__ import annotations

import math

from mlwarden.sidecar.config.checks import number, seconds
from mlwarden.sidecar.config.schema import check_arguments
from mlwarden.sidecar.resilience.retry.state import RetryState

__all__ = ["Stop", "StopAfterAttempts", "StopAfterDelay", "StopAny"]


class Stop:
    """A stop condition; ``a | b`` stops when either does and keeps the smaller time left."""

    def should_stop(self, state: RetryState) -> bool:
        raise NotImplementedError

    def time_left_s(self, state: RetryState) -> float:
        """Time still available for waiting and attempting (``inf`` when time is not bounded)."""
        return math.inf

    def __or__(self, other: Stop) -> StopAny:
        return StopAny(self, other)


class StopAfterAttempts(Stop):
    """Stop once ``max_attempts`` attempts (the first one included) have been made."""

    def __init__(self, max_attempts: int) -> None:
        v = check_arguments({"max_attempts": (number(int, ge=1), max_attempts)})
        self.max_attempts: int = v["max_attempts"]

    def should_stop(self, state: RetryState) -> bool:
        return state.attempt >= self.max_attempts

    def __repr__(self) -> str:
        return f"StopAfterAttempts({self.max_attempts})"


class StopAfterDelay(Stop):
    """Stop once ``deadline_s`` has passed since the first attempt started."""

    def __init__(self, deadline_s: float) -> None:
        v = check_arguments({"deadline_s": (seconds(gt=0), deadline_s)})
        self.deadline_s: float = v["deadline_s"]

    def should_stop(self, state: RetryState) -> bool:
        return state.elapsed_s >= self.deadline_s

    def time_left_s(self, state: RetryState) -> float:
        return self.deadline_s - state.elapsed_s

    def __repr__(self) -> str:
        return f"StopAfterDelay({self.deadline_s})"


class StopAny(Stop):
    """Stops when any of its parts does."""

    def __init__(self, *stops: Stop) -> None:
        flat: list[Stop] = []
        for stop in stops:
            flat.extend(stop.stops if isinstance(stop, StopAny) else (stop,))
        self.stops = tuple(flat)

    def should_stop(self, state: RetryState) -> bool:
        return any(stop.should_stop(state) for stop in self.stops)

    def time_left_s(self, state: RetryState) -> float:
        return min((stop.time_left_s(state) for stop in self.stops), default=math.inf)

    def __repr__(self) -> str:
        return " | ".join(repr(stop) for stop in self.stops)
