"""How long to wait before the next attempt: full-jitter exponential, or constant."""

from __future__ import annotations

import math
import random as _random
from typing import Protocol

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.config import RetryConfig
from mlwarden.sidecar.config.checks import seconds
from mlwarden.sidecar.config.schema import check_arguments, field_check
from mlwarden.sidecar.resilience.retry.state import RetryState

__all__ = ["Backoff", "ConstantBackoff", "ExponentialJitterBackoff"]

_RETRY = RetryConfig()  # the defaults


class Backoff(Protocol):
    def delay_s(self, state: RetryState) -> float: ...


class ExponentialJitterBackoff:
    """Full jitter: uniform in ``[0, min(max_interval_s, base * multiplier**(attempt-1))]``.

    Full jitter spreads the retries of many clients that failed together (AWS's "Exponential
    Backoff and Jitter"), which matters more for a fleet of sidecars than a smooth curve does.
    """

    def __init__(
        self,
        *,
        base_interval_s: float = _RETRY.base_interval_s,
        multiplier: float = _RETRY.backoff_multiplier,
        max_interval_s: float = _RETRY.max_interval_s,
        random: _random.Random | None = None,
    ) -> None:
        v = check_arguments(
            {
                "base_interval_s": (field_check(RetryConfig, "base_interval_s"), base_interval_s),
                "multiplier": (field_check(RetryConfig, "backoff_multiplier"), multiplier),
                "max_interval_s": (field_check(RetryConfig, "max_interval_s"), max_interval_s),
            },
            source="retry backoff",
        )
        if v["max_interval_s"] < v["base_interval_s"]:
            raise ConfigError(
                f"max_interval_s: must be >= base_interval_s ({v['base_interval_s']:g}), "
                f"got {v['max_interval_s']:g}",
                source="retry backoff",
            )
        self.base_interval_s: float = v["base_interval_s"]
        self.multiplier: float = v["multiplier"]
        self.max_interval_s: float = v["max_interval_s"]
        self._random = random if random is not None else _random.Random()

    def ceiling_s(self, attempt: int) -> float:
        """The upper bound of the wait after ``attempt`` attempts (no overflow for large ones)."""
        exponent = max(attempt - 1, 0)
        if self.multiplier > 1:
            # beyond this exponent the product is past the cap anyway
            limit = math.log(self.max_interval_s / self.base_interval_s, self.multiplier)
            if exponent > limit:
                return self.max_interval_s
        return min(self.max_interval_s, self.base_interval_s * self.multiplier**exponent)

    def delay_s(self, state: RetryState) -> float:
        return self._random.uniform(0.0, self.ceiling_s(state.attempt))

    def __repr__(self) -> str:
        return (
            f"ExponentialJitterBackoff(base_interval_s={self.base_interval_s}, "
            f"multiplier={self.multiplier}, max_interval_s={self.max_interval_s})"
        )


class ConstantBackoff:
    """The same wait every time: predictable, for tests and for operators who want it."""

    def __init__(self, interval_s: float) -> None:
        v = check_arguments({"interval_s": (seconds(ge=0), interval_s)}, source="retry backoff")
        self.interval_s: float = v["interval_s"]

    def delay_s(self, state: RetryState) -> float:
        return self.interval_s

    def __repr__(self) -> str:
        return f"ConstantBackoff(interval_s={self.interval_s})"
