"""AsyncBreaker over pybreaker: admission, accounting, bounded half-open, clock, history."""

from __future__ import annotations

import asyncio
import logging

import pybreaker
import pytest

from mlwarden.middleware.errors import ConfigError, MlwardenError
from mlwarden.sidecar.config import BreakerConfig
from mlwarden.sidecar.resilience.breaker import AsyncBreaker, BreakerOpen
from mlwarden.sidecar.resilience.breaker_storage import redis_storage
from tests.doubles import FakeClock, raising, recording


class UpstreamDown(Exception):
    pass


def make(clock: FakeClock | None = None, **kwargs: object) -> AsyncBreaker:
    kwargs.setdefault("fail_max", 3)
    kwargs.setdefault("reset_timeout_s", 10.0)
    return AsyncBreaker("primary", clock=clock or FakeClock(1_800_000_000.0), **kwargs)  # type: ignore[arg-type]


async def fail(breaker: AsyncBreaker, times: int = 1, reason: str = "connect_error") -> None:
    for _ in range(times):
        async with breaker.guard() as trial:
            trial.failure(reason)


async def succeed(breaker: AsyncBreaker) -> None:
    async with breaker.guard():
        pass


def trip(breaker: AsyncBreaker) -> None:
    asyncio.run(fail(breaker, breaker._cb.fail_max))
    assert breaker.state == "open"


def test_opens_after_fail_max_consecutive_failures() -> None:
    breaker = make()
    asyncio.run(fail(breaker, 2))
    assert (breaker.state, breaker.fail_counter) == ("closed", 2)
    asyncio.run(fail(breaker, 1))
    assert breaker.state == "open"


def test_from_config_takes_the_breaker_blocks_thresholds() -> None:
    block = BreakerConfig(consecutive_5xx=2, reset_timeout_s=7.0, failure_status_codes=(503,))
    breaker = AsyncBreaker.from_config(block, "primary", clock=FakeClock(1_800_000_000.0))
    assert (breaker.reset_timeout_s, breaker.failure_statuses) == (7.0, frozenset({503}))
    asyncio.run(fail(breaker, 2))
    assert breaker.state == "open"


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = make()

    async def scenario() -> None:
        await fail(breaker, 2)
        await succeed(breaker)
        await fail(breaker, 2)

    asyncio.run(scenario())
    assert (breaker.state, breaker.fail_counter) == ("closed", 2)


def test_fast_fails_while_open_without_running_the_block() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock)
    trip(breaker)
    clock.now += 4.0
    ran = False

    async def attempt() -> None:
        nonlocal ran
        async with breaker.guard():
            ran = True

    with pytest.raises(BreakerOpen) as info:
        asyncio.run(attempt())
    assert not ran
    assert info.value.state == "open" and info.value.name == "primary"
    assert info.value.retry_in_s == pytest.approx(6.0)
    assert isinstance(info.value, MlwardenError)


def test_half_opens_after_the_reset_timeout_on_the_injected_clock() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock)
    trip(breaker)
    clock.now += 9.99
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    clock.now += 0.02
    trial = breaker.acquire()
    assert trial.is_probe and breaker.state == "half_open"
    breaker.release(trial)


def test_closes_when_the_trial_succeeds() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock)
    trip(breaker)
    clock.now += 10
    asyncio.run(succeed(breaker))
    assert (breaker.state, breaker.fail_counter) == ("closed", 0)


def test_reopens_when_the_trial_fails_and_waits_a_full_timeout_again() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock)
    trip(breaker)
    clock.now += 10
    asyncio.run(fail(breaker, 1, "status_503"))
    assert breaker.state == "open"
    clock.now += 9
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    clock.now += 1
    breaker.release(breaker.acquire())


