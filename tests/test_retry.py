"""Retry strategies, conditions, Retry-After, budget and the policy; fake clocks, no sleeping."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from mlwarden.middleware.errors import ConfigError, MlwardenError
from mlwarden.sidecar.config import RetryConfig, TimeoutsConfig
from mlwarden.sidecar.resilience.retry import (
    DEFAULT_RETRIABLE_METHODS,
    ConstantBackoff,
    ExponentialJitterBackoff,
    Outcome,
    RetryBudget,
    RetryOn,
    RetryPolicy,
    RetryState,
    StopAfterAttempts,
    StopAfterDelay,
    parse_retry_after,
)
from tests.doubles import FakeClock

WALL_NOW = 1_800_000_000.0  # a fixed epoch second for HTTP-date Retry-After values


class FakeSleep:
    """Records waits and advances the fake clock by them instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds


def state(attempt: int, started_at: float = 0.0, now: float = 0.0) -> RetryState:
    return RetryState(attempt=attempt, started_at=started_at, now=now)


def policy(clock: FakeClock, **kwargs: object) -> RetryPolicy:
    kwargs.setdefault("retry_on", RetryOn())
    kwargs.setdefault("backoff", ConstantBackoff(0.1))
    return RetryPolicy(clock=clock, wall_clock=lambda: WALL_NOW, **kwargs)  # type: ignore[arg-type]


# --- backoff ---------------------------------------------------------------------------------


def test_exponential_ceiling_grows_by_multiplier_and_stops_at_the_cap() -> None:
    backoff = ExponentialJitterBackoff(base_interval_s=0.025, multiplier=2.0, max_interval_s=0.25)
    ceilings = [backoff.ceiling_s(n) for n in range(1, 7)]
    assert ceilings == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25])


def test_exponential_ceiling_does_not_overflow_for_huge_attempt_numbers() -> None:
    backoff = ExponentialJitterBackoff()
    assert backoff.ceiling_s(100_000) == 0.25


def test_full_jitter_draws_uniformly_between_zero_and_the_ceiling() -> None:
    backoff = ExponentialJitterBackoff(random=random.Random(7))
    expected = random.Random(7)
    delays = [backoff.delay_s(state(3)) for _ in range(200)]
    assert delays[:3] == [expected.uniform(0, 0.1) for _ in range(3)]
    assert all(0.0 <= d <= 0.1 for d in delays)
    assert min(delays) < 0.02 and max(delays) > 0.08  # full jitter, not "half" jitter


def test_backoff_rejects_nonsense_and_names_each_key() -> None:
    with pytest.raises(ConfigError) as info:
        ExponentialJitterBackoff(base_interval_s=0, multiplier=0.5, max_interval_s=-1)
    text = str(info.value)
    assert "base_interval_s" in text and "multiplier" in text and "max_interval_s" in text


def test_constant_backoff_always_waits_the_same() -> None:
    assert {ConstantBackoff(0.3).delay_s(state(n)) for n in range(1, 5)} == {0.3}


# --- stop ------------------------------------------------------------------------------------


def test_stop_after_attempts_counts_the_first_attempt() -> None:
    stop = StopAfterAttempts(3)
    assert [stop.should_stop(state(n)) for n in (1, 2, 3)] == [False, False, True]


def test_stop_after_delay_uses_elapsed_time_and_reports_time_left() -> None:
    stop = StopAfterDelay(2.0)
    assert not stop.should_stop(state(1, started_at=10.0, now=11.5))
    assert stop.time_left_s(state(1, started_at=10.0, now=11.5)) == pytest.approx(0.5)
    assert stop.should_stop(state(1, started_at=10.0, now=12.0))


