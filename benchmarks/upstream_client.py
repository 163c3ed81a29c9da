"""Upstream clients side by side: ``python3 -m benchmarks.upstream_client``.

Requests per second of N concurrent tasks doing small POSTs against one local uvicorn upstream,
with (a) mlwarden's :class:`~mlwarden.sidecar.upstream.UpstreamPool`, (b) aiohttp's
``ClientSession`` with a keep-alive connector and (c) ``httpx.AsyncClient``. The upstream is a
tiny raw ASGI app in its own process pinned to core 0 (stopped by its PID); this process pins
itself to core 1. Clients run in alternating rounds (A B C, C B A, ...) and the table shows
medians and ratios, since absolute figures move by 20-40% between runs on these machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from tests.servers import free_port, wait_http

BODY = b'{"features": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "model": "v1"}'
HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"bench")]


async def upstream_app(scope, receive, send) -> None:
    """The upstream: read the request body, answer 2 bytes of JSON."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"2"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


def start_upstream(port: int) -> subprocess.Popen:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.upstream_client:upstream_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        loop,
        "--http",
        http,
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "off",
    ]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=15)
    except TimeoutError:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- one client each: open, do one request, close -------------------------------------------------

Client = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


async def mlwarden_client(url: str, limit: int) -> Client:
    from mlwarden.sidecar.upstream import UpstreamPool

    pool = UpstreamPool(url, max_connections=limit)

    async def one() -> None:
        response = await pool.request("POST", "/predict", HEADERS, BODY, timeout_s=10)
        async for _ in response.iter_body():
            pass
        await response.aclose()
        if response.status != 200:
            raise RuntimeError(response.status)

    return one, pool.aclose


async def aiohttp_client(url: str, limit: int) -> Client:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=10),
    )
    headers = {k.decode(): v.decode() for k, v in HEADERS}

    async def one() -> None:
        async with session.post(f"{url}/predict", data=BODY, headers=headers) as response:
            async for _ in response.content.iter_any():
                pass
            if response.status != 200:
                raise RuntimeError(response.status)

    return one, session.close


async def httpx_client(url: str, limit: int) -> Client:
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=10,
    )
    headers = [(k.decode(), v.decode()) for k, v in HEADERS]

    async def one() -> None:
        async with client.stream(
            "POST", f"{url}/predict", content=BODY, headers=headers
        ) as response:
            async for _ in response.aiter_raw():
                pass
            if response.status_code != 200:
                raise RuntimeError(response.status_code)

    return one, client.aclose


CLIENTS = {"mlwarden": mlwarden_client, "aiohttp": aiohttp_client, "httpx": httpx_client}


async def measure(name: str, url: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """Requests/s of ``concurrency`` tasks looping for ``seconds``, and client CPU µs a request.

    The CPU figure is the one that matters for a proxy: the upstream may be the bottleneck of
    the requests/s, but every client µs is taken from the proxy's own request handling.
    """
    one, close = await CLIENTS[name](url, concurrency)
    done = 0
    try:
        await asyncio.gather(*(one() for _ in range(concurrency)))  # open the connections

        async def worker(deadline: float) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one()
                done += 1

        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(worker(started + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await close()
    return done / elapsed, cpu / max(done, 1) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    )
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    else:
        run = asyncio.run

    port = free_port()
    upstream = start_upstream(port)
    url = f"http://127.0.0.1:{port}"
    results: dict[str, list[float]] = {name: [] for name in CLIENTS}
    cpu_us: dict[str, list[float]] = {name: [] for name in CLIENTS}
    try:
        order = list(CLIENTS)
        for round_no in range(args.rounds):
            for name in order if round_no % 2 == 0 else order[::-1]:
                rps, us = run(measure(name, url, args.concurrency, args.seconds))
                results[name].append(rps)
                cpu_us[name].append(us)
                print(
                    f"round {round_no + 1} {name:>9}: {rps:9.0f} requests/s, "
                    f"{us:7.1f} client CPU µs a request",
                    flush=True,
                )
    finally:
        stop(upstream)

    medians = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"\n{args.concurrency} concurrent small POSTs, {args.rounds} rounds of "
        f"{args.seconds:g} s, loop {args.loop}, upstream on core 0, clients on core 1\n"
    )
    print(
        "| client   | requests/s (median) | rounds                  | vs aiohttp | vs httpx "
        "| client CPU µs/request |"
    )
    print(
        "|----------|--------------------:|-------------------------|-----------:|---------:"
        "|----------------------:|"
    )
    for name, median in medians.items():
        rounds = ", ".join(f"{v:.0f}" for v in results[name])
        print(
            f"| {name:<8} | {median:19.0f} | {rounds:<23} | "
            f"{median / medians['aiohttp']:9.2f}x | {median / medians['httpx']:7.2f}x "
            f"| {statistics.median(cpu_us[name]):21.1f} |"
        )


if __name__ == "__main__":
    main()
