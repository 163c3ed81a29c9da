"""An open-loop load generator: POSTs on a fixed schedule, latency from the scheduled send.

wrk is closed-loop: a slow answer delays the next request and hides itself. This generator
sends request *i* at ``start + i / rate`` whatever happened to the others (keep-alive
connections, at most ``connections`` open; uvloop and httptools when installed) and measures
each latency from its scheduled send, so a stall is charged to every request it delayed. It
records its own send lag, the floor of what it resolves. Run it in its own process, pinned to
its own core::

    python3 -m benchmarks.open_loop URL --rate 500 --seconds 8 --bodies bodies.json --out out.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["run_open_loop"]

_UPSTREAM_HEADER = b"x-mlwarden-upstream"  # recorded per answer: who answered (failover)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection; one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import httptools

        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._parser_error = httptools.HttpParserError
        self._waiter: asyncio.Future[tuple[int, str]] | None = None
        self._upstream = b""
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._parser_error as exc:
            self._fail(ConnectionError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("connection closed by the server"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == _UPSTREAM_HEADER:
            self._upstream = value

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._upstream.decode()))

    def _fail(self, exc: Exception) -> None:
        self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def exchange(self, request: bytes) -> asyncio.Future[tuple[int, str]]:
        """Send one request; the future gets (status, value of ``x-mlwarden-upstream``)."""
        assert self.transport is not None and self._waiter is None
        self._upstream = b""
        self._waiter = self._loop.create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """Keep-alive connections to one server, last-in first-out, at most ``limit`` open."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host, self._port, self._limit = host, port, limit
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._open -= 1
            if self._open < self._limit:
                self._open += 1
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop), self._host, self._port
                    )
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                return conn
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _exchange(pool: _Pool, request: bytes, timeout_s: float) -> tuple[int, str, str]:
    """(status, upstream, error) of one request; status 0 when no answer came."""
    conn: _Connection | None = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.acquire()
            status, upstream = await conn.exchange(request)
        pool.release(conn, reuse=True)
        conn = None
        return status, upstream, ""
    except TimeoutError:
        return 0, "", "timeout"
    except OSError as exc:
        return 0, "", type(exc).__name__
    finally:
        if conn is not None:
            pool.release(conn, reuse=False)


async def run_open_loop(
    url: str,
    *,
    rate: float,
    seconds: float,
    start_at: float,
    bodies: list[bytes],
    connections: int = 128,
    warm: int = 4,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Send ``rate`` POSTs a second for ``seconds`` from ``start_at`` (monotonic clock).

    Columns per request, times in seconds from the first scheduled send: ``due``, ``lag``
    (actual send - due: the generator's own delay), ``done``, ``status`` (0: no answer),
    ``upstream`` (the ``x-mlwarden-upstream`` header) and ``error``. A latency is
    ``done - due``: a request the server kept waiting is charged from when it was due.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nUser-Agent: mlwarden-openloop\r\n"
    )
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    pool = _Pool(host, port, connections)
    # Warm connections first, so the first scheduled requests do not pay for connecting.
    warmed = await asyncio.gather(*(_exchange(pool, requests[0], timeout_s) for _ in range(warm)))
    n = max(1, int(rate * seconds))
    columns: dict[str, list[Any]] = {k: [0.0] * n for k in ("due", "lag", "done")}
    columns.update(status=[0] * n, upstream=[""] * n, error=["unfinished"] * n)
    now = time.monotonic()
    t0 = max(start_at, now)

    async def one(i: int, due: float) -> None:
        columns["lag"][i] = time.monotonic() - due
        status, upstream, error = await _exchange(pool, requests[i % len(requests)], timeout_s)
        columns["done"][i] = time.monotonic() - t0
        columns["status"][i], columns["upstream"][i], columns["error"][i] = status, upstream, error

    loop = asyncio.get_running_loop()
    tasks = []
    for i in range(n):
        due = t0 + i / rate
        columns["due"][i] = due - t0
        # Sleep while the send is far off (timers have ~1 ms resolution), then spin on the
        # loop (still serving I/O) for a send on time. Bounded: ``due`` is finite.
        while (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait - 0.002 if wait > 0.002 else 0)
        tasks.append(loop.create_task(one(i, due)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + 5)
        for task in pending:
            task.cancel()
    pool.close()
    return {
        "t0": t0,
        "late_start_s": max(0.0, now - start_at),
        "rate": rate,
        "warm_errors": sum(1 for w in warmed if w[0] != 200),
        **columns,
    }


def _main(argv: list[str] | None = None) -> int:
    gen = argparse.ArgumentParser(
        description="POSTs at a fixed rate; latencies counted from the schedule"
    )
    gen.add_argument("url")
    gen.add_argument("--rate", type=float, required=True, help="requests per second")
    gen.add_argument("--seconds", type=float, required=True)
    gen.add_argument(
        "--start-at",
        type=float,
        default=0.0,
        help="time.monotonic() of the first send (default: now)",
    )
    gen.add_argument("--connections", type=int, default=128, help="at most this many open")
    gen.add_argument(
        "--bodies",
        type=Path,
        required=True,
        help="a JSON list of request bodies (strings), sent in turn",
    )
    gen.add_argument("--out", type=Path, required=True, help="where to write the JSON columns")
    args = gen.parse_args(argv)
    # Read from a file rather than drawn here: the generator starts fast without numpy.
    bodies = [b.encode() for b in json.loads(args.bodies.read_text())]
    try:
        import uvloop
    except ImportError:
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    data = runner(
        run_open_loop(
            args.url,
            rate=args.rate,
            seconds=args.seconds,
            start_at=args.start_at,
            bodies=bodies,
            connections=args.connections,
        )
    )
    args.out.write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
