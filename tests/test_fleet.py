"""Fleet mode with real parts: three ``mlwarden sidecar`` processes, one ``redis-server``.

The upstreams are uvicorn apps on loopback: ``stable`` always answers, ``candidate`` as each
test makes it. Every sidecar has the same canary and ``fleet:`` block; traffic goes to all
three in turn. What is asserted is the fleet's: one decision per incident in the fleet's
ledger stream, every replica applying it, a new leader after the leader is SIGKILLed, and
traffic unaffected with Redis stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import Process, free_port, serve_app, temp_workdir, wait_http
from tests.test_breaker_redis import RedisServer, running_redis, start_redis

pytestmark = pytest.mark.servers

TTL_S = 3.0
INTERVAL_S = 1.0


def _app(name: str, error_share: float = 0.0) -> Starlette:
    rng = random.Random(7)

    async def predict(request: Request) -> JSONResponse:
        await request.body()
        if rng.random() < error_share:
            return JSONResponse({"error": "boom"}, status_code=500)
        return JSONResponse({"predictions": [1], "version": name})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/-/health", health)]
    )


class Replica:
    """One sidecar process of the fleet."""

    def __init__(self, index: int, config: str, workdir: Path) -> None:
        self.index = index
        self.killed = False
        self.port, self.admin_port = free_port(), free_port()
        path = workdir / f"sidecar-{index}.yaml"
        path.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {self.admin_port}}}\n"
            + config.replace("REPLICA", f"replica-{index}")
        )
        self.proc = Process(
            [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config", str(path)],
            name=f"sidecar-{index}",
            workdir=workdir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.admin_port}/-/status", timeout=5)
        r.raise_for_status()
        return r.json()

    def events(self, **params: Any) -> list[dict[str, Any]]:
        r = httpx.get(f"http://127.0.0.1:{self.admin_port}/-/events", params=params, timeout=5)
        r.raise_for_status()
        return r.json()["events"]

    def wait_ready(self) -> None:
        wait_http(f"http://127.0.0.1:{self.admin_port}/-/healthy", timeout=20)

    def kill(self) -> None:
        # Said before the signal: a request the kill cuts short is seen as the kill's, even
        # while another thread still waits for the process (Popen.poll() then says None).
        self.killed = True
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(timeout=10)


def _config(stable: str, candidate: str, redis_url: str, fleet: str, **canary: Any) -> str:
    block = {
        "candidate": "candidate",
        "interval_s": INTERVAL_S,
        "min_requests": 20,
        "failure_limit": 2,
        "guard_s": 0,
        **canary,
    }
    return (
        f"upstreams:\n  stable: {stable}\n  candidate: {candidate}\n"
        "routing: {primary: stable}\n"
        "health_checks: {interval_s: 60}\n"
        f"canary: {json.dumps(block)}\n"
        f"fleet: {{redis_url: '{redis_url}', name: {fleet}, replica: REPLICA, "
        f"lease_ttl_s: {TTL_S}, poll_interval_s: 0.2}}\n"
    )


@contextlib.contextmanager
def fleet_of_three(config: str) -> Iterator[list[Replica]]:
    workdir = temp_workdir("fleet")
    replicas = [Replica(i, config, workdir) for i in range(3)]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.proc.stop()


class Traffic:
    """Requests to every live replica in turn, in a thread, bounded in count and time."""

    def __init__(self, replicas: list[Replica], *, max_requests: int = 20_000) -> None:
        self.replicas = replicas
        self.max_requests = max_requests
        self.answers: list[int] = []
        self.timed: list[tuple[float, int]] = []
        self.failures: list[tuple[int, int]] = []  # (replica, status) of each non-200
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self._stop.is_set() and i < self.max_requests and time.monotonic() < deadline:
                live = [r for r in self.replicas if not r.killed and r.proc.proc.poll() is None]
                replica = live[i % len(live)]
                try:
                    status = client.post(replica.url + "/predict", json={"x": i}).status_code
                except httpx.HTTPError:
                    status = 0
                if not replica.killed:  # a killed replica's last answer: not its fault
                    self.timed.append((time.monotonic(), status))
                    self.answers.append(status)
                    if status != 200:
                        self.failures.append((replica.index, status))
                i += 1
                time.sleep(0.004)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _wait(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g}s: {what}")


def _leaders(replicas: list[Replica]) -> list[int]:
    return [
        r.index for r in replicas if r.proc.proc.poll() is None and r.status()["fleet"]["leader"]
    ]


def _stream(redis_url: str, fleet: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        out = []
        for _id, fields in client.xrange(f"mlwarden:{fleet}:ledger"):
            record = json.loads(fields[b"record"])
            record["replica"] = fields[b"replica"].decode()
            out.append(record)
        return out
    finally:
        client.close()


@pytest.fixture
def fleet_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def test_a_bad_canary_is_rolled_back_once_for_the_fleet(fleet_redis: RedisServer) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    with (
        serve_app(_app("stable")) as stable,
        serve_app(_app("candidate", error_share=0.4)) as candidate,
        fleet_of_three(
            _config(stable.url, candidate.url, fleet_redis.url, fleet, steps_percent=[50])
        ) as replicas,
        Traffic(replicas) as traffic,
    ):
        _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader")
        _wait(
            lambda: all(r.status()["canary"]["state"] == "rolled_back" for r in replicas),
            30,
            "every replica rolled back",
        )
        all_back = time.monotonic()
        time.sleep(1)
        statuses = [r.status() for r in replicas]
    stream = _stream(fleet_redis.url, fleet)
    rollbacks = [r for r in stream if r["action"] == "rollback"]
    assert len(rollbacks) == 1, rollbacks
    decided_by = rollbacks[0]["replica"]
    followed = [r for r in stream if r["action"] == "canary_followed"]
    assert {r["replica"] for r in followed} == {f"replica-{i}" for i in range(3)} - {decided_by}
    # Every follower applied it within one analysis interval (plus its poll).
    for record in followed:
        assert record["at"] - rollbacks[0]["at"] <= INTERVAL_S + 0.5, record
    assert all(s["canary"]["weight_percent"] == 0 for s in statuses)
    # Before the rollback a POST the candidate failed is its answer (POST is not retried by
    # default); after it, no replica sends a request to the candidate any more.
    after = [a for t, a in list(traffic.timed) if t > all_back]
    assert after and after.count(200) == len(after)
    assert 0 not in traffic.answers


def test_the_leader_killed_mid_canary_is_replaced_within_the_ttl(fleet_redis: RedisServer) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    with (
        serve_app(_app("stable")) as stable,
        serve_app(_app("candidate")) as candidate,
        fleet_of_three(
            _config(
                stable.url,
                candidate.url,
                fleet_redis.url,
                fleet,
                steps_percent=[20, 50, 80],
                interval_s=2.0,
            )
        ) as replicas,
        Traffic(replicas) as traffic,
    ):
        _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader")
        _wait(
            lambda: any(r["action"] == "set_weight" for r in _stream(fleet_redis.url, fleet)),
            30,
            "a first step of the canary",
        )
        (leader,) = _leaders(replicas)
        term = replicas[leader].status()["fleet"]["term"]
        replicas[leader].kill()
        took = _wait(lambda: len(_leaders(replicas)) == 1, TTL_S + 2 * INTERVAL_S, "a new leader")
        (new,) = _leaders(replicas)
        assert new != leader
        assert replicas[new].status()["fleet"]["term"] > term
        _wait(
            lambda: all(
                r.status()["canary"]["state"] in ("promoted", "done")
                for r in replicas
                if r.proc.proc.poll() is None
            ),
            40,
            "the canary promoted on the surviving replicas",
        )
    stream = _stream(fleet_redis.url, fleet)
    decisions = [r for r in stream if r["action"] in ("set_weight", "promotion", "rollback")]
    # One decision per step for the whole fleet, across the takeover: 20→50, 50→80, promote.
    assert [r["action"] for r in decisions] == ["set_weight", "set_weight", "promotion"], [
        (r["action"], r["replica"], r["reason"]) for r in decisions
    ]
    assert took <= TTL_S + 2 * INTERVAL_S
    assert traffic.answers.count(200) == len(traffic.answers), traffic.failures


def test_with_redis_stopped_traffic_goes_on_and_each_replica_decides_alone(
    tmp_path: Path,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    workdir = temp_workdir("fleet-redis")
    server = start_redis(workdir)
    port = server.port
    try:
        with (
            serve_app(_app("stable")) as stable,
            serve_app(_app("candidate")) as candidate,
            fleet_of_three(
                _config(stable.url, candidate.url, server.url, fleet, steps_percent=[50])
            ) as replicas,
            Traffic(replicas) as traffic,
        ):
            _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader")
            server.stop()
            _wait(
                lambda: all(not r.status()["fleet"]["redis_available"] for r in replicas),
                10,
                "every replica degraded",
            )
            assert _leaders(replicas) == []
            during = len(traffic.answers)
            time.sleep(2)
            assert len(traffic.answers) > during  # requests never wait on Redis
            for replica in replicas:
                assert [e["action"] for e in replica.events(action="fleet_degraded")]
            server = start_redis(workdir, port=port)
            _wait(
                lambda: all(r.status()["fleet"]["redis_available"] for r in replicas),
                10,
                "every replica back in the fleet",
            )
            _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader again")
            for replica in replicas:
                assert replica.events(action="fleet_restored")
        assert traffic.answers.count(200) == len(traffic.answers)
    finally:
        server.stop()


def test_three_heals_on_three_replicas_are_one_escalation(fleet_redis: RedisServer) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    with (
        serve_app(_app("primary", error_share=1.0)) as primary,
        serve_app(_app("stable")) as stable,
    ):
        config = (
            f"upstreams:\n  primary: {primary.url}\n  stable: {stable.url}\n"
            "health_checks: {interval_s: 60}\n"
            "healing: {interval_s: 0.5, escalation: {threshold: 2, window_s: 3600}}\n"
            "policies:\n"
            "  - name: primary-failing\n"
            "    when: requests >= 5 and error_rate > 0.5\n"
            "    window_s: 30\n"
            "    cooldown_s: 3600\n"
            f"fleet: {{redis_url: '{fleet_redis.url}', name: {fleet}, replica: REPLICA, "
            f"lease_ttl_s: {TTL_S}, poll_interval_s: 0.2}}\n"
        )
        with fleet_of_three(config) as replicas, Traffic(replicas):
            _wait(
                lambda: (
                    {
                        r["replica"]
                        for r in _stream(fleet_redis.url, fleet)
                        if r["action"] == "policy_fired"
                    }
                    == {"replica-0", "replica-1", "replica-2"}
                ),
                30,
                "the policy fired on every replica",
            )
            _wait(
                lambda: any(r["action"] == "escalation" for r in _stream(fleet_redis.url, fleet)),
                10,
                "an escalation",
            )
            time.sleep(2)  # further sweeps on the leader: still one
            local = [len(r.events(action="policy_fired")) for r in replicas]
    # Stopping the replicas one after the other hands the lease on: the new leaders' sweeps
    # find the escalation in the fleet's counts and do not repeat it.
    stream = _stream(fleet_redis.url, fleet)
    escalations = [r for r in stream if r["action"] == "escalation"]
    assert len(escalations) == 1, [(e["replica"], e["reason"], e["at"]) for e in escalations] + [
        (r["replica"], r["action"], r["at"]) for r in stream
    ]
    # On the fleet's three firings: by the leader's sweep ("fired 3 times in the fleet"), or by
    # the leader's own engine when the third firing was its own (it counts the fleet's too).
    assert re.match(r"fired 3 times (in the fleet )?within", escalations[0]["reason"]), escalations
    # Each replica alone saw one firing: below the threshold, no escalation of its own.
    assert local == [1, 1, 1]


def test_a_rollback_taken_alone_during_an_outage_wins_when_redis_is_back(
    fleet_redis: RedisServer,
) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    failing = {"share": 0.0}
    rng = random.Random(3)

    async def candidate_predict(request: Request) -> JSONResponse:
        await request.body()
        if rng.random() < failing["share"]:
            return JSONResponse({"error": "boom"}, status_code=500)
        return JSONResponse({"predictions": [1], "version": "candidate"})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    candidate_app = Starlette(
        routes=[
            Route("/predict", candidate_predict, methods=["POST"]),
            Route("/-/health", health),
        ]
    )
    redis_pid = fleet_redis.process.pid
    with (
        serve_app(_app("stable")) as stable,
        serve_app(candidate_app) as candidate,
        fleet_of_three(
            _config(stable.url, candidate.url, fleet_redis.url, fleet, steps_percent=[20, 50])
        ) as replicas,
        Traffic(replicas),
    ):
        _wait(
            lambda: any(r["action"] == "set_weight" for r in _stream(fleet_redis.url, fleet)),
            30,
            "the fleet's first step (published: the fleet's state is analysing at 50%)",
        )
        os.kill(redis_pid, signal.SIGSTOP)  # unreachable, its state kept
        try:
            _wait(
                lambda: all(not r.status()["fleet"]["redis_available"] for r in replicas),
                10,
                "every replica deciding alone",
            )
            failing["share"] = 0.5
            _wait(
                lambda: all(r.status()["canary"]["state"] == "rolled_back" for r in replicas),
                30,
                "each replica rolled back alone",
            )
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        _wait(lambda: len(_leaders(replicas)) == 1, TTL_S * 3, "one leader again")
        time.sleep(2 * INTERVAL_S)
        states = [r.status()["canary"]["state"] for r in replicas]
        client = redis.Redis.from_url(fleet_redis.url)
        shared = client.hgetall(f"mlwarden:{fleet}:canary:candidate")
        client.close()
    # Nobody un-did its rollback on seeing the fleet's older "analysing": the rollback won.
    assert states == ["rolled_back"] * 3
    assert json.loads(shared[b"state"]) == "rolled_back"
    stream = _stream(fleet_redis.url, fleet)
    assert {r["replica"] for r in stream if r["action"] == "fleet_degraded"} == {
        "replica-0",
        "replica-1",
        "replica-2",
    }