def test_exactly_half_open_max_calls_trials_among_50_concurrent_callers() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock, half_open_max_calls=3)
    trip(breaker)
    clock.now += 10
    admitted = 0
    rejected = 0

    async def caller(release: asyncio.Event) -> None:
        nonlocal admitted, rejected
        try:
            async with breaker.guard() as trial:
                admitted += 1
                await release.wait()  # hold the trial slot while the others arrive
                trial.success()
        except BreakerOpen as exc:
            assert exc.state == "half_open"
            rejected += 1

    async def scenario() -> None:
        release = asyncio.Event()
        tasks = [asyncio.create_task(caller(release)) for _ in range(50)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert breaker.trials_in_flight == 3
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert (admitted, rejected) == (3, 47)
    assert breaker.state == "closed" and breaker.trials_in_flight == 0


def test_success_threshold_needs_that_many_trial_successes() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock, half_open_max_calls=2, success_threshold=2)
    trip(breaker)
    clock.now += 10
    asyncio.run(succeed(breaker))
    assert breaker.state == "half_open"
    asyncio.run(succeed(breaker))
    assert breaker.state == "closed"


def test_cancelled_requests_are_not_failures_and_free_their_trial_slot() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock)

    async def hang() -> None:
        async with breaker.guard():
            await asyncio.Event().wait()

    async def cancel_one() -> None:
        task = asyncio.create_task(hang())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def cancel_several() -> None:
        for _ in range(5):
            await cancel_one()

    asyncio.run(cancel_several())
    assert (breaker.state, breaker.fail_counter) == ("closed", 0)
    trip(breaker)
    clock.now += 10
    asyncio.run(cancel_one())
    assert breaker.state == "half_open" and breaker.trials_in_flight == 0
    asyncio.run(succeed(breaker))  # the slot was released, a new probe gets in
    assert breaker.state == "closed"


def test_an_exception_inside_the_guard_counts_as_failure_and_propagates() -> None:
    breaker = make(fail_max=2)

    async def boom() -> None:
        async with breaker.guard():
            raise UpstreamDown("refused")

    for _ in range(2):
        with pytest.raises(UpstreamDown):
            asyncio.run(boom())
    assert breaker.state == "open"
    assert breaker.history[-1].reason == "failure_threshold:exception_UpstreamDown"


def test_configured_failure_statuses_count_and_4xx_do_not() -> None:
    breaker = make(fail_max=2, failure_statuses={503})

    async def answer(status: int) -> None:
        async with breaker.guard() as trial:
            trial.record_status(status)

    async def scenario() -> None:
        for status in (503, 404, 429, 400):
            await answer(status)
        assert breaker.fail_counter == 0  # the 4xx answers were successes
        await answer(500)  # not configured
        assert breaker.fail_counter == 0
        await answer(503)
        await answer(503)

    asyncio.run(scenario())
    assert breaker.state == "open"
    assert breaker.history[-1].reason == "failure_threshold:status_503"


def test_default_failure_statuses_are_500_502_503_504() -> None:
    assert make().failure_statuses == {500, 502, 503, 504}


def test_a_late_outcome_while_open_is_ignored() -> None:
    breaker = make(fail_max=1)
    slow = breaker.acquire()  # admitted while closed
    asyncio.run(fail(breaker, 1))
    assert breaker.state == "open"
    slow.success()
    breaker.release(slow)
    assert breaker.state == "open"


def test_a_late_success_while_half_open_does_not_close_the_breaker() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock, fail_max=1)
    slow = breaker.acquire()  # admitted while closed
    trip(breaker)
    clock.now += 10
    probe = breaker.acquire()
    slow.success()
    breaker.release(slow)
    assert breaker.state == "half_open"
    probe.failure("timeout")
    breaker.release(probe)
    assert breaker.state == "open"


