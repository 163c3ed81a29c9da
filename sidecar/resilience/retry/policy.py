"""The retry policy: condition, methods, backoff, stop and budget composed; the per-request
:class:`RetryAttempts` that turns each outcome into a :class:`RetryDecision`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from mlwarden.sidecar.config import RetryConfig, TimeoutsConfig
from mlwarden.sidecar.config.schema import check_arguments, field_check
from mlwarden.sidecar.resilience.retry.backoff import Backoff, ExponentialJitterBackoff
from mlwarden.sidecar.resilience.retry.budget import RetryBudget
from mlwarden.sidecar.resilience.retry.condition import RetryOn, _listed, parse_retry_after
from mlwarden.sidecar.resilience.retry.state import Outcome, RetryState
from mlwarden.sidecar.resilience.retry.stop import Stop, StopAfterAttempts, StopAfterDelay

__all__ = ["DEFAULT_RETRIABLE_METHODS", "RetryAttempts", "RetryDecision", "RetryPolicy"]

T = TypeVar("T")

GiveUp = Literal["success", "not_retriable", "method", "attempts", "deadline", "budget"]

#: The defaults of every retry setting: the configuration's, so that both agree.
_RETRY = RetryConfig()
_TIMEOUTS = TimeoutsConfig()
#: ``retry.retriable_methods``'s default.
DEFAULT_RETRIABLE_METHODS: frozenset[str] = frozenset(_RETRY.retriable_methods)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Retry after ``delay_s`` (``retry=True``), or give up for the reason in ``give_up``.

    ``reason`` is the retriable reason label of the last outcome (``None`` if it was not
    retriable), so a give-up on ``budget`` or ``attempts`` still says what went wrong.
    """

    retry: bool
    delay_s: float = 0.0
    reason: str | None = None
    give_up: GiveUp | None = None


class RetryAttempts:
    """The retry bookkeeping of one request; lives in the caller's locals, never on the policy."""

    __slots__ = ("_deadline", "_method", "_policy", "attempt", "started_at")

    def __init__(self, policy: RetryPolicy, method: str, deadline: float | None) -> None:
        self._policy = policy
        self._method = method.upper()
        self._deadline = deadline
        self.started_at = policy.clock()
        self.attempt = 0

    def next(self, outcome: Outcome) -> RetryDecision:
        """Account one finished attempt and decide what comes next."""
        policy = self._policy
        self.attempt += 1
        now = policy.clock()
        reason = policy.retry_on.classify(outcome)
        if reason is None:
            ok = outcome.status is not None and outcome.status < 500
            return RetryDecision(False, give_up="success" if ok else "not_retriable")
        if reason != "connect_error" and self._method not in policy.retriable_methods:
            return RetryDecision(False, reason=reason, give_up="method")
        state = RetryState(self.attempt, self.started_at, now, outcome)
        time_left = policy.stop.time_left_s(state)
        if self._deadline is not None:
            time_left = min(time_left, self._deadline - now)
        if policy.stop.should_stop(state):
            give_up: GiveUp = "deadline" if time_left <= 0 else "attempts"
            return RetryDecision(False, reason=reason, give_up=give_up)
        delay = policy.backoff.delay_s(state)
        retry_after = parse_retry_after(outcome.retry_after, now_epoch_s=policy.wall_clock())
        if retry_after is not None:
            delay = max(delay, retry_after)
        if delay >= time_left:
            return RetryDecision(False, reason=reason, give_up="deadline")
        if policy.budget is not None and not policy.budget.try_acquire_retry():
            return RetryDecision(False, reason=reason, give_up="budget")
        return RetryDecision(True, delay_s=delay, reason=reason)


class RetryPolicy:
    """Composes condition, methods, backoff, stop and budget; shared by all requests.

    ``deadline`` arguments are absolute times on ``clock`` (the request's total deadline);
    ``wall_clock`` is only used to read HTTP-date ``Retry-After`` values. Without ``stop``,
    the configuration's defaults bound it: ``retry.num_retries`` + 1 attempts within
    ``timeouts.total_timeout_s``.
    """

    def __init__(
        self,
        *,
        retry_on: RetryOn,
        retriable_methods: Iterable[str] = DEFAULT_RETRIABLE_METHODS,
        backoff: Backoff | None = None,
        stop: Stop | None = None,
        budget: RetryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not isinstance(retry_on, RetryOn):
            raise TypeError("retry_on must be a RetryOn: the retry condition is explicit")
        v = check_arguments(
            {
                "retriable_methods": (
                    field_check(RetryConfig, "retriable_methods"),
                    _listed(retriable_methods),
                )
            },
            source="retry policy",
        )
        self.retry_on = retry_on
        self.retriable_methods = frozenset(v["retriable_methods"])
        self.backoff: Backoff = backoff if backoff is not None else ExponentialJitterBackoff()
        self.stop: Stop = (
            stop
            if stop is not None
            else StopAfterAttempts(_RETRY.num_retries + 1)
            | StopAfterDelay(_TIMEOUTS.total_timeout_s)
        )
        self.budget = budget
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep

    @classmethod
    def from_config(
        cls,
        retry: RetryConfig,
        timeouts: TimeoutsConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> RetryPolicy:
        """The sidecar's one retry policy (its budget shared by all requests) from the
        validated ``retry`` and ``timeouts`` blocks: ``num_retries`` + 1 attempts per upstream
        within ``total_timeout_s``, full-jitter backoff, the retry budget."""
        return cls(
            retry_on=RetryOn(retry.retry_on, retriable_status_codes=retry.retriable_status_codes),
            retriable_methods=retry.retriable_methods,
            backoff=ExponentialJitterBackoff(
                base_interval_s=retry.base_interval_s,
                multiplier=retry.backoff_multiplier,
                max_interval_s=retry.max_interval_s,
            ),
            stop=StopAfterAttempts(retry.num_retries + 1)
            | StopAfterDelay(timeouts.total_timeout_s),
            budget=RetryBudget(
                budget_percent=retry.budget_percent,
                min_retries_per_s=retry.min_retries_per_s,
                clock=clock,
            ),
            clock=clock,
            wall_clock=wall_clock,
            sleep=sleep,
        )

    def begin(self, *, method: str, deadline: float | None = None) -> RetryAttempts:
        """Start a request: counts it in the budget and returns its attempt tracker."""
        if self.budget is not None:
            self.budget.record_request()
        return RetryAttempts(self, method, deadline)

    async def run(
        self,
        attempt_fn: Callable[[int], Awaitable[tuple[T, Outcome]]],
        *,
        method: str,
        deadline: float | None = None,
    ) -> T:
        """Call ``attempt_fn(attempt_number)`` until the policy gives up; return the last value.

        ``attempt_fn`` turns its own exceptions into an :class:`Outcome` (connect error,
        timeout, ...): only the caller knows which exception means what.
        """
        attempts = self.begin(method=method, deadline=deadline)
        while True:
            value, outcome = await attempt_fn(attempts.attempt + 1)
            decision = attempts.next(outcome)
            if not decision.retry:
                return value
            await self.sleep(decision.delay_s)

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(retry_on={self.retry_on!r}, "
            f"retriable_methods={sorted(self.retriable_methods)!r}, backoff={self.backoff!r}, "
            f"stop={self.stop!r}, budget={self.budget!r})"
        )