def test_combined_stop_stops_on_either_and_keeps_the_smaller_time_left() -> None:
    stop = StopAfterAttempts(5) | StopAfterDelay(1.0) | StopAfterDelay(3.0)
    assert len(stop.stops) == 3
    assert stop.should_stop(state(5, now=0.1))
    assert stop.should_stop(state(1, now=1.0))
    assert not stop.should_stop(state(2, now=0.5))
    assert stop.time_left_s(state(2, now=0.5)) == pytest.approx(0.5)


# --- retry condition -------------------------------------------------------------------------


def test_default_retry_on_is_the_configurations_connect_failure_reset_and_gateway_error() -> None:
    retry_on = RetryOn()
    assert retry_on.conditions == set(RetryConfig().retry_on)
    assert retry_on.classify(Outcome(error="connect_error")) == "connect_error"
    assert retry_on.classify(Outcome(error="reset")) == "reset"
    # Not a timeout: a slow model would get more load exactly when it is slow (README).
    assert retry_on.classify(Outcome(error="timeout")) is None
    assert retry_on.classify(Outcome(status=503)) == "status_503"
    assert retry_on.classify(Outcome(status=500)) is None
    assert retry_on.classify(Outcome(status=429)) is None
    assert retry_on.classify(Outcome(status=200)) is None


def test_5xx_covers_every_5xx_and_no_response_with_a_bounded_label_set() -> None:
    retry_on = RetryOn(["5xx"], retriable_status_codes=())
    assert retry_on.classify(Outcome(status=500)) == "status_5xx"
    assert retry_on.classify(Outcome(status=599)) == "status_5xx"
    assert retry_on.classify(Outcome(status=502)) == "status_502"
    assert retry_on.classify(Outcome(error="reset")) == "reset"
    labels = {retry_on.classify(Outcome(status=code)) for code in range(500, 600)}
    assert labels <= retry_on.reason_labels
    assert len(retry_on.reason_labels) == 7


def test_gateway_error_covers_502_to_504_only() -> None:
    retry_on = RetryOn(["gateway-error"], retriable_status_codes=())
    assert [retry_on.classify(Outcome(status=c)) for c in (500, 502, 503, 504)] == [
        None,
        "status_502",
        "status_503",
        "status_504",
    ]


def test_gateway_error_retries_connect_failures_and_resets_but_not_timeouts() -> None:
    # Timeouts are retried on the same upstream only by name (or under 5xx): see RetryOn.
    retry_on = RetryOn(["gateway-error"], retriable_status_codes=())
    assert retry_on.classify(Outcome(error="connect_error")) == "connect_error"
    assert retry_on.classify(Outcome(error="reset")) == "reset"
    assert retry_on.classify(Outcome(error="timeout")) is None
    assert RetryOn(["5xx"]).classify(Outcome(error="timeout")) == "timeout"
    assert RetryOn(["timeout"]).classify(Outcome(error="timeout")) == "timeout"


def test_only_enabled_error_kinds_are_retried() -> None:
    retry_on = RetryOn(["connect-failure"])
    assert retry_on.classify(Outcome(error="connect_error")) == "connect_error"
    assert retry_on.classify(Outcome(error="timeout")) is None
    assert retry_on.reason_labels == {"connect_error"}


def test_status_given_as_httpstatus_is_classified_like_an_int() -> None:
    from http import HTTPStatus

    outcome = Outcome(status=HTTPStatus.SERVICE_UNAVAILABLE)
    assert type(outcome.status) is int
    assert RetryOn().classify(outcome) == "status_503"


def test_unknown_retry_on_words_are_rejected_with_the_allowed_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"retry_on: unknown '5xy' \(did you mean '5xx'\?\); allowed: 5xx, "
    ):
        RetryOn(["5xy"])
    with pytest.raises(
        ConfigError, match="retriable_status_codes: expected status codes 100-599, got 99"
    ):
        RetryOn(retriable_status_codes=[99])


def test_config_errors_are_mlwarden_and_value_errors() -> None:
    with pytest.raises(MlwardenError):
        StopAfterAttempts(0)
    with pytest.raises(ValueError):
        StopAfterDelay(0)