def test_listeners_get_every_transition_with_its_reason() -> None:
    clock = FakeClock(1_800_000_000.0)
    seen: list[tuple[str, str, str, str]] = []
    breaker = make(clock, listeners=[recording("breaker_changed", seen)])
    trip(breaker)
    clock.now += 10
    asyncio.run(fail(breaker, 1, "timeout"))
    clock.now += 10
    asyncio.run(succeed(breaker))
    assert seen == [
        ("primary", "closed", "open", "failure_threshold:connect_error"),
        ("primary", "open", "half_open", "reset_timeout"),
        ("primary", "half_open", "open", "trial_failure:timeout"),
        ("primary", "open", "half_open", "reset_timeout"),
        ("primary", "half_open", "closed", "trial_success"),
    ]


def test_a_failing_listener_is_logged_and_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = make()
    breaker.add_listener(raising("breaker_changed"))
    with caplog.at_level(logging.WARNING, logger="mlwarden.sidecar"):
        trip(breaker)
    assert "closed -> open" in caplog.text
    assert "failed in breaker_changed" in caplog.text


def test_history_is_bounded_and_records_time_and_reason() -> None:
    clock = FakeClock(1_800_000_000.0)
    breaker = make(clock, fail_max=1, history_size=4)
    for _ in range(5):
        trip(breaker)
        clock.now += 10
        asyncio.run(succeed(breaker))
    assert len(breaker.history) == 4
    last = breaker.history[-1]
    assert (last.old, last.new, last.reason, last.at) == (
        "half_open",
        "closed",
        "trial_success",
        clock.now,
    )


def test_manual_reset_and_force_open_are_recorded() -> None:
    breaker = make()
    breaker.force_open()
    assert breaker.state == "open"
    breaker.reset()
    assert breaker.state == "closed"
    assert [(c.new, c.reason) for c in breaker.history] == [
        ("open", "manual_open"),
        ("closed", "manual_reset"),
    ]


def test_state_is_read_from_shared_storage_written_by_another_replica() -> None:
    clock = FakeClock(1_800_000_000.0)
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    here = make(clock, storage=storage)
    there = make(clock, storage=storage)
    trip(there)
    assert here.state == "open"
    assert here.history[-1].reason == "observed_in_storage"
    with pytest.raises(BreakerOpen):
        here.acquire()


def test_invalid_settings_name_each_key() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBreaker("x", fail_max=0, reset_timeout_s=0, half_open_max_calls=0)
    text = str(info.value)
    assert "fail_max" in text and "reset_timeout_s" in text and "half_open_max_calls" in text


class FakeRedis:
    """The few redis.Redis calls pybreaker's storage makes, on a dict (no server)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def setnx(self, key: str, value: object) -> None:
        self.data.setdefault(key, str(value).encode())

    def set(self, key: str, value: object) -> None:
        self.data[key] = str(value).encode()

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def incr(self, key: str) -> None:
        self.data[key] = str(int(self.data.get(key, b"0")) + 1).encode()

    def multi(self) -> None:
        pass

    def transaction(self, func: object, *keys: str) -> None:
        func(self)  # type: ignore[operator]


def test_redis_storage_without_the_redis_package_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pybreaker, "HAS_REDIS_SUPPORT", False)
    with pytest.raises(ConfigError, match="needs the 'redis' package"):
        redis_storage(FakeRedis(), name="primary")


def test_replicas_share_state_and_opened_at_through_redis_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not a real Redis (none is started here): pybreaker's CircuitRedisStorage over a fake
    # client, to check that our clock and transitions go through its storage contract.
    monkeypatch.setattr(pybreaker, "HAS_REDIS_SUPPORT", True)
    redis = FakeRedis()
    clock = FakeClock(1_800_000_000.0)
    one = make(clock, storage=redis_storage(redis, name="primary"))
    two = make(clock, storage=redis_storage(redis, name="primary"))
    trip(one)
    assert redis.data["mlwarden:primary:pybreaker:state"] == b"open"
    assert redis.data["mlwarden:primary:pybreaker:opened_at"] == b"1800000000"
    with pytest.raises(BreakerOpen) as info:
        two.acquire()
    assert info.value.retry_in_s == pytest.approx(10.0)
    clock.now += 10
    asyncio.run(succeed(two))
    assert one.state == "closed" and two.state == "closed"
