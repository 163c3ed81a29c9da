"""In-process cost per request: every variant driven through a hand-built ASGI exchange.

No server and no sockets: the scope, ``receive`` and ``send`` are built by hand the way uvicorn
builds them (same keys, realistic client headers, a fresh body per request drawn from the
baseline's distributions). All variants live in one event loop; after each variant's lifespan
start-up they run in alternating rounds (the start of the order rotates each round), and the
median of the rounds is reported. The loop yields to the event loop every few requests so that
background tasks (mlwarden's drift worker) run as they would in a server. Rounds are short
and many: noise from other work on a shared machine comes in bursts, and short alternating
rounds spread every burst over all variants.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import workload

__all__ = ["Driver", "InProcessResult", "new_loop", "run_inprocess"]

_YIELD_EVERY = 8  # requests between yields to the event loop
_SERVER = ("127.0.0.1", 8000)
_STATIC_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"python-httpx/0.28.1"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"application/json"),
]


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (what the HTTP runs use), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Exchange:
    """One request's ``receive`` and ``send``: the body once, then a disconnect."""

    __slots__ = ("body", "chunks", "received", "status")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.received = False
        self.status = 0
        self.chunks: list[bytes] = []

    async def receive(self) -> dict[str, Any]:
        if not self.received:
            self.received = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))


class Driver:
    """Drives one variant's app: lifespan start-up, requests, lifespan shutdown."""

    def __init__(self, variant: workload.Variant, bodies: list[bytes]) -> None:
        self.variant = variant
        self.app = variant.app
        self.bodies = bodies
        self.sent = 0
        self.failures = 0
        self._lifespan: asyncio.Task[None] | None = None
        self._lifespan_queue: asyncio.Queue[dict[str, Any]] | None = None

    async def startup(self, timeout_s: float = 10.0) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def send(message: dict[str, Any]) -> None:
            if not started.done() and message["type"].startswith("lifespan.startup"):
                started.set_result(message["type"])

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        await queue.put({"type": "lifespan.startup"})
        self._lifespan_queue = queue
        self._lifespan = asyncio.create_task(self.app(scope, queue.get, send))
        outcome = await asyncio.wait_for(started, timeout_s)
        if outcome != "lifespan.startup.complete":
            raise RuntimeError(f"{self.variant.name}: lifespan start-up failed ({outcome})")

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._lifespan is None or self._lifespan_queue is None:
            return
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._lifespan, timeout_s)
        finally:
            self._lifespan = None

    def _scope(self, body: bytes, number: int) -> dict[str, Any]:
        headers = [
            *_STATIC_HEADERS,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", f"{number:016x}".encode()),
        ]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "server": _SERVER,
            "client": ("127.0.0.1", 40000 + number % 20000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "headers": headers,
            "state": {},
        }

    async def run(self, n: int, *, limit_s: float = 300.0) -> tuple[float, float]:
        """Send ``n`` requests; (wall, CPU) seconds spent, this loop's own small cost included.

        CPU time is the process's (every thread: a span processor's export thread counts), so
        time spent waiting for a core that other work on the machine holds does not.
        """
        app, bodies, size = self.app, self.bodies, len(self.bodies)
        first = self.sent
        failures = 0
        cpu_begin = time.process_time()
        begin = time.perf_counter()
        deadline = begin + limit_s
        for i in range(first, first + n):
            body = bodies[i % size]
            exchange = _Exchange(body)
            await app(self._scope(body, i), exchange.receive, exchange.send)
            if exchange.status != 200:
                failures += 1
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{self.variant.name}: {n} requests took over {limit_s} s")
        elapsed = time.perf_counter() - begin
        cpu = time.process_time() - cpu_begin
        self.sent += n
        self.failures += failures
        return elapsed, cpu

    async def check_one(self) -> bytes:
        """One request whose response is returned for validation."""
        body = self.bodies[0]
        exchange = _Exchange(body)
        await self.app(self._scope(body, 0), exchange.receive, exchange.send)
        if exchange.status != 200:
            raise RuntimeError(f"{self.variant.name}: status {exchange.status}")
        return b"".join(exchange.chunks)


@dataclass
class InProcessResult:
    requests_per_round: int
    rounds: int
    # CPU µs per request (the robust figure on a shared machine) and wall µs per request.
    us_per_request: dict[str, list[float]] = field(default_factory=dict)
    wall_us_per_request: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    checks: dict[str, dict[str, float]] = field(default_factory=dict)
    spans: dict[str, int | None] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.us_per_request[name])

    def wall_median(self, name: str) -> float:
        return statistics.median(self.wall_us_per_request[name])

    def paired(
        self, name: str, *, wall: bool = False, against: str = "bare"
    ) -> tuple[float, float, list[float]]:
        """(median difference µs, median ratio, per-round ratios) against ``against``.

        Each round runs every variant back to back, so a round's variants share the machine's
        state: per-round differences cancel most of the noise that independent medians keep.
        """
        figures = self.wall_us_per_request if wall else self.us_per_request
        pairs = list(zip(figures[name], figures[against], strict=True))
        ratios = [a / b for a, b in pairs]
        return statistics.median(a - b for a, b in pairs), statistics.median(ratios), ratios


async def _run_all(
    names: tuple[str, ...],
    bodies: list[bytes],
    per_round: int,
    rounds: int,
    warmup: int,
    progress: Callable[[str], None],
) -> InProcessResult:
    result = InProcessResult(per_round, rounds)
    drivers = {name: Driver(workload.build(name), bodies) for name in names}
    try:
        for driver in drivers.values():
            await driver.startup()
            body = await driver.check_one()
            if b'"predictions"' not in body:
                raise RuntimeError(f"{driver.variant.name}: unexpected response {body[:200]!r}")
            await driver.run(warmup)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                driver = drivers[name]
                # No forced collection between rounds: the garbage a variant makes, and the
                # collections it triggers, are part of its cost.
                wall, cpu = await driver.run(per_round)
                result.us_per_request.setdefault(name, []).append(cpu / per_round * 1e6)
                result.wall_us_per_request.setdefault(name, []).append(wall / per_round * 1e6)
                if driver.variant.provider is not None:
                    # Export what this round queued now, not during the next variant's round.
                    await asyncio.to_thread(driver.variant.provider.force_flush)
            if (r + 1) % max(1, rounds // 5) == 0 or r + 1 == rounds:
                progress(
                    f"in-process round {r + 1}/{rounds}: "
                    + ", ".join(
                        f"{n} {statistics.median(result.us_per_request[n]):.1f}" for n in names
                    )
                )
        for name, driver in drivers.items():
            result.failures[name] = driver.failures
            result.checks[name] = workload.mlwarden_counts(driver.variant)
            if result.checks[name]:
                result.checks[name]["requests"] = float(driver.sent + 1)
            result.spans[name] = driver.variant.spans_exported()
    finally:
        for driver in drivers.values():
            try:
                await driver.shutdown()
            finally:
                driver.variant.close()
    return result


def run_inprocess(
    *,
    per_round: int,
    rounds: int,
    warmup: int,
    names: tuple[str, ...] = workload.VARIANTS,
    progress: Callable[[str], None] = print,
) -> InProcessResult:
    bodies = workload.json_bodies(max(per_round, 4096), seed=1)
    return run_async(_run_all(names, bodies, per_round, rounds, warmup, progress))


def run_async(coro: Awaitable[Any]) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