def test_outcome_needs_exactly_one_of_status_and_error() -> None:
    with pytest.raises(ValueError):
        Outcome()
    with pytest.raises(ValueError):
        Outcome(status=503, error="reset")


def test_policy_requires_an_explicit_retry_condition() -> None:
    with pytest.raises(TypeError):
        RetryPolicy()  # type: ignore[call-arg]


# --- Retry-After -----------------------------------------------------------------------------


def test_retry_after_delta_seconds() -> None:
    assert parse_retry_after("3", now_epoch_s=WALL_NOW) == 3.0
    assert parse_retry_after(" 0 ", now_epoch_s=WALL_NOW) == 0.0


def test_retry_after_http_date_is_relative_to_the_injected_wall_clock() -> None:
    when = format_datetime(datetime.fromtimestamp(WALL_NOW + 7, UTC), usegmt=True)
    assert parse_retry_after(when, now_epoch_s=WALL_NOW) == pytest.approx(7.0)
    past = format_datetime(datetime.fromtimestamp(WALL_NOW - 60, UTC), usegmt=True)
    assert parse_retry_after(past, now_epoch_s=WALL_NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "-1", "1.5", "soon", "Mon, 99 Foo 2020 25:61:61 GMT"])
def test_retry_after_garbage_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now_epoch_s=WALL_NOW) is None


# --- budget ----------------------------------------------------------------------------------


def test_budget_allows_the_floor_then_the_ratio_of_requests() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(budget_percent=20, min_retries_per_s=0.1, window_s=10, clock=clock)
    for _ in range(10):
        budget.record_request()
    # floor 0.1/s * 10 s = 1, plus 20% of 10 requests = 2
    assert [budget.try_acquire_retry() for _ in range(4)] == [True, True, True, False]
    assert budget.exhausted_total == 1
    assert budget.snapshot()["window_retries"] == 3


def test_budget_window_slides_and_forgets_old_buckets() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(budget_percent=50, min_retries_per_s=0, window_s=10, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert [budget.try_acquire_retry() for _ in range(3)] == [True, True, False]
    clock.now = 10.5  # the bucket of t=0 has left the window
    assert budget.snapshot()["window_requests"] == 0
    assert budget.try_acquire_retry() is False
    budget.record_request()
    budget.record_request()
    assert budget.try_acquire_retry() is True
    assert budget.requests_total == 6 and budget.retries_total == 3


def test_budget_memory_is_bounded_by_its_buckets() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(window_s=10, buckets=5, clock=clock)
    for step in range(1000):
        clock.now = step * 0.37
        budget.record_request()
        budget.try_acquire_retry()
    assert len(budget._epochs) == len(budget._requests) == len(budget._retries) == 5


def test_budget_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="budget_percent"):
        RetryBudget(budget_percent=150)


# --- the policy ------------------------------------------------------------------------------


def test_success_and_non_retriable_outcomes_give_up_at_once() -> None:
    p = policy(FakeClock())
    assert p.begin(method="GET").next(Outcome(status=200)).give_up == "success"
    decision = p.begin(method="GET").next(Outcome(status=500))
    assert (decision.retry, decision.give_up) == (False, "not_retriable")


def test_retries_until_max_attempts_with_the_backoff_delay() -> None:
    p = policy(FakeClock(), stop=StopAfterAttempts(3))
    attempts = p.begin(method="GET")
    first, second, third = (attempts.next(Outcome(status=503)) for _ in range(3))
    assert (first.retry, first.delay_s, first.reason) == (True, 0.1, "status_503")
    assert second.retry
    assert (third.retry, third.give_up, third.reason) == (False, "attempts", "status_503")


def test_post_is_retried_by_default_and_can_be_configured_off() -> None:
    assert policy(FakeClock()).begin(method="post").next(Outcome(status=503)).retry
    no_post = policy(FakeClock(), retriable_methods=["GET", "HEAD"])
    assert no_post.begin(method="POST").next(Outcome(status=503)).give_up == "method"


