"""Fleet signals and fleet policies with real parts.

Unit-level (in one process, a real ``redis-server``, each loop step called directly): a
policy over ``fleet_*`` is a fleet policy, a follower does not evaluate it, a deposed
leader's forced route is refused, a followed remediation is not fired again by the next
leader, and a slow Prometheus delays a tick by at most one interval.

Process-level: model servers wrapped by the middleware (two per replica: the stable version
and the candidate / the primary), three ``mlwarden sidecar`` processes, ``redis-server`` and
a real ``prometheus`` scraping the sidecars' admin ``/metrics`` every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.healing.policy_scope import is_fleet_policy
from mlwarden.sidecar.settings import sidecar_config_from_mapping
from tests.servers import ServedApp, free_port, serve_app, start_prometheus, temp_workdir
from tests.test_breaker_redis import RedisServer, running_redis
from tests.test_fleet import TTL_S, Replica, Traffic, _leaders, _stream, _wait

pytestmark = pytest.mark.servers

POLL_S = 0.2


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


# -- unit level: two sidecars in one process ----------------------------------------------------

FLEET_POLICY = {
    "name": "fleet-errors",
    # Reads a fleet signal (unknown here: no Prometheus), and is true on its second operand.
    "when": "fleet_error_rate > 0.2 or requests >= 0",
    "cooldown_s": 3600,
    "actions": ["route_to_fallback"],
}


def _sidecar(redis_url: str, fleet: str, replica: str, **fleet_block: Any) -> Sidecar:
    cfg = sidecar_config_from_mapping(
        {
            "upstreams": {"primary": "http://127.0.0.1:9", "stable": "http://127.0.0.1:9"},
            "routing": {"primary": "primary"},
            "policies": [FLEET_POLICY, {"name": "local", "when": "requests >= 0"}],
            "fleet": {"redis_url": redis_url, "name": fleet, "replica": replica, **fleet_block},
        },
        environ={},
    )
    return Sidecar(cfg, health_checks=False)


def test_a_policy_reading_a_fleet_signal_is_a_fleet_policy_and_others_are_not() -> None:
    cfg = sidecar_config_from_mapping(
        {
            "upstreams": {"primary": "http://127.0.0.1:9", "stable": "http://127.0.0.1:9"},
            "policies": [
                {"name": "a", "when": "fleet_requests >= 10 and fleet_error_rate > 0.2"},
                {"name": "b", "when": "error_rate > 0.2 or fleet_p99_latency_seconds > 1"},
                {"name": "c", "when": "error_rate > 0.2 and p99_latency_seconds > 1"},
            ],
        },
        environ={},
    )
    assert {p.name: is_fleet_policy(p) for p in cfg.policies} == {"a": True, "b": True, "c": False}


def test_only_the_leader_evaluates_a_fleet_policy_unless_redis_is_down(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    a = _sidecar(fleet_redis.url, fleet, "replica-a")
    b = _sidecar(fleet_redis.url, fleet, "replica-b")
    assert a.fleet is not None and b.fleet is not None

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        try:
            await a.fleet.step()
            await b.fleet.step()
            assert a.fleet.is_leader and not b.fleet.is_leader
            leader, follower = a.policies.tick(), b.policies.tick()
            b.fleet.available = False  # as after a failed pass: every replica decides alone
            alone = b.policies.tick()
            return leader, follower, alone
        finally:
            await a.aclose()
            await b.aclose()

    leader, follower, alone = asyncio.run(scenario())
    assert leader == ["fleet-errors", "local"]
    assert follower == ["local"]  # non-fleet policies run on every replica as before
    assert alone == ["fleet-errors"]


def _route_key(redis_url: str, fleet: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(f"mlwarden:{fleet}:route")
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_the_leaders_forced_route_reaches_a_follower_once_and_is_not_fired_again_by_it(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    a = _sidecar(fleet_redis.url, fleet, "replica-a")
    b = _sidecar(fleet_redis.url, fleet, "replica-b")
    assert a.fleet is not None and b.fleet is not None

    async def scenario() -> list[str]:
        try:
            await a.fleet.step()
            await b.fleet.step()
            assert "fleet-errors" in a.policies.tick()
            await a.policies.scope.after_tick()  # as the policy loop does: published now
            assert a.router.forced == "stable"
            await b.fleet.step()
            await b.fleet.step()  # the same version again: applied once
            assert b.router.forced == "stable"
            # The leader stops cleanly: b leads next and watches the remediation in place.
            await a.aclose()
            await b.fleet.step()
            assert b.fleet.is_leader
            return b.policies.tick()
        finally:
            await a.aclose()
            await b.aclose()

    fired_by_b = asyncio.run(scenario())
    assert fired_by_b == ["local"]  # not fleet-errors again for the same incident
    assert [r.action for r in a.ledger.query(policy="fleet-errors")] == ["fallback", "policy_fired"]
    followed = b.ledger.query(action="fleet_route_followed")
    assert [(r.target, r.policy) for r in followed] == [("stable", "fleet-errors")]
    assert not b.ledger.query(action="policy_fired", policy="fleet-errors")
    shared = _route_key(fleet_redis.url, fleet)
    assert (json.loads(shared["route"]), shared["replica"], shared["version"]) == (
        "stable",
        "replica-a",
        "1",
    )


def test_a_deposed_leaders_forced_route_is_refused_and_the_fleets_route_kept(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    a = _sidecar(fleet_redis.url, fleet, "replica-a")
    b = _sidecar(fleet_redis.url, fleet, "replica-b")
    assert a.fleet is not None and b.fleet is not None and a.fleet_routes is not None

    async def scenario() -> None:
        try:
            await a.fleet.step()
            assert a.fleet.is_leader
            # a is paused past its lease: it expires in Redis and b takes a new term, while
            # a's own clock still trusts its lease (the case fencing exists for).
            client = redis.Redis.from_url(fleet_redis.url)
            try:
                client.delete(f"mlwarden:{fleet}:leader")
            finally:
                client.close()
            await b.fleet.step()
            assert b.fleet.is_leader and a.fleet.is_leader
            assert "fleet-errors" in a.policies.tick()
            assert a.router.forced == "stable"
            await a.policies.scope.after_tick()
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(scenario())
    assert _route_key(fleet_redis.url, fleet) == {}  # nothing written by the old term
    assert a.fleet_routes.refused == 1
    (refused,) = a.ledger.query(action="fleet_decision_refused")
    assert refused.policy == "fleet-errors" and "term 1 was over" in refused.reason
    assert a.router.forced is None  # the fleet never forced a route: undone here
    assert not a.fleet.is_leader


def test_a_slow_prometheus_delays_a_tick_by_one_interval_and_its_signals_are_unknown(
    fleet_redis: RedisServer,
) -> None:
    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(3)
        return JSONResponse({"status": "success", "data": {"result": []}})

    app = Starlette(routes=[Route("/api/v1/query", slow)])
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    with serve_app(app) as prometheus:
        cfg = sidecar_config_from_mapping(
            {
                "upstreams": {"primary": "http://127.0.0.1:9", "stable": "http://127.0.0.1:9"},
                "healing": {"interval_s": 0.5},
                "policies": [{"name": "p", "when": "fleet_error_rate > 0.2"}],
                "fleet": {
                    "redis_url": fleet_redis.url,
                    "name": fleet,
                    "prometheus_url": prometheus.url,
                },
            },
            environ={},
        )
        sidecar = Sidecar(cfg, health_checks=False)

        async def scenario() -> tuple[float, dict[str, Any]]:
            try:
                assert sidecar.fleet is not None
                await sidecar.fleet.step()  # leads: it evaluates the fleet policy
                started = time.monotonic()
                await sidecar.policies.refresh()
                took = time.monotonic() - started
                return took, sidecar.signals.read("primary", 60.0)
            finally:
                await sidecar.aclose()

        took, signals = asyncio.run(scenario())
    assert 0.4 <= took < 1.5
    assert signals["fleet_error_rate"] is None and signals["fleet_requests"] is None


def test_prometheus_is_asked_only_for_the_policies_that_read_fleet_signals(
    fleet_redis: RedisServer,
) -> None:
    asked: list[str] = []

    async def query(request: Request) -> JSONResponse:
        asked.append(request.query_params["query"])
        value = [0, "0.3"]
        return JSONResponse(
            {"status": "success", "data": {"result": [{"metric": {}, "value": value}]}}
        )

    async def ticks(policies: list[dict[str, Any]], url: str) -> tuple[list[str], Any]:
        cfg = sidecar_config_from_mapping(
            {
                "upstreams": {"primary": "http://127.0.0.1:9", "stable": "http://127.0.0.1:9"},
                "policies": policies,
                "fleet": {
                    "redis_url": fleet_redis.url,
                    "name": f"t-{uuid.uuid4().hex[:8]}",
                    "prometheus_url": url,
                },
            },
            environ={},
        )
        sidecar = Sidecar(cfg, health_checks=False)
        try:
            assert sidecar.fleet is not None
            await sidecar.fleet.step()
            await sidecar.policies.refresh()
            return sidecar.policies.tick(), sidecar.signals.read("primary", 60.0)
        finally:
            await sidecar.aclose()

    local = {"name": "local", "when": "error_rate > 0.5"}
    fleet_wide = {"name": "fleet-wide", "when": "fleet_error_rate > 0.2"}
    with serve_app(Starlette(routes=[Route("/api/v1/query", query)])) as prometheus:
        fired, _ = asyncio.run(ticks([local], prometheus.url))
        assert (fired, asked) == ([], [])
        fired, signals = asyncio.run(ticks([local, fleet_wide], prometheus.url))
    assert fired == ["fleet-wide"]
    assert signals["fleet_error_rate"] == 0.3
    assert asked and all('upstream="primary"' in q for q in asked)


def test_fleet_signals_are_unknown_without_a_prometheus_or_when_its_queries_fail(
    fleet_redis: RedisServer,
) -> None:
    async def read(url: str | None) -> dict[str, Any]:
        fleet_block = {"redis_url": fleet_redis.url, "name": f"t-{uuid.uuid4().hex[:8]}"}
        cfg = sidecar_config_from_mapping(
            {
                "upstreams": {"primary": "http://127.0.0.1:9", "stable": "http://127.0.0.1:9"},
                "policies": [{"name": "p", "when": "fleet_requests < 1"}],
                "fleet": {**fleet_block, **({"prometheus_url": url} if url else {})},
            },
            environ={},
        )
        sidecar = Sidecar(cfg, health_checks=False)
        try:
            assert sidecar.fleet is not None
            await sidecar.fleet.step()
            await sidecar.policies.refresh()
            assert sidecar.policies.tick() == []  # unknown is not true
            return sidecar.signals.read("primary", 60.0)
        finally:
            await sidecar.aclose()

    nothing_listens = f"http://127.0.0.1:{free_port()}"
    for url in (None, nothing_listens):
        signals = asyncio.run(read(url))
        fleet = {k: v for k, v in signals.items() if k.startswith("fleet_")}
        # A failed requests query is not "no traffic": every fleet figure is unknown (and
        # no drift verdict was judged: the fleet's drift signals are unknown too).
        assert fleet == dict.fromkeys(
            [
                "fleet_requests",
                "fleet_error_rate",
                "fleet_p99_latency_seconds",
                "fleet_drift_detected",
                "fleet_drift_ratio",
            ]
        ), url


# -- process level: model servers, three sidecars, redis-server, prometheus ---------------------


def _model(name: str, error_share: float, seed: int) -> Starlette:
    """A model version wrapped by the middleware (its own registry: several in one process)."""
    rng = random.Random(seed)

    async def predict(request: Request) -> JSONResponse:
        await request.body()
        if rng.random() < error_share:
            return JSONResponse({"error": "boom"}, status_code=500)
        return JSONResponse({"predictions": [1], "version": name})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    app.add_middleware(
        InferenceMonitor,
        model_name="churn",
        model_version=name,
        registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
    )
    return app


@contextlib.contextmanager
def _models(error_shares: dict[str, float]) -> Iterator[list[dict[str, ServedApp]]]:
    """Three replicas of each version in ``error_shares``: ``[{version: served}] * 3``."""
    with contextlib.ExitStack() as stack:
        yield [
            {
                version: stack.enter_context(serve_app(_model(version, share, seed=17 * i + j)))
                for j, (version, share) in enumerate(error_shares.items())
            }
            for i in range(3)
        ]


@contextlib.contextmanager
def _fleet(configs: list[str]) -> Iterator[tuple[list[Replica], str]]:
    """Three sidecars (``configs[i]``; ``PROMETHEUS`` is replaced by the server's URL) and a
    prometheus scraping their admin ports every second."""
    workdir = temp_workdir("fleet-signals")
    prom = start_prometheus(workdir, ["127.0.0.1:1"], interval="1s")
    replicas: list[Replica] = []
    try:
        for i, config in enumerate(configs):
            replicas.append(Replica(i, config.replace("PROMETHEUS", prom.url), workdir))
        targets = ", ".join(f"'127.0.0.1:{r.admin_port}'" for r in replicas)
        prom.config_path.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: mlwarden\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n"
        )
        urllib.request.urlopen(
            urllib.request.Request(f"{prom.url}/-/reload", method="POST"), timeout=10
        ).close()
        for replica in replicas:
            replica.wait_ready()
        yield replicas, prom.url
    finally:
        for replica in replicas:
            replica.proc.stop()
        prom.process.stop()


def _fleet_block(redis_url: str, fleet: str, **more: Any) -> str:
    block = {
        "redis_url": redis_url,
        "name": fleet,
        "replica": "REPLICA",
        "lease_ttl_s": TTL_S,
        "poll_interval_s": POLL_S,
        **more,
    }
    return f"fleet: {json.dumps(block)}\n"


def _promql(prom_url: str, promql: str) -> float | None:
    r = httpx.get(f"{prom_url}/api/v1/query", params={"query": promql}, timeout=5)
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


CANARY_INTERVAL_S = 4.0


def test_a_bad_canary_judged_on_prometheus_is_rolled_back_once_and_everywhere(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    canary = {
        "candidate": "candidate",
        "interval_s": CANARY_INTERVAL_S,
        "min_requests": 20,
        "failure_limit": 2,
        "guard_s": 0,
        "steps_percent": [50],
        "source": "prometheus",
        "prometheus_url": "PROMETHEUS",
    }
    with _models({"stable": 0.0, "candidate": 0.4}) as models:
        configs = [
            f"upstreams:\n  stable: {m['stable'].url}\n  candidate: {m['candidate'].url}\n"
            "routing: {primary: stable}\n"
            "health_checks: {interval_s: 60}\n"
            # The breaker stays shut: the rollback must be the analysis's, on PromQL.
            "breaker: {consecutive_5xx: 1000}\n"
            f"canary: {json.dumps(canary)}\n" + _fleet_block(fleet_redis.url, fleet)
            for m in models
        ]
        with _fleet(configs) as (replicas, prom_url), Traffic(replicas):
            _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader")
            _wait(
                lambda: all(r.status()["canary"]["state"] == "rolled_back" for r in replicas),
                60,
                "every replica rolled back",
            )
            time.sleep(1)
            statuses = [r.status() for r in replicas]
            # The verdict was the fleet's: Prometheus holds every replica's candidate series.
            _wait(
                lambda: (
                    _promql(
                        prom_url,
                        "count(count by (instance) "
                        '(mlwarden_upstream_requests_total{upstream="candidate"}))',
                    )
                    == 3
                ),
                10,
                "every replica's candidate series in Prometheus",
            )
    stream = _stream(fleet_redis.url, fleet)
    rollbacks = [r for r in stream if r["action"] == "rollback"]
    assert len(rollbacks) == 1, rollbacks
    assert not rollbacks[0]["reason"].startswith("breaker"), rollbacks  # the analysis's
    followed = [r for r in stream if r["action"] == "canary_followed"]
    assert {r["replica"] for r in followed} == {f"replica-{i}" for i in range(3)} - {
        rollbacks[0]["replica"]
    }
    for record in followed:  # within one analysis interval (plus a poll) of the decision
        assert record["at"] - rollbacks[0]["at"] <= CANARY_INTERVAL_S + POLL_S, record
    assert [s["canary"]["weight_percent"] for s in statuses] == [0, 0, 0]


def test_a_fleet_policy_fires_once_routes_every_replica_and_a_new_leader_does_not_refire(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    policy = {
        "name": "fleet-errors",
        "when": "fleet_error_rate > 0.2",
        "window_s": 15,
        "for_s": 1,
        "cooldown_s": 3600,
        "actions": ["route_to_fallback"],
    }
    with _models({"primary": 0.5, "stable": 0.0}) as models:
        configs = [
            f"upstreams:\n  primary: {m['primary'].url}\n  stable: {m['stable'].url}\n"
            "routing: {primary: primary}\n"
            "health_checks: {interval_s: 60}\n"
            "healing: {interval_s: 0.5}\n"
            f"policies: [{json.dumps(policy)}]\n"
            + _fleet_block(fleet_redis.url, fleet, prometheus_url="PROMETHEUS")
            for m in models
        ]
        with _fleet(configs) as (replicas, prom_url), Traffic(replicas):
            _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader")

            def fired() -> list[dict[str, Any]]:
                return [
                    r
                    for r in _stream(fleet_redis.url, fleet)
                    if r["action"] == "policy_fired" and r["policy"] == "fleet-errors"
                ]

            _wait(lambda: fired(), 60, "the fleet policy fired")
            (leader,) = _leaders(replicas)
            _wait(
                lambda: all(r.status()["routing"]["forced"] == "stable" for r in replicas),
                5,
                "every replica routed to the fallback",
            )
            with httpx.Client(timeout=5) as client:
                upstreams = {
                    r.index: {
                        client.post(r.url + "/predict", json={"x": 1}).headers.get(
                            "x-mlwarden-upstream"
                        )
                        for _ in range(5)
                    }
                    for r in replicas
                }
            first = fired()
            replicas[leader].kill()
            _wait(lambda: len(_leaders(replicas)) == 1, TTL_S + 2, "a new leader")
            (new,) = _leaders(replicas)
            time.sleep(4)  # the new leader's ticks: for_s and more, within the window
            still = _promql(
                prom_url,
                'sum(rate(mlwarden_upstream_requests_total{upstream="primary",outcome="5xx"}[15s]))'
                ' / sum(rate(mlwarden_upstream_requests_total{upstream="primary"}[15s]))',
            )
            new_status = replicas[new].status()
    assert upstreams == {0: {"stable"}, 1: {"stable"}, 2: {"stable"}}
    stream = _stream(fleet_redis.url, fleet)
    fired_all = [r for r in stream if r["action"] == "policy_fired"]
    assert len(first) == 1 and len(fired_all) == 1, [(r["replica"], r["at"]) for r in fired_all]
    assert fired_all[0]["replica"] == f"replica-{leader}"
    followed = [r for r in stream if r["action"] == "fleet_route_followed"]
    assert {r["replica"] for r in followed} == {f"replica-{i}" for i in range(3)} - {
        f"replica-{leader}"
    }
    for record in followed:  # within one poll interval of the decision (scheduling slack)
        assert record["at"] - fired_all[0]["at"] <= POLL_S + 0.5, record
    # The condition still held for the new leader: it watched, it did not fire again.
    assert still is not None and still > 0.2, still
    assert new_status["policies"]["fleet-errors"]["remediation"] == {
        "from": "primary",
        "to": "stable",
    }
