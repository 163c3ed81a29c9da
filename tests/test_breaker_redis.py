"""Breaker state shared by replicas through a real Redis; failing open when Redis goes away.

Redis is Debian's ``redis-server`` (scripts/test installs it), started directly so that its PID
is the server's, on a free loopback port without persistence, and stopped by that PID. A
"replica" is an AsyncBreaker (or a Sidecar served by uvicorn) with its own Redis client; the
breakers' clock is a fake one shared by the replicas, so reset timeouts need no sleeping.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.resilience.breaker import AsyncBreaker, BreakerOpen, build_breakers
from mlwarden.sidecar.resilience.breaker_storage import redis_storage
from tests.apps import FakeVersion
from tests.doubles import FakeClock
from tests.servers import (
    LOOPBACK,
    Process,
    free_port,
    require_binary,
    serve_app,
    temp_workdir,
)

servers = pytest.mark.servers
LOG = "mlwarden.sidecar.breaker"

# --------------------------------------------------------------------------- redis-server


@dataclass
class RedisServer:
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )

    def stop(self) -> None:
        self.process.stop()


def start_redis(workdir: Path, port: int | None = None) -> RedisServer:
    """Start redis-server on loopback and wait, with a deadline, until it answers PING."""
    binary = require_binary("redis-server")
    port = port or free_port()
    proc = Process(
        [
            binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(workdir),
        ],
        name=f"redis-{port}",
        workdir=workdir,
    )
    server = RedisServer(proc, port)
    deadline = time.monotonic() + 10
    last: object = None
    with server.client() as probe:
        while time.monotonic() < deadline and proc.proc.poll() is None:
            try:
                if probe.ping():
                    return server
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.02)
    proc.stop()
    raise RuntimeError(f"redis-server did not answer PING within 10s ({last!r}):\n{proc.log()}")


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    workdir = temp_workdir("redis")
    server = start_redis(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One Redis for the tests that do not stop it; emptied before each (see ``redis_url``)."""
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    with shared_redis.client() as client:
        client.flushdb()
    return shared_redis.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis for one test, which may stop it (and start it again on the same port)."""
    with running_redis() as server:
        yield server


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def replicas(url: str, clock: FakeClock, n: int = 2, **kwargs: Any) -> Iterator[list[AsyncBreaker]]:
    """``n`` breakers named ``primary``, each with its own Redis client (its own replica)."""
    kwargs.setdefault("fail_max", 3)
    kwargs.setdefault("reset_timeout_s", 10.0)
    clients = [
        redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        for _ in range(n)
    ]
    try:
        yield [
            AsyncBreaker("primary", storage=redis_storage(c, name="primary"), clock=clock, **kwargs)
            for c in clients
        ]
    finally:
        for c in clients:
            c.close()


def fail(breaker: AsyncBreaker, times: int = 1, reason: str = "status_503") -> None:
    for _ in range(times):
        trial = breaker.acquire()
        trial.failure(reason)
        breaker.release(trial)


def succeed(breaker: AsyncBreaker) -> None:
    trial = breaker.acquire()
    trial.success()
    breaker.release(trial)


def make_config(primary: str, stable: str, redis_url: str | None) -> SidecarConfig:
    breaker: dict[str, Any] = {
        "consecutive_5xx": 2,
        "reset_timeout_s": 30,
        "half_open_max_calls": 1,
        "failure_status_codes": [502, 503],
    }
    if redis_url is not None:
        breaker["redis_url"] = redis_url
    return SidecarConfig.from_mapping(
        {
            "upstreams": {
                "primary": {"url": primary, "connect_timeout_s": 0.2},
                "stable": {"url": stable, "connect_timeout_s": 0.2},
            },
            "timeouts": {"per_try_timeout_s": 0.5, "total_timeout_s": 2.0},
            "retry": {"num_retries": 1, "base_interval_s": 0.01, "max_interval_s": 0.02},
            "breaker": breaker,
        },
        environ={},
    )


# --------------------------------------------------------------------------- build_breakers


def test_build_breakers_makes_one_breaker_per_upstream_from_the_breaker_block() -> None:
    breakers = build_breakers(make_config("http://127.0.0.1:1", "http://127.0.0.1:2", None))
    assert list(breakers) == ["primary", "stable"]
    primary = breakers["primary"]
    assert (
        primary.name,
        primary._cb.fail_max,
        primary.reset_timeout_s,
        primary.half_open_max_calls,
        primary.failure_statuses,
    ) == ("primary", 2, 30.0, 1, {502, 503})
    assert primary._storage is None  # memory: nothing shared, nothing to close
    assert primary.storage_available and primary.storage_errors_total == 0


def test_build_breakers_without_the_redis_package_names_breaker_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` raises ImportError
    cfg = make_config("http://127.0.0.1:1", "http://127.0.0.1:2", "redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match=r"breaker\.redis_url: .*needs the 'redis' package"):
        build_breakers(cfg)


def test_build_breakers_refuses_a_url_redis_cannot_use_without_echoing_it() -> None:
    cfg = make_config(
        "http://127.0.0.1:1", "http://127.0.0.1:2", "redis://:s3cret@127.0.0.1:1/0?no_such_option=1"
    )
    with pytest.raises(ConfigError, match=r"breaker\.redis_url") as info:
        build_breakers(cfg)
    assert "s3cret" not in str(info.value)


def test_redis_down_at_start_up_does_not_stop_the_breakers_from_being_built() -> None:
    clock = FakeClock(1_800_000_000.0)
    cfg = make_config(
        "http://127.0.0.1:1", "http://127.0.0.1:2", f"redis://{LOOPBACK}:{free_port()}/0"
    )  # nothing listens there
    breakers = build_breakers(cfg, clock=clock)
    try:
        primary = breakers["primary"]
        assert primary.state == "closed"
        assert not primary.storage_available and primary.storage_errors_total == 1
        primary.release(primary.acquire())
        assert primary.fail_open_total == 1
    finally:
        for b in breakers.values():
            b.close()


def test_a_redis_that_never_answers_costs_one_short_timeout_per_retry_interval() -> None:
    clock = FakeClock(1_800_000_000.0)
    with socket.socket() as blackhole:  # accepts connections (kernel backlog), never answers
        blackhole.bind((LOOPBACK, 0))
        blackhole.listen(16)
        url = f"redis://{LOOPBACK}:{blackhole.getsockname()[1]}/0"
        breakers = build_breakers(
            make_config("http://127.0.0.1:1", "http://127.0.0.1:2", url), clock=clock
        )
        try:
            primary = breakers["primary"]
            started = time.monotonic()
            for _ in range(50):
                trial = primary.acquire()
                trial.failure("status_503")
                primary.release(trial)
            elapsed = time.monotonic() - started
            assert primary.storage_errors_total == 1  # from start-up; then left alone
            assert primary.fail_open_total == 50
            assert elapsed < 0.1  # 50 requests, no Redis access at all
            clock.now += 5.0
            started = time.monotonic()
            primary.release(primary.acquire())
            assert 0.05 <= time.monotonic() - started < 1.0  # one try, one 0.1 s timeout
            assert primary.storage_errors_total == 2
        finally:
            for b in breakers.values():
                b.close()


# --------------------------------------------------------------------------- shared state


@servers
def test_failures_recorded_through_one_replica_open_the_breaker_for_the_other(
    redis_url: str,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with replicas(redis_url, clock) as (a, b):
        fail(a, 2)
        fail(b, 1)  # the consecutive-failure count is shared too
        assert a.state == "open"
        assert b.state == "open"
        assert b.history[-1].reason == "failure_threshold:status_503"  # b's own failure
        clock.now += 4.0
        with pytest.raises(BreakerOpen) as info:
            a.acquire()
        assert info.value.retry_in_s == pytest.approx(6.0)
    assert a.history[-1].reason == "observed_in_storage"
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("mlwarden:primary:pybreaker:state") == b"open"


@servers
def test_replica_b_sees_the_open_breaker_replica_a_tripped(redis_url: str) -> None:
    clock = FakeClock(1_800_000_000.0)
    with replicas(redis_url, clock) as (a, b):
        fail(a, 3)
        with pytest.raises(BreakerOpen) as info:
            b.acquire()
    assert info.value.state == "open"
    assert info.value.retry_in_s == pytest.approx(10.0)
    assert [(c.old, c.new, c.reason) for c in b.history] == [
        ("closed", "open", "observed_in_storage")
    ]


@servers
def test_after_the_reset_timeout_a_trial_on_one_replica_closes_the_breaker_for_both(
    redis_url: str,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with replicas(redis_url, clock) as (a, b):
        fail(a, 3)
        clock.now += 10.0
        trial = b.acquire()
        assert trial.is_probe
        assert a.state == "half_open"
        trial.success()
        b.release(trial)
        assert (a.state, b.state) == ("closed", "closed")
        assert a.fail_counter == 0
        fail(a, 1)
        assert b.fail_counter == 1  # counting starts afresh, shared


@servers
def test_a_failed_trial_on_one_replica_reopens_for_both_for_a_full_timeout(
    redis_url: str,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with replicas(redis_url, clock) as (a, b):
        fail(a, 3)
        clock.now += 10.0
        fail(b, 1, "connect_error")  # b's probe fails
        assert a.state == "open"
        with pytest.raises(BreakerOpen) as info:
            a.acquire()
    assert info.value.retry_in_s == pytest.approx(10.0)


@servers
def test_opened_at_keeps_fractions_of_a_second_for_short_reset_timeouts(
    redis_url: str,
) -> None:
    clock = FakeClock(1_800_000_000.75)
    with replicas(redis_url, clock, reset_timeout_s=0.5) as (a, b):
        fail(a, 3)
        clock.now += 0.2
        with pytest.raises(BreakerOpen) as info:
            b.acquire()
        assert info.value.retry_in_s == pytest.approx(0.3, abs=1e-3)
        clock.now += 0.31
        b.release(b.acquire())


@servers
def test_half_open_trials_are_bounded_per_replica_not_across_replicas(redis_url: str) -> None:
    # By design: a shared bound would need a distributed semaphore whose slots leak when a
    # replica dies mid-trial. With N replicas, up to N * half_open_max_calls trials run.
    clock = FakeClock(1_800_000_000.0)
    with replicas(redis_url, clock, half_open_max_calls=1) as (a, b):
        fail(a, 3)
        clock.now += 10.0
        probe_a = a.acquire()
        with pytest.raises(BreakerOpen) as refused:
            a.acquire()
        assert refused.value.state == "half_open"
        probe_b = b.acquire()  # b has its own slot
        assert probe_a.is_probe and probe_b.is_probe
        with pytest.raises(BreakerOpen):
            b.acquire()
        probe_a.success()
        a.release(probe_a)
        assert b.state == "closed"
        probe_b.success()
        b.release(probe_b)
        assert (a.state, b.state, a.trials_in_flight, b.trials_in_flight) == (
            "closed",
            "closed",
            0,
            0,
        )


# --------------------------------------------------------------------------- failing open


@servers
def test_breakers_fail_open_while_redis_is_down_and_share_again_when_it_is_back(
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with replicas(own_redis.url, clock) as (a, b), caplog.at_level(logging.WARNING, LOG):
        fail(a, 3)
        assert b.state == "open"
        own_redis.stop()

        for _ in range(20):  # served as if closed; Redis asked once per replica
            succeed(a)
            fail(b, 1)
        assert (a.state, b.state) == ("closed", "closed")
        assert (a.storage_available, b.storage_available) == (False, False)
        assert (a.storage_errors_total, b.storage_errors_total) == (1, 1)
        assert (a.fail_open_total, b.fail_open_total) == (20, 20)
        assert b.history[-1].reason == "storage_unavailable"
        assert caplog.text.count("shared state unavailable") == 2  # once per replica
        assert "failing open" in caplog.text

        clock.now += 5.0  # the retry interval: each tries again, once, and logs once
        succeed(a)
        succeed(a)
        assert a.storage_errors_total == 2
        assert caplog.text.count("shared state still unavailable") == 1

        restarted = start_redis(own_redis.process.workdir, own_redis.port)  # empty
        own_redis.process = restarted.process  # stopped by the fixture
        clock.now += 5.0
        fail(a, 3)
        assert a.storage_available and "reachable again" in caplog.text
        clock.now += 5.0
        with pytest.raises(BreakerOpen):
            b.acquire()  # shared again: a's failures opened it for b
        assert b.storage_available


# --------------------------------------------------------------------------- end to end


@contextlib.contextmanager
def proxy_replicas(
    cfg: SidecarConfig, clock: FakeClock, n: int = 2
) -> Iterator[list[tuple[Sidecar, httpx.Client]]]:
    """``n`` sidecars served by uvicorn, each with breakers built from ``cfg``."""
    with contextlib.ExitStack() as stack:
        out = []
        for _ in range(n):
            breakers = build_breakers(cfg, clock=clock)
            for breaker in breakers.values():
                stack.callback(breaker.close)  # after the server has stopped
            app = Sidecar(cfg, breakers=breakers, health_checks=False, wall_clock=clock)
            served = stack.enter_context(serve_app(app.proxy, proxy_headers=False))
            client = stack.enter_context(
                httpx.Client(base_url=served.url, trust_env=False, timeout=10)
            )
            out.append((app, client))
        yield out


@contextlib.contextmanager
def upstreams() -> Iterator[tuple[FakeVersion, FakeVersion, str, str]]:
    """A primary answering 503 and a stable that echoes, each served by uvicorn."""
    primary = FakeVersion("primary", echo=True, error_every=1)
    stable = FakeVersion("stable", echo=True)
    with serve_app(primary) as p, serve_app(stable) as s:
        yield primary, stable, p.url, s.url


@servers
def test_replica_b_goes_straight_to_stable_once_replica_a_opened_the_primary(
    redis_url: str,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with upstreams() as (primary, stable, p_url, s_url):
        cfg = make_config(p_url, s_url, redis_url)
        with proxy_replicas(cfg, clock) as [(app_a, a), (app_b, b)]:
            first = a.post("/predict", content=b"x")
            assert (first.status_code, first.headers["x-mlwarden-upstream"]) == (200, "stable")
            assert primary.hits == 2  # a try and one retry: consecutive_5xx reached
            assert app_a.breakers["primary"].state == "open"

            second = b.post("/predict", content=b"y")
            assert (second.status_code, second.content) == (200, b"y")
            assert second.headers["x-mlwarden-upstream"] == "stable"
            assert primary.hits == 2  # b never tried the primary
            assert stable.hits == 2
            assert app_b.breakers["primary"].state == "open"
            assert app_b.breakers["primary"].storage_errors_total == 0


@servers
def test_proxies_keep_serving_when_redis_stops_mid_run_and_count_it(
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    with upstreams() as (primary, stable, p_url, s_url), caplog.at_level(logging.WARNING, LOG):
        cfg = make_config(p_url, s_url, own_redis.url)
        with proxy_replicas(cfg, clock) as [(app_a, a), (app_b, b)]:
            assert a.get("/").headers["x-mlwarden-upstream"] == "stable"
            assert b.get("/").headers["x-mlwarden-upstream"] == "stable"
            assert primary.hits == 2  # opened by a, shared with b

            own_redis.stop()
            responses = [
                client.post("/predict", content=b"%d" % i) for i in range(3) for client in (a, b)
            ]

            assert [r.status_code for r in responses] == [200] * 6
            assert [r.content for r in responses] == [b"0", b"0", b"1", b"1", b"2", b"2"]
            assert {r.headers["x-mlwarden-upstream"] for r in responses} == {"stable"}
            # Failing open: the breaker reads as closed, so the primary is tried again
            # (a try and a retry per request) before the fallback answers.
            assert primary.hits == 2 + 6 * 2
            assert stable.hits == 2 + 6
            for app in (app_a, app_b):
                breaker = app.breakers["primary"]
                assert not breaker.storage_available
                assert breaker.storage_errors_total == 1
                assert breaker.fail_open_total == 6  # 3 requests, a try and a retry each
                assert app.breakers["stable"].fail_open_total == 3
    assert caplog.text.count("circuit breaker primary: shared state unavailable") == 2


@servers
def test_the_proxy_builds_shared_breakers_from_redis_url_and_exports_their_storage(
    own_redis: RedisServer,
) -> None:
    from prometheus_client import CollectorRegistry

    with upstreams() as (_, _, p_url, s_url):
        cfg = make_config(p_url, s_url, own_redis.url)
        registry = CollectorRegistry()
        # breakers from breaker.redis_url, closed by it
        app = Sidecar(cfg, health_checks=False, registry=registry)
        with (
            serve_app(app.proxy, proxy_headers=False) as served,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
        ):
            assert client.post("/predict", content=b"x").headers["x-mlwarden-upstream"] == (
                "stable"
            )
            with own_redis.client() as probe:  # the opening is in Redis for other replicas
                assert probe.get("mlwarden:primary:pybreaker:state") == b"open"

            def sample(name: str) -> float | None:
                return registry.get_sample_value(name, {"upstream": "primary"})

            assert sample("mlwarden_breaker_storage_available") == 1
            assert sample("mlwarden_breaker_storage_errors_total") == 0
            own_redis.stop()
            assert client.post("/predict", content=b"y").status_code == 200
            assert sample("mlwarden_breaker_storage_available") == 0
            assert sample("mlwarden_breaker_storage_errors_total") == 1
            assert sample("mlwarden_breaker_fail_open_total") >= 1