def test_connect_failure_is_retried_whatever_the_method() -> None:
    p = policy(FakeClock(), retriable_methods=["GET"])
    assert p.begin(method="PATCH").next(Outcome(error="connect_error")).retry
    assert p.begin(method="PATCH").next(Outcome(error="reset")).give_up == "method"


def test_retry_after_longer_than_backoff_is_waited() -> None:
    p = policy(FakeClock())
    decision = p.begin(method="GET").next(Outcome(status=503, retry_after="2"))
    assert (decision.retry, decision.delay_s) == (True, 2.0)


def test_retry_after_shorter_than_backoff_keeps_the_backoff() -> None:
    p = policy(FakeClock(), backoff=ConstantBackoff(1.5))
    assert p.begin(method="GET").next(Outcome(status=503, retry_after="1")).delay_s == 1.5


def test_retry_after_beyond_the_request_deadline_gives_up() -> None:
    clock = FakeClock(100.0)
    p = policy(clock)
    attempts = p.begin(method="GET", deadline=103.0)
    clock.now = 101.5
    decision = attempts.next(Outcome(status=503, retry_after="5"))
    assert (decision.retry, decision.give_up) == (False, "deadline")


def test_retry_after_http_date_within_the_deadline_is_honoured() -> None:
    p = policy(FakeClock(100.0))
    when = format_datetime(datetime.fromtimestamp(WALL_NOW + 3, UTC), usegmt=True)
    decision = p.begin(method="GET", deadline=110.0).next(Outcome(status=503, retry_after=when))
    assert decision.retry and decision.delay_s == pytest.approx(3.0)


def test_stop_after_delay_bounds_total_time_by_default() -> None:
    clock = FakeClock(0.0)
    p = policy(clock, stop=StopAfterAttempts(100) | StopAfterDelay(1.0))
    attempts = p.begin(method="GET")
    clock.now = 0.95  # a 0.1 s wait would end past the 1 s bound
    assert attempts.next(Outcome(error="reset")).give_up == "deadline"
    clock.now = 1.2
    assert attempts.next(Outcome(error="reset")).give_up == "deadline"


def test_budget_is_consulted_last_and_gives_up_when_spent() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(budget_percent=0, min_retries_per_s=0.1, window_s=10, clock=clock)
    p = policy(clock, budget=budget)
    attempts = p.begin(method="GET")
    assert attempts.next(Outcome(status=503)).retry  # the floor's one retry
    decision = p.begin(method="GET").next(Outcome(status=503))
    assert (decision.retry, decision.give_up, decision.reason) == (False, "budget", "status_503")
    assert budget.requests_total == 2 and budget.exhausted_total == 1
    # a retry refused for another reason does not consume budget
    p.begin(method="GET").next(Outcome(status=404))
    assert budget.exhausted_total == 1


def test_run_drives_attempts_sleeps_the_decided_delays_and_returns_the_last_value() -> None:
    clock = FakeClock(0.0)
    sleep = FakeSleep(clock)
    p = policy(
        clock,
        backoff=ExponentialJitterBackoff(random=random.Random(1)),
        stop=StopAfterAttempts(4),
        sleep=sleep,
    )
    statuses = iter([503, 502, 200])
    seen: list[int] = []

    async def attempt(number: int) -> tuple[str, Outcome]:
        seen.append(number)
        status = next(statuses)
        return f"answer {status}", Outcome(status=status)

    result = asyncio.run(p.run(attempt, method="POST", deadline=5.0))
    assert result == "answer 200"
    assert seen == [1, 2, 3]
    expected = random.Random(1)
    assert sleep.waits == [expected.uniform(0, 0.025), expected.uniform(0, 0.05)]


