"""The sidecar's upstream client against real servers on loopback.

uvicorn serves the well-behaved upstreams; a raw asyncio server on 127.0.0.1 plays the
misbehaving ones (hangs, resets, malformed heads, trailers) that uvicorn cannot be made to be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mlwarden.sidecar.config import UpstreamConfig
from mlwarden.sidecar.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from tests.servers import free_port, relay_body, serve_app


class Upstream:
    """A raw ASGI app that echoes, streams or answers bodiless statuses; records client ports."""

    def __init__(self) -> None:
        self.client_ports: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.client_ports.append(scope["client"][1])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _serve(self, scope, receive, send) -> None:
        path = scope["path"]
        if path.startswith("/status/"):
            await send({"type": "http.response.start", "status": int(path[8:]), "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(3):
                await send(
                    {"type": "http.response.body", "body": b"part%d;" % i, "more_body": True}
                )
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/slow":
            await asyncio.sleep(0.05)
        # Echo: the request's line and headers in response headers, its body streamed back.
        headers = [
            (b"x-method", scope["method"].encode()),
            (b"x-path", scope["raw_path"]),
            (b"x-query", scope["query_string"]),
            *[(b"x-echo-" + name, value) for name, value in scope["headers"]],
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await relay_body(receive, send)


def run(coro_fn: Callable[..., Awaitable[None]], *args) -> None:
    asyncio.run(coro_fn(*args))


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """A bare TCP server in this loop; yields its URL and a list that counts connections."""
    connections: list[int] = []
    tasks: set[asyncio.Task] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        tasks.add(asyncio.current_task())
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def echoed(response, name: bytes) -> list[bytes]:
    return [v for n, v in response.headers if n == b"x-echo-" + name]


@pytest.fixture(scope="module")
def upstream():
    app = Upstream()
    with serve_app(app, lifespan="off") as served:
        yield app, served.url


# --- faithful exchanges ------------------------------------------------------------------------


def test_echo_keeps_method_path_query_repeated_headers_and_multi_megabyte_bodies(upstream):
    _, url = upstream
    payload = os.urandom(5 * 1024 * 1024)

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            response = await pool.request(
                "PUT",
                "/a/b%20c?x=1&x=2",
                [(b"x-rep", b"one"), (b"x-rep", b"two")],
                payload,
                timeout_s=10,
            )
            chunks = [chunk async for chunk in response.iter_body()]
            await response.aclose()
        assert response.status == 200
        assert dict(response.headers)[b"x-method"] == b"PUT"
        assert dict(response.headers)[b"x-path"] == b"/a/b%20c"
        assert dict(response.headers)[b"x-query"] == b"x=1&x=2"
        assert echoed(response, b"x-rep") == [b"one", b"two"]
        assert echoed(response, b"content-length") == [str(len(payload)).encode()]
        assert b"".join(chunks) == payload
        assert len(chunks) > 1  # streamed back, not buffered into one piece

    run(main)


def test_request_body_from_an_async_iterator_is_sent_chunked(upstream):
    _, url = upstream
    pieces = [os.urandom(64 * 1024) for _ in range(40)]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            response = await pool.request("POST", "/", [], body(), timeout_s=10)
            received = await response.read()
        assert echoed(response, b"transfer-encoding") == [b"chunked"]
        assert echoed(response, b"content-length") == []
        assert received == b"".join(pieces)

    run(main)


def test_iterator_body_with_a_caller_content_length_is_sent_raw(upstream):
    _, url = upstream

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            response = await pool.request(
                "POST", "/", [(b"content-length", b"6")], body(), timeout_s=5
            )
            assert await response.read() == b"abcdef"
        assert echoed(response, b"content-length") == [b"6"]
        assert echoed(response, b"transfer-encoding") == []

    run(main)


def test_streaming_response_arrives_in_several_chunks_as_sent(upstream):
    _, url = upstream

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            response = await pool.request("GET", "/stream", [], timeout_s=5)
            arrivals = []
            async for chunk in response.iter_body():
                arrivals.append((time.monotonic(), chunk))
            await response.aclose()
        assert b"".join(c for _, c in arrivals) == b"part0;part1;part2;"
        assert len(arrivals) >= 2
        assert arrivals[-1][0] - arrivals[0][0] >= 0.05  # not held back until the end

    run(main)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/status/204", 204),
        ("GET", "/status/304", 304),
        ("HEAD", "/", 200),
    ],
)
def test_bodyless_responses_end_at_the_head_and_keep_the_connection(upstream, method, path, status):
    app, url = upstream

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            before = len(app.client_ports)
            response = await pool.request(method, path, [], timeout_s=5)
            assert response.status == status
            assert await response.read() == b""
            await response.aclose()
            again = await pool.request("GET", "/status/204", [], timeout_s=5)
            await again.aclose()
            assert pool.connections == 1
        ports = app.client_ports[before:]
        assert len(ports) == 2 and ports[0] == ports[1]

    run(main)


def test_trailers_of_a_chunked_response_are_kept():
    async def handler(reader, writer) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            response = await pool.request("GET", "/", [], timeout_s=5)
            assert await response.read() == b"hello"
        assert response.trailers == [(b"x-checksum", b"abc"), (b"x-more", b"1")]

    run(main)


# --- the pool ----------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_for_sequential_requests(upstream):
    app, url = upstream

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            before = len(app.client_ports)
            for _ in range(10):
                response = await pool.request("POST", "/", [], b"x", timeout_s=5)
                assert await response.read() == b"x"
                await response.aclose()
            assert pool.connections == 1
        assert len(set(app.client_ports[before:])) == 1

    run(main)


def test_fifty_concurrent_requests_share_at_most_max_connections(upstream):
    app, url = upstream

    async def one(pool: UpstreamPool, i: int) -> bytes:
        response = await pool.request("POST", "/slow", [], b"%d" % i, timeout_s=10)
        async with response:
            return await response.read()

    async def main() -> None:
        app.max_in_flight = 0
        async with UpstreamPool(url, max_connections=4, connect_timeout_s=10) as pool:
            before = len(app.client_ports)
            bodies = await asyncio.gather(*(one(pool, i) for i in range(50)))
            assert pool.connections <= 4
        assert bodies == [b"%d" % i for i in range(50)]
        assert len(set(app.client_ports[before:])) <= 4
        assert app.max_in_flight <= 4

    run(main)


def test_waiting_for_a_busy_pool_ends_at_the_connect_deadline(upstream):
    _, url = upstream

    async def main() -> None:
        async with UpstreamPool(url, max_connections=1, connect_timeout_s=0.2) as pool:
            held = await pool.request("GET", "/stream", [], timeout_s=5)  # body left unread
            started = time.monotonic()
            with pytest.raises(UpstreamPoolTimeout) as caught:
                await pool.request("GET", "/", [], timeout_s=5)
            assert 0.15 <= time.monotonic() - started < 1.0
            assert caught.value.request_sent is False
            await held.aclose()

    run(main)


def test_closing_a_response_before_its_body_ended_closes_the_connection(upstream):
    _, url = upstream

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            response = await pool.request("GET", "/stream", [], timeout_s=5)
            await response.aclose()
            assert pool.connections == 0
            again = await pool.request("POST", "/", [], b"fresh", timeout_s=5)
            assert await again.read() == b"fresh"

    run(main)


def test_idle_connections_older_than_idle_timeout_are_replaced(upstream):
    app, url = upstream
    now = [0.0]

    async def main() -> None:
        async with UpstreamPool(url, idle_timeout_s=30, clock=lambda: now[0]) as pool:
            before = len(app.client_ports)
            for advance in (0, 10, 31):
                now[0] += advance
                response = await pool.request("GET", "/status/204", [], timeout_s=5)
                await response.aclose()
        ports = app.client_ports[before:]
        assert ports[0] == ports[1] != ports[2]

    run(main)


def test_a_connection_the_upstream_closed_while_idle_is_not_reused():
    async def handler(reader, writer) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()  # then close, as a server does at its keep-alive timeout

    async def main() -> None:
        async with raw_server(handler) as (url, connections), UpstreamPool(url) as pool:
            for _ in range(3):
                response = await pool.request("GET", "/", [], timeout_s=5)
                assert await response.read() == b"ok"
                await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
            assert len(connections) == 3

    run(main)


# --- failures ----------------------------------------------------------------------------------


def test_connect_refused_is_a_connect_error_with_nothing_sent():
    async def main() -> None:
        async with UpstreamPool(f"http://127.0.0.1:{free_port()}") as pool:
            started = time.monotonic()
            with pytest.raises(UpstreamConnectError) as caught:
                await pool.request("POST", "/", [], b"x", timeout_s=5)
            assert time.monotonic() - started < 0.5
            assert caught.value.request_sent is False
            assert pool.connections == 0

    run(main)


def test_a_hanging_upstream_times_out_within_the_deadline():
    async def handler(reader, writer) -> None:
        await reader.read()  # never answers

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout) as caught:
                await pool.request("POST", "/", [], b"x", timeout_s=0.3)
            assert 0.3 <= time.monotonic() - started < 0.8
            assert caught.value.request_sent is True
            assert caught.value.response_started is False
            assert pool.connections == 0

    run(main)


def test_a_body_that_stops_arriving_times_out_within_the_deadline():
    async def handler(reader, writer) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            started = time.monotonic()
            response = await pool.request("GET", "/", [], timeout_s=0.3)
            with pytest.raises(UpstreamTimeout) as caught:
                await response.read()
            assert 0.3 <= time.monotonic() - started < 0.8
            assert caught.value.response_started is True

    run(main)


def test_upstream_closing_mid_body_is_a_reset():
    async def handler(reader, writer) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            response = await pool.request("GET", "/", [], timeout_s=5)
            received = []
            with pytest.raises(UpstreamReset) as caught:
                async for chunk in response.iter_body():
                    received.append(chunk)
            await response.aclose()
            assert b"".join(received) == b"x" * 10
            assert caught.value.request_sent is True
            assert caught.value.response_started is True
            assert pool.connections == 0

    run(main)


def test_upstream_closing_before_any_response_is_a_reset():
    async def handler(reader, writer) -> None:
        await read_head(reader)

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            with pytest.raises(UpstreamReset) as caught:
                await pool.request("GET", "/", [], timeout_s=5)
            assert caught.value.request_sent is True
            assert caught.value.response_started is False

    run(main)


def test_a_body_delimited_by_close_ends_cleanly_at_close():
    async def handler(reader, writer) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            response = await pool.request("GET", "/", [], timeout_s=5)
            assert await response.read() == b"until the end"

    run(main)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["malformed-status", "head-above-64KiB"],
)
def test_malformed_or_oversized_heads_are_protocol_errors(reply):
    async def handler(reader, writer) -> None:
        await read_head(reader)
        writer.write(reply)
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            with pytest.raises(UpstreamProtocolError):
                await pool.request("GET", "/", [], timeout_s=5)
            assert pool.connections == 0

    run(main)


def test_cr_or_lf_in_a_header_is_refused_before_connecting():
    async def main() -> None:
        async with UpstreamPool("http://127.0.0.1:9") as pool:
            with pytest.raises(ValueError, match="CR or LF"):
                await pool.request("GET", "/", [(b"x-a", b"1\r\nx-injected: 1")], timeout_s=1)
            assert pool.connections == 0

    run(main)


@pytest.mark.parametrize("base_url", ["ftp://example.com", "http://", "http://h:0x"])
def test_invalid_base_urls_are_rejected(base_url):
    with pytest.raises(ValueError, match="base_url"):
        UpstreamPool(base_url)


def test_from_config_takes_the_upstream_blocks_values_unless_sized_for_another_use():
    block = UpstreamConfig(name="v1", url="http://127.0.0.1:1/m", max_connections=7)
    pool = UpstreamPool.from_config(block)
    assert (pool.base_url, pool.max_connections) == ("http://127.0.0.1:1/m", 7)
    assert pool.connect_timeout_s == block.connect_timeout_s
    assert UpstreamPool.from_config(block, max_connections=2).max_connections == 2


def test_a_cancelled_request_closes_its_connection():
    async def handler(reader, writer) -> None:
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as (url, _), UpstreamPool(url) as pool:
            task = asyncio.create_task(pool.request("GET", "/", [], timeout_s=5))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.connections == 0

    run(main)


def test_an_error_from_the_request_body_iterator_propagates_and_closes_the_connection(upstream):
    _, url = upstream

    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("client went away")

    async def main() -> None:
        async with UpstreamPool(url) as pool:
            with pytest.raises(OSError, match="client went away"):
                await pool.request("POST", "/", [], body(), timeout_s=5)
            assert pool.connections == 0

    run(main)


def test_closing_the_pool_breaks_responses_still_being_read(upstream):
    _, url = upstream

    async def main() -> None:
        pool = UpstreamPool(url)
        response = await pool.request("GET", "/stream", [], timeout_s=5)
        await pool.aclose()
        with pytest.raises(UpstreamReset):
            await response.read()
        assert pool.connections == 0
        with pytest.raises(RuntimeError, match="closed"):
            await pool.request("GET", "/", [], timeout_s=5)

    run(main)
