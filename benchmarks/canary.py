"""Canary verdicts judged by repeated runs: ``python3 -m benchmarks.canary [--runs N]``.

Each run starts real processes on loopback: a stable model server, a candidate, and the
``mlwarden sidecar`` command in front of them with a canary (the README's defaults, with only
``interval_s``, ``steps_percent`` and ``min_requests`` shortened, and ``5xx`` in
``retry_on``), then sends load at a fixed rate until the canary is promoted or rolled back
(or a time limit). Three candidates, ``--runs`` times each:

- ``identical``: the same app as the stable version (must be promoted every time);
- ``2x-slower``: its median latency doubled (must be rolled back);
- ``5%-errors``: answering 500 to 5% of requests (must be rolled back, with no failed client
  request: the retry on ``5xx`` covers it).

It prints a table of promoted / rolled back / undecided, the decision time in analysis
intervals (counted from the first interval with ``min_requests`` for both versions) and the
failed client requests. A benchmark, not a test: nothing fails a build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loopback import free_port, serve

INTERVAL_S = 1.0
RATE_PER_S = 250
MAX_S = 30.0
CANDIDATES = {
    "identical": {"delay_ms": 4.0, "error_share": 0.0},
    "2x-slower": {"delay_ms": 8.0, "error_share": 0.0},
    "5%-errors": {"delay_ms": 4.0, "error_share": 0.05},
}
STABLE = {"delay_ms": 4.0, "error_share": 0.0}


# -- the model server (run as its own process) -------------------------------------------------


def model_app(delay_ms: float, error_share: float):  # type: ignore[no-untyped-def]
    """A model server whose answer takes about ``delay_ms`` (log-normal spread)."""
    rng = random.Random()

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/-/health":
            body, status = b'{"status": "ok"}', 200
        else:
            await asyncio.sleep(delay_ms / 1000.0 * rng.lognormvariate(0.0, 0.25))
            failed = rng.random() < error_share
            status = 500 if failed else 200
            body = b'{"error": "boom"}' if failed else b'{"predictions": [0.5]}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _serve(port: int, delay_ms: float, error_share: float) -> None:
    serve(model_app(delay_ms, error_share), port)


# -- one run -----------------------------------------------------------------------------------


def _wait(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Outcome:
    candidate: str
    state: str
    intervals: float | None
    requests: int
    failed: int
    reason: str = ""
    analyses: list[str] = field(default_factory=list)


async def _load(port: int, admin_port: int, max_s: float) -> tuple[str, int, int, dict]:
    import aiohttp

    sent = failed = 0
    status: dict = {}
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/predict"

        async def one() -> None:
            nonlocal failed
            try:
                async with session.post(url, json={"x": 1.0}) as r:
                    await r.read()
                    if r.status != 200:
                        failed += 1
            except aiohttp.ClientError:
                failed += 1

        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        next_status = started
        while time.monotonic() - started < max_s:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            now = time.monotonic()
            if now >= next_status:
                next_status = now + 0.25
                async with session.get(f"http://127.0.0.1:{admin_port}/-/status") as r:
                    status = await r.json()
                if status["canary"]["state"] in ("promoted", "rolled_back", "done"):
                    break
            await asyncio.sleep(max(0.0, started + sent / RATE_PER_S - time.monotonic()))
        await asyncio.gather(*tasks)
    return status["canary"]["state"], sent, failed, status


def run_once(name: str, workdir: Path) -> Outcome:
    stable_port, cand_port, port, admin_port = (free_port() for _ in range(4))
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "upstreams": {
            "stable": f"http://127.0.0.1:{stable_port}",
            "candidate": f"http://127.0.0.1:{cand_port}",
        },
        "retry": {"retry_on": ["connect-failure", "reset", "gateway-error", "5xx"]},
        "canary": {
            "candidate": "candidate",
            "interval_s": INTERVAL_S,
            "steps_percent": [20, 50],
            "min_requests": 50,
        },
        "ledger": {"path": str(workdir / f"ledger-{name}.jsonl")},
    }
    path = workdir / "sidecar.json"
    path.write_text(json.dumps(config))
    procs = []
    try:
        for p, spec in ((stable_port, STABLE), (cand_port, CANDIDATES[name])):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.canary",
                        "serve",
                        str(p),
                        str(spec["delay_ms"]),
                        str(spec["error_share"]),
                    ],
                )
            )
        for p in (stable_port, cand_port):
            _wait(p)
        mlwarden = Path(sys.executable).with_name("mlwarden")
        procs.append(
            subprocess.Popen(
                [str(mlwarden), "sidecar", "--config", str(path)],
                stderr=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        )
        _wait(admin_port)
        _wait(port)
        state, sent, failed, status = asyncio.run(_load(port, admin_port, MAX_S))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    analyses = [a["verdict"] for a in status["canary"]["analyses"]]
    decided = [a for a in analyses if a != "inconclusive"]
    intervals = float(len(decided)) if state != "analysing" else None
    reason = ""
    if state == "rolled_back":
        reason = next(
            (a["reason"] for a in reversed(status["canary"]["analyses"]) if a["verdict"] == "fail"),
            "breaker",
        )
    return Outcome(name, state, intervals, sent, failed, reason, analyses)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        _serve(int(argv[1]), float(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mlwarden-canary-bench-") as tmp:
        for i in range(args.runs):
            for name in CANDIDATES:  # interleaved, so that machine noise hits all three
                outcome = run_once(name, Path(tmp))
                outcomes.append(outcome)
                print(
                    f"run {i + 1:2d} {name:10s} {outcome.state:11s} "
                    f"intervals={outcome.intervals} failed={outcome.failed}/{outcome.requests} "
                    f"{' '.join(v[0] for v in outcome.analyses)} {outcome.reason[:90]}",
                    flush=True,
                )
    print()
    print(f"{args.runs} runs per candidate, interval_s {INTERVAL_S:g}, {RATE_PER_S} requests/s,")
    print("steps 20% then 50%, min_requests 50, the README's defaults otherwise.")
    print()
    print("| candidate | promoted | rolled back | undecided | decision intervals (min-median-max) "
          "| failed client requests |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name in CANDIDATES:
        mine = [o for o in outcomes if o.candidate == name]
        counts = {s: sum(o.state == s for o in mine) for s in ("promoted", "rolled_back")}
        undecided = len(mine) - counts["promoted"] - counts["rolled_back"]
        times = sorted(o.intervals for o in mine if o.intervals is not None)
        spread = f"{times[0]:g}-{times[len(times) // 2]:g}-{times[-1]:g}" if times else "-"
        failed = sum(o.failed for o in mine)
        total = sum(o.requests for o in mine)
        print(
            f"| {name} | {counts['promoted']} | {counts['rolled_back']} | {undecided} "
            f"| {spread} | {failed} of {total} |"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
