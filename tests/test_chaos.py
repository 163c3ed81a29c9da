"""Chaos tests of the sidecar: real processes on loopback, killed, frozen and restarted by PID.

Each upstream is ``tests/chaos_upstream.py`` in its own uvicorn process (so it can be SIGKILLed
and restarted on the same port, or SIGSTOPped); the sidecar is the real CLI,
``mlwarden sidecar --config FILE``, with its admin port read for ``/-/status`` and
``/metrics``. Clients are httpx clients in threads. Every process is stopped by its PID in the
``lab`` fixture's teardown; every load loop is bounded in requests and in seconds.

Health-check intervals and breaker reset timeouts are short (0.25 s, 0.5 s) so that the
scenarios play out in seconds; the margins on timings are generous because the machine is
shared, and the assertions on counts are exact wherever the behaviour is deterministic.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos_upstream import should_fail
from tests.servers import LOOPBACK, Process, free_port, wait_http

pytestmark = pytest.mark.servers

UPSTREAM_SCRIPT = Path(__file__).with_name("chaos_upstream.py")
MLWARDEN = Path(sys.executable).with_name("mlwarden")
UPSTREAM_HEADER = "x-mlwarden-upstream"

#: What every scenario shares; a test overrides single keys of a block.
BASE_CONFIG: dict[str, dict[str, Any]] = {
    "timeouts": {"per_try_timeout_s": 1.0, "total_timeout_s": 3.0},
    "retry": {"base_interval_s": 0.005, "max_interval_s": 0.02},
    "breaker": {"reset_timeout_s": 0.5},
    "health_checks": {
        "interval_s": 0.25,
        "timeout_s": 0.2,
        "healthy_threshold": 2,
        "unhealthy_threshold": 2,
    },
}

# --------------------------------------------------------------------------- processes


def wait_port(port: int, *, timeout: float = 20.0) -> None:
    """Poll until something accepts TCP connections on the loopback ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout}s") from None
            time.sleep(0.05)


