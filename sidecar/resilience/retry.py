"""How the sidecar decides whether, when and how often to retry an upstream attempt.

Retries are built from small strategy objects, in the manner of tenacity and stamina, each
reading one immutable :class:`RetryState`:

- a **backoff** says how long to wait (:class:`ExponentialJitterBackoff`, :class:`ConstantBackoff`);
- a **stop** condition bounds attempts *and* time (:class:`StopAfterAttempts`,
  :class:`StopAfterDelay`, combined with ``|``); the default bounds both, as stamina does;
- a **retry condition** (:class:`RetryOn`, Envoy's ``retry_on`` words) is explicit and
  mandatory: :class:`RetryPolicy` has no default for it;
- a :class:`RetryBudget` (Envoy's retry budget, Linkerd's ``retryRatio``) caps retries to a
  share of recent requests so that a failing upstream is not hammered by every replica.

The proxy streams bodies, so it drives attempts itself: :meth:`RetryPolicy.begin` returns a
per-request :class:`RetryAttempts` whose :meth:`~RetryAttempts.next` turns each attempt's
:class:`Outcome` into a :class:`RetryDecision` (retry after ``delay_s``, or give up and why).
:meth:`RetryPolicy.run` is a convenience loop over the same steps for callers that do not
stream. A response that has started reaching the client, or a request body that cannot be
replayed, must not be retried; only the caller knows that, so it simply stops asking.

Which methods are retried
    By default the idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) **and POST**.
    The sidecar fronts model servers, where POST carries a prediction request and a prediction
    is a pure function of its input: sending it twice costs compute, never correctness, and a
    retried prediction is what keeps a client served while one replica fails. Endpoints that do
    have side effects behind POST (feedback, labelling, online learning) must be configured out
    by passing ``retriable_methods`` without POST. Whatever the method, a *connect failure* is
    always retried when ``connect-failure`` is enabled: the request never reached the upstream,
    so nothing can have happened twice (Envoy makes the same call).

``Retry-After``
    Honoured on retriable responses (delta-seconds or HTTP-date): the wait is
    ``max(backoff, retry_after)``; if that wait does not fit in the time left before the
    request's deadline, the policy gives up (``give_up="deadline"``) instead of waiting in vain.

Reason labels (``RetryDecision.reason``) are a fixed, small set known up front
(:attr:`RetryOn.reason_labels`), so they are safe as Prometheus label values.
"""

from __future__ import annotations

import asyncio
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol, TypeVar

from mlwarden.middleware.errors import ConfigError

__all__ = [
    "DEFAULT_RETRIABLE_METHODS",
    "RETRY_ON_CONDITIONS",
    "ConstantBackoff",
    "ExponentialJitterBackoff",
    "Outcome",
    "RetryAttempts",
    "RetryBudget",
    "RetryDecision",
    "RetryOn",
    "RetryPolicy",
    "RetryState",
    "StopAfterAttempts",
    "StopAfterDelay",
    "StopAny",
    "parse_retry_after",
]

T = TypeVar("T")

ErrorKind = Literal["connect_error", "reset", "timeout"]
GiveUp = Literal["success", "not_retriable", "method", "attempts", "deadline", "budget"]

