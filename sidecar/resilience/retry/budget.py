"""The retry budget: retries capped to a share of recent requests, plus a floor."""

from __future__ import annotations

import time
from collections.abc import Callable

from mlwarden.sidecar.config import RetryConfig
from mlwarden.sidecar.config.checks import number, seconds
from mlwarden.sidecar.config.schema import check_arguments, field_check

__all__ = ["RetryBudget"]

_RETRY = RetryConfig()  # the defaults


class RetryBudget:
    """Retries allowed while they stay within a share of recent requests, plus a floor.

    In a sliding window of ``window_s`` (``buckets`` fixed buckets, so memory is bounded),
    a retry is allowed when ``retries + 1 <= budget_percent/100 * requests +
    min_retries_per_s * window_s``. The floor keeps low-traffic upstreams retryable (Linkerd's
    ``minRetriesPerSecond``); the ratio keeps a failing upstream from receiving a multiple of
    its normal load when every request fails (Envoy's ``retry_budget``).
    """

    def __init__(
        self,
        *,
        budget_percent: float = _RETRY.budget_percent,
        min_retries_per_s: float = _RETRY.min_retries_per_s,
        window_s: float = 10.0,
        buckets: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        v = check_arguments(
            {
                "budget_percent": (field_check(RetryConfig, "budget_percent"), budget_percent),
                "min_retries_per_s": (
                    field_check(RetryConfig, "min_retries_per_s"),
                    min_retries_per_s,
                ),
                "window_s": (seconds(gt=0), window_s),
                "buckets": (number(int, ge=1), buckets),
            },
            source="retry budget",
        )
        self.budget_percent: float = v["budget_percent"]
        self.min_retries_per_s: float = v["min_retries_per_s"]
        self.window_s: float = v["window_s"]
        self._clock = clock
        self._bucket_s = self.window_s / v["buckets"]
        self._epochs = [-1] * v["buckets"]
        self._requests = [0] * v["buckets"]
        self._retries = [0] * v["buckets"]
        self.requests_total = 0
        self.retries_total = 0
        self.exhausted_total = 0

    def _slot(self) -> int:
        epoch = int(self._clock() // self._bucket_s)
        slot = epoch % len(self._epochs)
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def _window(self) -> tuple[int, int]:
        current = int(self._clock() // self._bucket_s)
        oldest = current - len(self._epochs) + 1
        requests = retries = 0
        for slot, epoch in enumerate(self._epochs):
            if oldest <= epoch <= current:
                requests += self._requests[slot]
                retries += self._retries[slot]
        return requests, retries

    def record_request(self) -> None:
        """Count one client request (not its retries)."""
        self._requests[self._slot()] += 1
        self.requests_total += 1

    def try_acquire_retry(self) -> bool:
        """Take one retry from the budget; ``False`` (and counted) when it is spent."""
        requests, retries = self._window()
        allowed = self.budget_percent / 100 * requests + self.min_retries_per_s * self.window_s
        if retries + 1 > allowed:
            self.exhausted_total += 1
            return False
        self._retries[self._slot()] += 1
        self.retries_total += 1
        return True

    def snapshot(self) -> dict[str, float]:
        """The window's counts and the lifetime counters, for /-/status and tests."""
        requests, retries = self._window()
        return {
            "window_requests": requests,
            "window_retries": retries,
            "requests_total": self.requests_total,
            "retries_total": self.retries_total,
            "exhausted_total": self.exhausted_total,
        }

    def __repr__(self) -> str:
        return (
            f"RetryBudget(budget_percent={self.budget_percent}, "
            f"min_retries_per_s={self.min_retries_per_s}, window_s={self.window_s})"
        )
