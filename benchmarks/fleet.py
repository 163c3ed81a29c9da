"""Fleet mode measured: decisions per incident, and the time a new leader takes after a kill.

``python3 -m benchmarks.fleet [--repeats 5]`` starts one ``redis-server`` (Debian's) and two
upstreams on loopback: ``stable`` (always 200) and ``candidate`` (500 on 40% of requests).
Each repeat starts a fresh fleet of three ``mlwarden sidecar`` processes (the same canary and
``fleet:`` block, lease TTL 3 s), sends requests to all three in turn, and measures:

- the incident: the bad canary; *decisions* are the ``rollback`` records in the fleet's
  ledger stream (must be 1), *applied* the time until every replica reports it rolled back;
- the takeover: the leader SIGKILLed; the time until another replica leads (bounded by the
  TTL), and the client requests that failed meanwhile (to the survivors).

Every process is stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from benchmarks.loopback import free_port

__all__ = ["failing_app", "main"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
TTL_S = 3.0


async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bad candidate: a raw ASGI app answering 500 to 40% of requests."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    bad = scope["path"] != "/-/health" and random.random() < 0.4
    body = b'{"error": "boom"}' if bad else b'{"predictions": [1]}'
    await send(
        {
            "type": "http.response.start",
            "status": 500 if bad else 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Proc:
    def __init__(self, argv: list[str], log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=_REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _post(url: str) -> int:
    request = urllib.request.Request(url, data=b'{"x": 1}', method="POST")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return 0


def _wait(predicate: Any, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    return None


def _uvicorn(target: str, port: int, log: Path) -> _Proc:
    argv = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    return _Proc([*argv, "--log-level", "warning", "--lifespan", "off"], log)


def _repeat(directory: Path, redis_url: str, stable: str, candidate: str) -> dict[str, Any]:
    fleet = f"bench-{uuid.uuid4().hex[:8]}"
    replicas = []
    for i in range(3):
        port, admin = free_port(), free_port()
        config = directory / f"{fleet}-{i}.yaml"
        config.write_text(
            f"upstreams: {{stable: '{stable}', candidate: '{candidate}'}}\n"
            "routing: {primary: stable}\n"
            "health_checks: {interval_s: 60}\n"
            "canary: {candidate: candidate, interval_s: 1, min_requests: 20, steps_percent: [50]}\n"
            f"fleet: {{redis_url: '{redis_url}', name: {fleet}, replica: r{i}, "
            f"lease_ttl_s: {TTL_S}, poll_interval_s: 0.2}}\n"
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
        )
        mlwarden = [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config"]
        proc = _Proc([*mlwarden, str(config)], directory / f"{fleet}-{i}.log")
        replicas.append((proc, port, admin))
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 90
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 30_000:
            live = [r for r in replicas if r[0].proc.poll() is None]
            proc, port, _ = live[i % len(live)]
            status = _post(f"http://127.0.0.1:{port}/predict")
            if proc.proc.poll() is None:
                answers.append((time.monotonic(), status))
            i += 1
            time.sleep(0.004)

    def status(admin: int) -> dict[str, Any]:
        return _get(f"http://127.0.0.1:{admin}/-/status")

    def leaders() -> list[int]:
        live = [(i, a) for i, (p, _, a) in enumerate(replicas) if p.proc.poll() is None]
        return [i for i, a in live if status(a)["fleet"]["leader"]]

    loader = threading.Thread(target=traffic, daemon=True)
    try:
        for _, _, admin in replicas:
            _wait(lambda a=admin: status(a), 20)
        loader.start()
        _wait(lambda: len(leaders()) == 1, 3 * TTL_S)
        started = time.monotonic()
        applied = _wait(
            lambda: all(status(a)["canary"]["state"] == "rolled_back" for _, _, a in replicas), 40
        )
        events = _get(
            f"http://127.0.0.1:{replicas[0][2]}/-/events?scope=fleet&action=rollback&limit=100"
        )["events"]
        (leader,) = leaders()
        killed_at = time.monotonic()
        replicas[leader][0].stop(signal.SIGKILL)
        takeover = _wait(lambda: len(leaders()) == 1, 3 * TTL_S)
        time.sleep(1)
        after_kill = [s for t, s in answers if t >= killed_at]
        return {
            "decisions": len(events),
            "applied_s": applied,
            "rollback_after_s": None if applied is None else time.monotonic() - started,
            "takeover_s": takeover,
            "requests_after_kill": len(after_kill),
            "failed_after_kill": sum(1 for s in after_kill if s != 200),
            "failed_statuses": sorted({s for s in after_kill if s != 200}),
        }
    finally:
        stop.set()
        loader.join(timeout=10)
        for proc, _, _ in replicas:
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mlwarden-fleet-bench-") as tmp:
        directory = Path(tmp)
        redis_port, stable_port, candidate_port = free_port(), free_port(), free_port()
        redis = _Proc(
            [binary, "--save", "", "--appendonly", "no", "--port", str(redis_port),
             "--bind", "127.0.0.1", "--dir", str(directory)],
            directory / "redis.log",
        )  # fmt: skip
        stable = _uvicorn("benchmarks.naive_proxies:upstream_app", stable_port, directory / "s.log")
        candidate = _uvicorn("benchmarks.fleet:failing_app", candidate_port, directory / "c.log")
        try:
            time.sleep(1.5)
            results = [
                _repeat(
                    directory,
                    f"redis://127.0.0.1:{redis_port}/0",
                    f"http://127.0.0.1:{stable_port}",
                    f"http://127.0.0.1:{candidate_port}",
                )
                for _ in range(args.repeats)
            ]
        finally:
            for proc in (candidate, stable, redis):
                proc.stop()
    for i, r in enumerate(results, 1):
        print(f"repeat {i}: {json.dumps(r)}")
    takeovers = [r["takeover_s"] for r in results if r["takeover_s"] is not None]
    print(
        f"\n{len(results)} repeats, fleets of 3, lease TTL {TTL_S:g} s: decisions per incident "
        f"{[r['decisions'] for r in results]}; every replica rolled back "
        f"{statistics.median(r['applied_s'] or 0 for r in results):.1f} s (median) after "
        f"the first leader; takeover after SIGKILL: median {statistics.median(takeovers):.2f} s, "
        f"max {max(takeovers):.2f} s ({len(takeovers)}/{len(results)} within the wait); "
        f"failed requests after the kill: {sum(r['failed_after_kill'] for r in results)} of "
        f"{sum(r['requests_after_kill'] for r in results)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