RETRY_ON_CONDITIONS: frozenset[str] = frozenset(
    {"connect-failure", "reset", "timeout", "retriable-status-codes", "5xx", "gateway-error"}
)
DEFAULT_RETRIABLE_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST"}
)
_GATEWAY_STATUSES = frozenset({502, 503, 504})
_ERROR_KINDS = frozenset({"connect_error", "reset", "timeout"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one upstream attempt produced: a status, or an error kind if no response came.

    ``retry_after`` is the raw ``Retry-After`` header value, if the response had one.
    """

    status: int | None = None
    error: ErrorKind | None = None
    retry_after: str | None = None

    def __post_init__(self) -> None:
        if (self.status is None) == (self.error is None):
            raise ValueError("an Outcome has exactly one of status or error")
        if self.error is not None and self.error not in _ERROR_KINDS:
            raise ValueError(f"error must be one of {sorted(_ERROR_KINDS)}, not {self.error!r}")
        if self.status is not None:
            # an http.HTTPStatus is fine, but keep labels and comparisons on plain ints
            object.__setattr__(self, "status", int(self.status))


@dataclass(frozen=True, slots=True)
class RetryState:
    """What the strategies may look at: attempts made so far, times (policy clock), last outcome."""

    attempt: int
    started_at: float
    now: float
    last_outcome: Outcome | None = None

    @property
    def elapsed_s(self) -> float:
        return self.now - self.started_at


# --- backoff --------------------------------------------------------------------------------


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
        base_interval_s: float = 0.025,
        multiplier: float = 2.0,
        max_interval_s: float = 0.25,
        random: _random.Random | None = None,
    ) -> None:
        problems = []
        if not base_interval_s > 0:
            problems.append(f"base_interval_s: {base_interval_s!r}, expected > 0")
        if not multiplier >= 1:
            problems.append(f"multiplier: {multiplier!r}, expected >= 1")
        if not max_interval_s >= base_interval_s:
            problems.append(f"max_interval_s: {max_interval_s!r}, expected >= base_interval_s")
        if problems:
            raise ConfigError(problems, source="retry backoff")
        self.base_interval_s = float(base_interval_s)
        self.multiplier = float(multiplier)
        self.max_interval_s = float(max_interval_s)
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
        if not interval_s >= 0:
            raise ConfigError(f"interval_s: {interval_s!r}, expected >= 0", source="retry backoff")
        self.interval_s = float(interval_s)

    def delay_s(self, state: RetryState) -> float:
        return self.interval_s

    def __repr__(self) -> str:
        return f"ConstantBackoff(interval_s={self.interval_s})"


# --- stop -----------------------------------------------------------------------------------


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
        if not (isinstance(max_attempts, int) and max_attempts >= 1):
            raise ConfigError(f"max_attempts: {max_attempts!r}, expected an integer >= 1")
        self.max_attempts = max_attempts

    def should_stop(self, state: RetryState) -> bool:
        return state.attempt >= self.max_attempts

    def __repr__(self) -> str:
        return f"StopAfterAttempts({self.max_attempts})"


class StopAfterDelay(Stop):
    """Stop once ``deadline_s`` has passed since the first attempt started."""

    def __init__(self, deadline_s: float) -> None:
        if not deadline_s > 0:
            raise ConfigError(f"deadline_s: {deadline_s!r}, expected > 0")
        self.deadline_s = float(deadline_s)

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


# --- retry condition ------------------------------------------------------------------------


class RetryOn:
    """Which outcomes are retriable, in Envoy's words, and the reason label of each.

    ``connect-failure``, ``reset``, ``timeout``: the attempt got no response of that kind.
    ``retriable-status-codes``: the status is in ``retriable_status_codes``.
    ``5xx``: any 5xx status, and no response at all (connect failure, reset, timeout), as Envoy.
    ``gateway-error``: 502, 503, 504, a connect failure or a reset. Unlike Envoy, not a
    timeout: a model that is slow would get more load exactly when it is slow, so retrying a
    timeout on the same upstream takes ``timeout`` (or ``5xx``) by name; the proxy moves a
    timed-out request to the fallback instead.
    """

    def __init__(
        self,
        conditions: Iterable[str] = (
            "connect-failure",
            "reset",
            "timeout",
            "retriable-status-codes",
        ),
        *,
        retriable_status_codes: Iterable[int] = (502, 503, 504),
    ) -> None:
        conditions = frozenset(conditions) if not isinstance(conditions, str) else {conditions}
        codes = frozenset(int(code) for code in retriable_status_codes)
        problems = []
        unknown = sorted(conditions - RETRY_ON_CONDITIONS)
        if unknown:
            problems.append(
                f"retry_on: unknown {', '.join(unknown)}; allowed: "
                + ", ".join(sorted(RETRY_ON_CONDITIONS))
            )
        bad_codes = sorted(code for code in codes if not 100 <= code <= 599)
        if bad_codes:
            problems.append(f"retriable_status_codes: {bad_codes}, expected 100..599")
        if problems:
            raise ConfigError(problems, source="retry policy")
        self.conditions: frozenset[str] = frozenset(conditions)
        self.retriable_status_codes: frozenset[int] = codes
        no_response = bool(self.conditions & {"5xx", "gateway-error"})
        self._errors: dict[str, bool] = {
            "connect_error": no_response or "connect-failure" in self.conditions,
            "reset": no_response or "reset" in self.conditions,
            "timeout": bool(self.conditions & {"5xx", "timeout"}),
        }
        self._named_statuses = self.retriable_status_codes | _GATEWAY_STATUSES

    @property
    def reason_labels(self) -> frozenset[str]:
        """Every reason label :meth:`classify` can return (for metrics set up front)."""
        labels = {kind for kind, on in self._errors.items() if on}
        if "retriable-status-codes" in self.conditions:
            labels |= {f"status_{code}" for code in self.retriable_status_codes}
        if self.conditions & {"5xx", "gateway-error"}:
            labels |= {f"status_{code}" for code in _GATEWAY_STATUSES}
        if "5xx" in self.conditions:
            labels.add("status_5xx")
        return frozenset(labels)

    def classify(self, outcome: Outcome) -> str | None:
        """The reason label if ``outcome`` is retriable, else ``None``."""
        if outcome.error is not None:
            return outcome.error if self._errors[outcome.error] else None
        status = outcome.status
        assert status is not None
        if (
            ("retriable-status-codes" in self.conditions and status in self.retriable_status_codes)
            or ("gateway-error" in self.conditions and status in _GATEWAY_STATUSES)
            or ("5xx" in self.conditions and 500 <= status <= 599)
        ):
            return f"status_{status}" if status in self._named_statuses else "status_5xx"
        return None

    def __repr__(self) -> str:
        return (
            f"RetryOn({sorted(self.conditions)!r}, "
            f"retriable_status_codes={sorted(self.retriable_status_codes)!r})"
        )


def parse_retry_after(value: str | None, *, now_epoch_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or ``None``.

    Dates in the past mean "now" (0.0); anything unparseable is ignored rather than trusted.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is malformed
        return None
    return max(0.0, when.timestamp() - now_epoch_s)


# --- budget ---------------------------------------------------------------------------------


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
        budget_percent: float = 20.0,
        min_retries_per_s: float = 10.0,
        window_s: float = 10.0,
        buckets: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems = []
        if not 0 <= budget_percent <= 100:
            problems.append(f"budget_percent: {budget_percent!r}, expected 0..100")
        if not min_retries_per_s >= 0:
            problems.append(f"min_retries_per_s: {min_retries_per_s!r}, expected >= 0")
        if not window_s > 0:
            problems.append(f"window_s: {window_s!r}, expected > 0")
        if not (isinstance(buckets, int) and buckets >= 1):
            problems.append(f"buckets: {buckets!r}, expected an integer >= 1")
        if problems:
            raise ConfigError(problems, source="retry budget")
        self.budget_percent = float(budget_percent)
        self.min_retries_per_s = float(min_retries_per_s)
        self.window_s = float(window_s)
        self._clock = clock
        self._bucket_s = self.window_s / buckets
        self._epochs = [-1] * buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
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


# --- the policy -----------------------------------------------------------------------------


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
    ``wall_clock`` is only used to read HTTP-date ``Retry-After`` values.
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
        if isinstance(retriable_methods, str):
            raise ConfigError(f"retriable_methods: {retriable_methods!r}, expected a list")
        self.retry_on = retry_on
        self.retriable_methods = frozenset(m.upper() for m in retriable_methods)
        self.backoff: Backoff = backoff if backoff is not None else ExponentialJitterBackoff()
        self.stop: Stop = stop if stop is not None else StopAfterAttempts(3) | StopAfterDelay(5.0)
        self.budget = budget
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep

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