def test_run_returns_the_last_failure_when_attempts_are_spent() -> None:
    clock = FakeClock(0.0)
    sleep = FakeSleep(clock)
    p = policy(clock, stop=StopAfterAttempts(2), sleep=sleep)

    async def attempt(number: int) -> tuple[int, Outcome]:
        return number, Outcome(error="connect_error")

    assert asyncio.run(p.run(attempt, method="GET")) == 2
    assert sleep.waits == [0.1]


def test_policy_repr_names_its_parts() -> None:
    text = repr(policy(FakeClock(), budget=RetryBudget()))
    assert "RetryOn(" in text and "ConstantBackoff" in text and "RetryBudget" in text


# --- one default and one rule per setting: the configuration's ---------------------------------


def test_every_default_of_a_directly_built_strategy_is_the_configurations() -> None:
    retry, timeouts = RetryConfig(), TimeoutsConfig()
    assert set(retry.retriable_methods) == DEFAULT_RETRIABLE_METHODS
    assert "TRACE" not in DEFAULT_RETRIABLE_METHODS
    backoff = ExponentialJitterBackoff()
    assert (backoff.base_interval_s, backoff.multiplier, backoff.max_interval_s) == (
        retry.base_interval_s,
        retry.backoff_multiplier,
        retry.max_interval_s,
    )
    budget = RetryBudget()
    assert (budget.budget_percent, budget.min_retries_per_s) == (
        retry.budget_percent,
        retry.min_retries_per_s,
    )
    stop = RetryPolicy(retry_on=RetryOn()).stop
    assert repr(stop) == (
        f"StopAfterAttempts({retry.num_retries + 1}) | StopAfterDelay({timeouts.total_timeout_s})"
    )
    assert RetryOn().retriable_status_codes == set(retry.retriable_status_codes)


def test_from_config_builds_the_policy_from_the_retry_and_timeouts_blocks() -> None:
    clock = FakeClock(0.0)
    sleep = FakeSleep(clock)
    retry = RetryConfig(
        num_retries=1,
        retry_on=("5xx",),
        retriable_methods=("GET",),
        base_interval_s=0.5,
        max_interval_s=2.0,
        backoff_multiplier=3.0,
        budget_percent=50.0,
        min_retries_per_s=0.0,
    )
    p = RetryPolicy.from_config(
        retry, TimeoutsConfig(per_try_timeout_s=5.0, total_timeout_s=7.0), clock=clock, sleep=sleep
    )
    assert (p.clock, p.sleep) == (clock, sleep)
    assert p.retry_on.conditions == {"5xx"}
    assert p.retriable_methods == {"GET"}
    assert isinstance(p.backoff, ExponentialJitterBackoff)
    assert (p.backoff.base_interval_s, p.backoff.multiplier, p.backoff.max_interval_s) == (
        0.5,
        3.0,
        2.0,
    )
    assert repr(p.stop) == "StopAfterAttempts(2) | StopAfterDelay(7.0)"
    assert p.budget is not None
    assert (p.budget.budget_percent, p.budget.min_retries_per_s) == (50.0, 0.0)
    assert p.begin(method="POST").next(Outcome(status=500)).give_up == "method"


def test_a_bad_argument_is_named_as_the_configuration_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        ExponentialJitterBackoff(base_interval_s=0)
    assert info.value.problems == (
        "base_interval_s: expected a number of seconds > 0 and <= 60, got 0",
    )
    with pytest.raises(ConfigError) as info:
        ExponentialJitterBackoff(base_interval_s=1, max_interval_s=0.5)
    assert info.value.problems == ("max_interval_s: must be >= base_interval_s (1), got 0.5",)
    with pytest.raises(ConfigError) as info:
        RetryBudget(budget_percent=150)
    assert info.value.problems == ("budget_percent: expected a number >= 0 and <= 100, got 150",)
    with pytest.raises(ConfigError) as info:
        StopAfterAttempts(0)
    assert info.value.problems == ("max_attempts: expected a whole number >= 1, got 0",)
