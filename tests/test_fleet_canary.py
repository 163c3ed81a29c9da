"""The fleet canary's reconciliation branches, driven step by step against a real Redis.

Two sidecars are built in one process (no servers: their loops are not started), sharing one
``redis-server`` and one fleet; each step of the fleet's loop and of the fleet canary is
called directly, so that a branch the process-level tests reach only by timing is taken for
certain: a follower that rolled back alone proposes its rollback, and the leader rolls the
fleet back on it; a follower that promoted alone applies the fleet's state again once Redis
is back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from tests.test_breaker_redis import RedisServer, running_redis

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _sidecar(redis_url: str, fleet: str, replica: str) -> Sidecar:
    cfg = SidecarConfig.from_mapping(
        {
            "upstreams": {"stable": "http://127.0.0.1:9", "candidate": "http://127.0.0.1:9"},
            "routing": {"primary": "stable"},
            "canary": {"candidate": "candidate", "steps_percent": [20, 50, 80]},
            "fleet": {"redis_url": redis_url, "name": fleet, "replica": replica},
        },
        environ={},
    )
    return Sidecar(cfg, health_checks=False)


def _shared(redis_url: str, fleet: str) -> dict[str, object]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(f"mlwarden:{fleet}:canary:candidate")
    finally:
        client.close()
    return {
        k.decode(): json.loads(v) if k not in (b"replica",) else v.decode() for k, v in raw.items()
    }


def test_a_follower_s_lone_rollback_is_proposed_and_the_leader_rolls_the_fleet_back(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    a = _sidecar(fleet_redis.url, fleet, "replica-a")
    b = _sidecar(fleet_redis.url, fleet, "replica-b")
    assert a.fleet is not None and b.fleet is not None
    assert a.fleet_canary is not None and b.fleet_canary is not None

    async def scenario() -> dict[str, object]:
        try:
            await a.fleet.step()
            await b.fleet.step()
            assert a.fleet.is_leader and not b.fleet.is_leader
            a.canary._step_up({})  # the leader's decision: 20% -> 50%
            await a.fleet_canary._publish()
            assert _shared(fleet_redis.url, fleet)["state"] == "analysing"
            # The follower never applied it: it rolled back alone (as while Redis was down).
            b.canary.rollback("alone: the candidate failed here")
            assert await b.fleet_canary._follow() is True  # the rollback stands: proposed
            assert b.canary.state == "rolled_back"
            await a.fleet_canary._take_proposals()
            assert a.canary.state == "rolled_back"
            await a.fleet_canary._publish()
            shared = _shared(fleet_redis.url, fleet)
            assert await b.fleet_canary._follow() is False  # the fleet agrees now
            return shared
        finally:
            await a.aclose()
            await b.aclose()

    shared = asyncio.run(scenario())
    assert (shared["state"], shared["weight"], shared["replica"]) == (
        "rolled_back",
        0.0,
        "replica-a",
    )
    (rollback,) = a.ledger.query(action="rollback")
    assert rollback.reason.startswith("proposed by replica-b, which rolled back alone")
    # The follower's own rollback is in its ledger; the proposal was taken (removed).
    assert [r.action for r in b.ledger.query(action="rollback")] == ["rollback"]
    client = redis.Redis.from_url(fleet_redis.url)
    try:
        assert not client.exists(f"mlwarden:{fleet}:canary:candidate:proposals")
    finally:
        client.close()


def test_a_promotion_taken_alone_gives_way_to_the_fleet_s_state_when_redis_is_back(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    a = _sidecar(fleet_redis.url, fleet, "replica-a")
    b = _sidecar(fleet_redis.url, fleet, "replica-b")
    assert a.fleet is not None and b.fleet is not None
    assert a.fleet_canary is not None and b.fleet_canary is not None

    async def scenario() -> None:
        try:
            await a.fleet.step()
            await b.fleet.step()
            assert a.fleet.is_leader and not b.fleet.is_leader
            a.canary._step_up({})  # the fleet's decision: 20% -> 50%
            await a.fleet_canary._publish()
            await b.fleet_canary._pass()
            assert (b.canary.state, b.canary.weight) == ("analysing", 50.0)
            # Redis unreachable for b: it decides alone, on its share, and promotes.
            b.fleet.available = False
            await b.fleet_canary._pass()
            b.canary._step_up({})
            b.canary._step_up({})
            assert (b.canary.state, b.canary.weight) == ("promoted", 100.0)
            assert b.router.primary == "candidate"
            # Back: the fleet's state (still 50%, a version b had applied) is applied again.
            b.fleet.available = True
            await b.fleet_canary._pass()
            assert (b.canary.state, b.canary.weight, b.canary.step) == ("analysing", 50.0, 1)
            assert b.router.primary == "stable"
            # Once only: the next pass has nothing to apply.
            await b.fleet_canary._pass()
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(scenario())
    followed = b.ledger.query(action="canary_followed")
    # newest first: the reconciliation, then the first following
    assert [r.reason.startswith("back from deciding alone") for r in followed] == [True, False]
    # The leader's decisions are the fleet's; b's lone promotion stays in b's own ledger.
    assert [r.action for r in a.ledger.query(action="promotion")] == []
    assert [r.action for r in b.ledger.query(action="promotion")] == ["promotion"]