class Upstream:
    """One ``chaos_upstream.py`` process on a fixed port; started again on the same port."""

    def __init__(self, workdir: Path, name: str, args: list[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.args = args
        self.port = free_port()
        self.process: Process | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._starts += 1
        self.process = Process(
            [
                sys.executable,
                str(UPSTREAM_SCRIPT),
                "--port",
                str(self.port),
                "--name",
                self.name,
                *self.args,
            ],
            name=f"{self.name}-{self._starts}",
            workdir=self.workdir,
        )

    def wait_ready(self) -> None:
        assert self.process is not None
        try:
            wait_http(f"{self.url}/-/chaos/stats", timeout=15)
        except TimeoutError:
            raise RuntimeError(
                f"upstream {self.name} did not start:\n{self.process.log()}"
            ) from None

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL by PID (also wakes a SIGSTOPped process), reap it, close its log."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.proc.wait(timeout=10)
        process.stop()  # only closes the log now

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/-/chaos/stats", timeout=5, trust_env=False).json()

    def attempts(self, request_id: str) -> list[float]:
        return httpx.get(
            f"{self.url}/-/chaos/attempts", params={"id": request_id}, timeout=5, trust_env=False
        ).json()["at"]


@dataclass
class Sidecar:
    """The ``mlwarden sidecar`` process and its two ports."""

    process: Process
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://{LOOPBACK}:{self.admin_port}{path}", timeout=5, trust_env=False)

    def status(self) -> dict[str, Any]:
        return self.admin("/-/status").json()

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the admin ``/metrics``, or None when it is not exposed."""
        for family in text_string_to_metric_families(self.admin("/metrics").text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    def log(self) -> str:
        return self.process.log()


class Lab:
    """Starts upstreams and sidecars in one work directory; :meth:`close` stops every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._upstreams: list[Upstream] = []
        self._sidecars: list[Sidecar] = []

    def upstreams(self, **specs: list[str]) -> dict[str, Upstream]:
        """Start one upstream per name with those command-line options; wait for all of them."""
        started = {}
        for name, args in specs.items():
            upstream = Upstream(self.workdir, name, args)
            self._upstreams.append(upstream)
            upstream.start()
            started[name] = upstream
        for upstream in started.values():
            upstream.wait_ready()
        return started

    def sidecar(self, upstreams: dict[str, str], **blocks: dict[str, Any]) -> Sidecar:
        """Write a config (``BASE_CONFIG`` with ``blocks`` merged per key) and serve it."""
        port, admin_port = free_port(), free_port()
        data: dict[str, Any] = {
            "listen": {"host": LOOPBACK, "port": port},
            "admin": {"host": LOOPBACK, "port": admin_port},
            "upstreams": {
                name: {"url": url, "connect_timeout_s": 0.25} for name, url in upstreams.items()
            },
        }
        for key in BASE_CONFIG.keys() | blocks.keys():
            data[key] = {**BASE_CONFIG.get(key, {}), **blocks.get(key, {})}
        path = self.workdir / f"sidecar-{len(self._sidecars)}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        process = Process(
            [str(MLWARDEN), "sidecar", "--config", str(path)],
            name=f"sidecar-{len(self._sidecars)}",
            workdir=self.workdir,
        )
        sidecar = Sidecar(process, port, admin_port)
        self._sidecars.append(sidecar)
        try:
            wait_http(f"http://{LOOPBACK}:{admin_port}/-/healthy", timeout=20)
            wait_port(port)
        except TimeoutError:
            raise RuntimeError(f"the sidecar did not start:\n{sidecar.log()}") from None
        return sidecar

    def close(self) -> None:
        for sidecar in self._sidecars:
            sidecar.process.stop()
        for upstream in self._upstreams:
            upstream.kill()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Answer:
    """One client request: when it started and ended (monotonic), what came back."""

    index: int
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all (the error says why)
    upstream: str | None
    body: bytes
    error: str | None = None

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


class Load:
    """Client threads POSTing ``path(i)`` until stopped, ``max_requests`` sent or ``max_s`` passed.

    Each worker has its own keep-alive httpx client; ``pace_s`` is a pause after each request,
    to leave the two shared cores to the servers.
    """

    def __init__(
        self,
        base_url: str,
        *,
        workers: int,
        max_requests: int,
        max_s: float,
        path: Callable[[int], str] = lambda i: f"/predict?id=r{i}",
        pace_s: float = 0.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.max_requests = max_requests
        self.path = path
        self.pace_s = pace_s
        self.timeout_s = timeout_s
        self.sent = 0
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._until = time.monotonic() + max_s
        self._threads = [
            threading.Thread(target=self._work, name=f"load-{n}", daemon=True)
            for n in range(workers)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 10)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not finish"
        return self.answers

    def join(self) -> list[Answer]:
        """Wait for the load to end by itself (count or time), then return the answers."""
        for thread in self._threads:
            thread.join(timeout=max(0.0, self._until - time.monotonic()) + self.timeout_s + 10)
        return self.stop()

    @property
    def answers(self) -> list[Answer]:
        with self._lock:
            return sorted(self._answers, key=lambda a: a.index)

    def wait_for(self, predicate: Callable[[list[Answer]], bool], *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.answers):
                return True
            time.sleep(0.02)
        return predicate(self.answers)

    def _work(self) -> None:
        with httpx.Client(
            base_url=self.base_url, timeout=self.timeout_s, trust_env=False
        ) as client:
            while not self._stop.is_set() and time.monotonic() < self._until:
                with self._lock:
                    if self.sent >= self.max_requests:
                        return
                    index = self.sent
                    self.sent += 1
                started = time.monotonic()
                try:
                    r = client.post(self.path(index), json={"i": index})
                    answer = Answer(
                        index,
                        started,
                        time.monotonic(),
                        r.status_code,
                        r.headers.get(UPSTREAM_HEADER),
                        r.content,
                    )
                except httpx.HTTPError as exc:
                    answer = Answer(index, started, time.monotonic(), 0, None, b"", repr(exc))
                with self._lock:
                    self._answers.append(answer)
                if self.pace_s:
                    self._stop.wait(self.pace_s)


def run_load(base_url: str, **options: Any) -> list[Answer]:
    with Load(base_url, **options) as load:
        return load.join()


def by_upstream(answers: list[Answer]) -> Counter[str | None]:
    return Counter(a.upstream for a in answers)


def not_ok(answers: list[Answer]) -> list[tuple[int, int, str | None, bytes]]:
    return [(a.index, a.status, a.error, a.body[:200]) for a in answers if a.status != 200]


# --------------------------------------------------------------------------- /proc


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_sockets(pid: int) -> Counter[str]:
    """The TCP sockets ``pid`` holds open, by state (its fds matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed between listdir and readlink
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    states[_TCP_STATES.get(fields[3], fields[3])] += 1
    return states


def settled(read: Callable[[], int], *, at_most: int | None = None, timeout: float = 3.0) -> int:
    """``read()`` once it is ``at_most`` or less, or (without ``at_most``) once three reads
    50 ms apart agree; bounded by ``timeout``. A socket just closed takes a moment to go."""
    deadline = time.monotonic() + timeout
    reads = [read()]
    while time.monotonic() < deadline:
        if at_most is not None and reads[-1] <= at_most:
            break
        if at_most is None and len(reads) >= 3 and len(set(reads[-3:])) == 1:
            break
        time.sleep(0.05)
        reads.append(read())
    return reads[-1]


# --------------------------------------------------------------------------- 1. flaky primary


def test_primary_failing_30_percent_is_hidden_by_retries_and_fallback(lab: Lab) -> None:
    n, seed, fraction, num_retries = 300, 7, 0.3, 2
    ups = lab.upstreams(primary=["--fail-fraction", str(fraction), "--seed", str(seed)], stable=[])
    sidecar = lab.sidecar(
        {"primary": ups["primary"].url, "stable": ups["stable"].url},
        retry={"num_retries": num_retries, "min_retries_per_s": 100},
        # This test is about retries and fallback: a breaker that trips on a run of 503s
        # (test 2's subject) or a budget that runs dry (test 5's) would blur the exact counts.
        breaker={"consecutive_5xx": 1000},
        health_checks={"interval_s": 0.5, "timeout_s": 0.4, "unhealthy_threshold": 3},
    )
    # The upstream's verdict depends on (id, attempt) only, so the outcome of every request
    # is known in advance whatever the interleaving: the first of its 1 + num_retries
    # attempts on the primary that succeeds answers it, else stable does.
    first_success: dict[int, int | None] = {}
    for i in range(n):
        first_success[i] = next(
            (k for k in range(1, num_retries + 2) if not should_fail(seed, fraction, f"r{i}", k)),
            None,
        )
    want_primary = sum(k is not None for k in first_success.values())
    want_attempts = sum(k or num_retries + 1 for k in first_success.values())

    answers = run_load(sidecar.url, workers=6, max_requests=n, max_s=60)

    assert len(answers) == n
    assert not_ok(answers) == []
    assert by_upstream(answers) == {"primary": want_primary, "stable": n - want_primary}
    for a in answers:  # each request answered by the attempt that was due to succeed
        k = first_success[a.index]
        assert (a.upstream, json.loads(a.body)["attempt"]) == (
            ("primary", k) if k is not None else ("stable", 1)
        ), a
    primary, stable = ups["primary"].stats(), ups["stable"].stats()
    assert primary["requests"] == want_attempts
    assert primary["statuses"] == {"200": want_primary, "503": want_attempts - want_primary}
    assert stable["requests"] == n - want_primary
    assert 0.2 < (n - sum(k == 1 for k in first_success.values())) / n < 0.4  # seeded ~30%
    assert sidecar.metric("mlwarden_retry_budget_retries_total") == want_attempts - n
    assert sidecar.metric("mlwarden_retry_budget_exhausted_total") == 0
    assert (
        sidecar.metric("mlwarden_health_transitions_total", upstream="primary", to="unhealthy") == 0
    )


# --------------------------------------------------------------------------- 2. primary killed


def test_primary_killed_mid_load_loses_no_request_and_takes_traffic_back_after_restart(
    lab: Lab,
) -> None:
    ups = lab.upstreams(primary=[], stable=[])
    primary = ups["primary"]
    sidecar = lab.sidecar(
        {"primary": primary.url, "stable": ups["stable"].url},
        breaker={"consecutive_5xx": 3, "reset_timeout_s": 0.5},
    )

    def primary_answers_after(t: float) -> Callable[[list[Answer]], bool]:
        return lambda answers: any(a.upstream == "primary" and a.started >= t for a in answers)

    open_seen = False
    with Load(sidecar.url, workers=4, max_requests=20_000, max_s=30, pace_s=0.01) as load:
        assert load.wait_for(lambda answers: len(answers) >= 50, timeout=10)
        killed_at = time.monotonic()
        primary.kill()
        deadline = killed_at + 5
        while time.monotonic() < deadline and not open_seen:
            open_seen = sidecar.metric("mlwarden_breaker_state", upstream="primary") == 2
            time.sleep(0.05)
        time.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))  # one second of outage
        primary.start()
        primary.wait_ready()
        restarted_at = time.monotonic()
        back = load.wait_for(primary_answers_after(restarted_at), timeout=10)
        back_at = time.monotonic()
        load.wait_for(lambda answers: answers[-1].started > back_at + 0.5, timeout=5)
        status_read_at = time.monotonic()
        status = sidecar.status()
        answers = load.stop()
        sent = load.sent

    assert open_seen, f"breaker never seen open; log:\n{sidecar.log()}"
    assert back, f"the restarted primary got no traffic within 10 s; log:\n{sidecar.log()}"
    # No request lost: every request sent got an HTTP 200.
    assert len(answers) == sent
    assert not_ok(answers) == []
    assert sum(a.status == 200 for a in answers) == sent
    before = [a for a in answers if a.ended < killed_at]
    outage = [a for a in answers if killed_at <= a.started and a.ended < restarted_at]
    assert by_upstream(before)["primary"] >= 1
    first_stable = min(a.ended for a in answers if a.upstream == "stable" and a.ended >= killed_at)
    assert first_stable - killed_at < 1.0
    assert {a.upstream for a in outage} == {"stable"}
    assert max(a.elapsed for a in outage) < 1.0  # nobody waited out a per-try timeout
    assert sidecar.metric("mlwarden_breaker_transitions_total", upstream="primary", to="open") >= 1

    # Back: only once the health checks passed healthy_threshold times, which closes the
    # breaker (close_on_healthy; or its half-open trial did); within a few intervals.
    first_back = min(
        (a for a in answers if a.upstream == "primary" and a.started >= restarted_at),
        key=lambda a: a.started,
    )
    assert first_back.ended - restarted_at < 5.0
    health = status["health"]["upstreams"]["primary"]
    went_healthy = [t for t in health["transitions"] if t["healthy"]]
    assert went_healthy and went_healthy[-1]["reason"].startswith("2 consecutive passed checks")
    healthy_at = status_read_at - went_healthy[-1]["seconds_ago"]
    assert first_back.ended >= healthy_at - 0.001
    breaker = status["upstreams"]["primary"]["breaker"]
    assert breaker["state"] == "closed"
    last = breaker["transitions"][-1]
    assert last["to"] == "closed"
    assert (last["from"], last["reason"]) in {
        ("half_open", "trial_success"),
        ("open", "health_check_passed"),
        ("half_open", "health_check_passed"),
    }
    assert any(
        t["to"] == "open" and t["reason"].startswith("failure_threshold")
        for t in breaker["transitions"]
    )
    after = [a for a in answers if a.started > first_back.ended + 0.2]
    assert len(after) >= 10
    assert by_upstream(after) == {"primary": len(after)}
    assert sidecar.metric("mlwarden_breaker_state", upstream="primary") == 0


# --------------------------------------------------------------------------- 3. primary hangs

PER_TRY_S = 0.4
MARGIN_S = 0.6  # the machine is shared: a wide margin, still well below 2 x per-try


@pytest.mark.parametrize("hang", ["handler", "sigstop"])
def test_hanging_primary_each_request_falls_back_within_the_per_try_timeout(
    lab: Lab, hang: str
) -> None:
    """``handler``: the prediction handler never answers while /-/health passes, so only the
    breaker protects; ``sigstop``: the whole process is frozen (the kernel still accepts)."""
    ups = lab.upstreams(primary=["--mode", "hang"] if hang == "handler" else [], stable=[])
    sidecar = lab.sidecar(
        {"primary": ups["primary"].url, "stable": ups["stable"].url},
        timeouts={"per_try_timeout_s": PER_TRY_S, "total_timeout_s": 3.0},
        # Timeouts are not retried on the same upstream (the default: see the test below).
        breaker={"consecutive_5xx": 3, "reset_timeout_s": 0.5},
    )
    if hang == "sigstop":
        warm = run_load(
            sidecar.url, workers=2, max_requests=10, max_s=20, path=lambda i: f"/predict?id=w{i}"
        )
        assert by_upstream(warm) == {"primary": 10}  # keep-alive connections now exist
        ups["primary"].send_signal(signal.SIGSTOP)

    started = time.monotonic()
    workers = 3
    answers = run_load(sidecar.url, workers=workers, max_requests=30, max_s=60)
    duration = time.monotonic() - started

    assert not_ok(answers) == []
    assert by_upstream(answers) == {"stable": 30}
    slowest = max(a.elapsed for a in answers)
    assert slowest <= PER_TRY_S + MARGIN_S, sorted(round(a.elapsed, 3) for a in answers)
    if hang == "handler":
        # Health passes, so the breaker alone protects. Each attempt on the primary cost its
        # request one per-try timeout; before the breaker counted consecutive_5xx (3) failures
        # each of the other workers could start one more, then one half-open probe per reset
        # timeout (0.5 s) at most.
        slow = sum(a.elapsed >= PER_TRY_S for a in answers)
        attempts = ups["primary"].stats()["requests"]
        assert 3 <= attempts <= slow
        assert attempts <= 3 + (workers - 1) + math.ceil(duration / 0.5)
        assert (
            sidecar.metric("mlwarden_breaker_transitions_total", upstream="primary", to="open") >= 1
        )
    else:
        # A frozen process also fails its health checks: out of rotation, maybe before the
        # first request reached it (then no request waited at all).
        assert sidecar.status()["upstreams"]["primary"]["available"] is False


def test_hanging_primary_with_the_default_retry_on_is_not_retried_on_timeout(lab: Lab) -> None:
    ups = lab.upstreams(primary=["--mode", "hang"], stable=[])
    sidecar = lab.sidecar(
        {"primary": ups["primary"].url, "stable": ups["stable"].url},
        timeouts={"per_try_timeout_s": PER_TRY_S, "total_timeout_s": 3.0},
    )
    answers = run_load(sidecar.url, workers=1, max_requests=1, max_s=20)
    assert not_ok(answers) == []
    assert answers[0].upstream == "stable"
    assert ups["primary"].stats()["requests"] == 1
    assert answers[0].elapsed <= PER_TRY_S + MARGIN_S


# --------------------------------------------------------------------------- 4. both down


@pytest.mark.parametrize("down", ["nothing_listening", "both_killed"])
def test_both_upstreams_down_answers_503_json_fast_and_leaks_no_descriptors(
    lab: Lab, down: str
) -> None:
    """``nothing_listening``: the ports were never served; ``both_killed``: both served
    traffic (the sidecar's pools hold keep-alive connections to them), then got SIGKILLed."""
    if down == "nothing_listening":
        sidecar = lab.sidecar(
            {
                "primary": f"http://{LOOPBACK}:{free_port()}",
                "stable": f"http://{LOOPBACK}:{free_port()}",
            }
        )
    else:
        ups = lab.upstreams(primary=[], stable=[])
        sidecar = lab.sidecar({name: u.url for name, u in ups.items()})
        warm = run_load(sidecar.url, workers=4, max_requests=40, max_s=20)
        assert by_upstream(warm) == {"primary": 40}
        assert tcp_sockets(sidecar.pid)["ESTABLISHED"] >= 1  # pooled upstream connections
        for upstream in ups.values():
            upstream.kill()
    measured: dict[int, tuple[int, Counter[str]]] = {}
    answers: list[tuple[int, float, httpx.Response]] = []
    with httpx.Client(base_url=sidecar.url, timeout=10, trust_env=False) as client:
        for i in range(200):
            # Every other request on a fresh connection that the server closes after the
            # answer, so a per-connection leak shows as well as a per-request one.
            headers = {"connection": "close"} if i % 2 else {}
            started = time.monotonic()
            r = client.post(f"/predict?id=d{i}", json={"i": i}, headers=headers)
            answers.append((i, time.monotonic() - started, r))
            if i + 1 == 20:
                fds = settled(lambda: open_fds(sidecar.pid))
                measured[20] = (fds, tcp_sockets(sidecar.pid))
        fds_after = settled(lambda: open_fds(sidecar.pid), at_most=measured[20][0] + 2)
        measured[200] = (fds_after, tcp_sockets(sidecar.pid))

    for i, elapsed, r in answers:
        assert r.status_code == 503, (i, r.text)
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "no upstream available"
        assert body["tried"] == ["primary", "stable"]
        assert UPSTREAM_HEADER not in r.headers
        assert elapsed < 0.5, (i, elapsed, body)
    (fds_20, tcp_20), (fds_200, tcp_200) = measured[20], measured[200]
    assert fds_200 <= fds_20 + 2, (fds_20, fds_200)
    assert sum(tcp_200.values()) <= sum(tcp_20.values()) + 2, (tcp_20, tcp_200)
    assert tcp_200["CLOSE_WAIT"] == 0, tcp_200
    assert sidecar.admin("/-/ready").status_code == 503


# --------------------------------------------------------------------------- 5. retry budget

BUDGET_WINDOW_S = 10.0  # RetryBudget's window (not configurable)


def _budget_run(
    lab: Lab, upstream: Upstream, n: int, retry: dict[str, Any]
) -> tuple[int, float, list[Answer], dict[str, float | None]]:
    """Send ``n`` requests to a sidecar with this retry block; upstream attempts they cost."""
    sidecar = lab.sidecar(
        {"primary": upstream.url},
        retry=retry,
        # 503s must not trip the breaker: the budget alone bounds the attempts here.
        breaker={"consecutive_5xx": 10_000},
    )
    before = upstream.stats()["requests"]
    started = time.monotonic()
    answers = run_load(sidecar.url, workers=4, max_requests=n, max_s=30)
    duration = time.monotonic() - started
    metrics = {
        name: sidecar.metric(f"mlwarden_retry_budget_{name}_total")
        for name in ("requests", "retries", "exhausted")
    }
    sidecar.process.stop()
    return upstream.stats()["requests"] - before, duration, answers, metrics


def test_retry_budget_bounds_upstream_attempts_when_every_request_fails(lab: Lab) -> None:
    n, num_retries, percent, min_per_s = 100, 3, 20, 1
    upstream = lab.upstreams(primary=["--mode", "503", "--health", "plain"])["primary"]

    attempts, duration, answers, metrics = _budget_run(
        lab,
        upstream,
        n,
        {
            "num_retries": num_retries,
            "budget_percent": percent,
            "min_retries_per_s": min_per_s,
            "base_interval_s": 0.001,
            "max_interval_s": 0.002,
        },
    )

    # The last candidate's retriable status is passed on as sent.
    assert len(answers) == n
    assert {(a.status, a.upstream) for a in answers} == {(503, "primary")}
    # RetryBudget: a retry is allowed while retries + 1 <= percent/100 * requests
    # + min_retries_per_s * window_s, over the window; the whole run fits in one window.
    assert duration < BUDGET_WINDOW_S - 2, "the run outlasted one budget window"
    bound = percent / 100 * n + min_per_s * BUDGET_WINDOW_S
    assert metrics["requests"] == n
    assert metrics["retries"] == bound  # every request wanted more retries than it could get
    assert attempts == n + metrics["retries"]
    assert attempts <= n * (1 + percent / 100) + min_per_s * BUDGET_WINDOW_S
    assert metrics["exhausted"] > 0
    # Each request either got all its retries or stopped at the first refused one.
    assert metrics["exhausted"] >= n - metrics["retries"] / num_retries

    # The same failure with a budget that never runs dry: every request is tried 1 + 3 times.
    big_attempts, _, big_answers, big_metrics = _budget_run(
        lab,
        upstream,
        n,
        {
            "num_retries": num_retries,
            "budget_percent": 100,
            "min_retries_per_s": 1000,
            "base_interval_s": 0.001,
            "max_interval_s": 0.002,
        },
    )
    assert {(a.status, a.upstream) for a in big_answers} == {(503, "primary")}
    assert big_attempts == n * (1 + num_retries)
    assert big_metrics["retries"] == n * num_retries
    assert big_metrics["exhausted"] == 0
    assert attempts < big_attempts / 3  # the budget bites


# --------------------------------------------------------------------------- 6. Retry-After


def test_retry_after_is_waited_for_when_it_fits_in_the_deadline(lab: Lab) -> None:
    upstream = lab.upstreams(primary=[])["primary"]
    sidecar = lab.sidecar(
        {"primary": upstream.url}, timeouts={"per_try_timeout_s": 1.0, "total_timeout_s": 3.0}
    )
    with httpx.Client(base_url=sidecar.url, timeout=10, trust_env=False) as client:
        started = time.monotonic()
        r = client.post("/predict?id=ra1&fail_first=1&retry_after=1", json={})
        elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.headers[UPSTREAM_HEADER] == "primary"
    assert r.json()["attempt"] == 2
    first, second = upstream.attempts("ra1")
    # The wait is max(backoff, Retry-After) = max(<= 0.02 s, 1 s), measured at the upstream.
    assert 1.0 - 0.005 <= second - first <= 1.0 + 0.02 + 0.5
    assert 1.0 <= elapsed < 3.0


def test_retry_after_beyond_the_deadline_is_not_waited_for(lab: Lab) -> None:
    upstream = lab.upstreams(primary=[])["primary"]
    sidecar = lab.sidecar(
        {"primary": upstream.url}, timeouts={"per_try_timeout_s": 1.0, "total_timeout_s": 3.0}
    )
    with httpx.Client(base_url=sidecar.url, timeout=10, trust_env=False) as client:
        started = time.monotonic()
        r = client.post("/predict?id=ra2&fail_first=1&retry_after=10", json={})
        elapsed = time.monotonic() - started
    # The wait does not fit in the time left: the policy gives up ("deadline") at once instead
    # of waiting in vain, and the upstream's 503 is the last word, passed on as sent.
    assert r.status_code == 503
    assert r.headers[UPSTREAM_HEADER] == "primary"
    assert r.headers["retry-after"] == "10"
    assert len(upstream.attempts("ra2")) == 1
    assert elapsed < 1.0  # well before total_timeout_s (3 s), let alone the 10 s asked
