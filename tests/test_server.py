"""The public port's HTTP/1.1 server (:mod:`mlwarden.sidecar.server`) in this process, on real
loopback sockets: framing, keep-alive, pipelining, flow control, the app's failures, the edge's
refusals not covered end to end by ``test_edge.py``, and the drain on ``should_exit``.

The server runs on an event loop in a background thread; the clients are raw sockets, so the
bytes on the wire are what is asserted. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mlwarden.sidecar.edge import EdgeCounts, EdgeLimits
from mlwarden.sidecar.server import BODY_HIGH_WATER, HttpServer
from tests.servers import LOOPBACK, free_port

WAIT_S = 5.0  # the bound on any single wait of a client here


def _limits(**overrides: Any) -> EdgeLimits:
    values: dict[str, Any] = {
        "max_header_bytes": 16384,
        "max_headers": 100,
        "request_head_timeout_s": 10.0,
        "keep_alive_idle_s": 10.0,
        "max_connections": 100,
    }
    values.update(overrides)
    return EdgeLimits(**values)


# -- the server, in a thread -----------------------------------------------------------------


@dataclass
class Running:
    """A started :class:`HttpServer` and the loop it runs on."""

    server: HttpServer
    port: int
    counts: EdgeCounts
    loop: asyncio.AbstractEventLoop
    serve_task: concurrent.futures.Future[None]

    def stop(self, timeout: float = 10.0) -> float:
        """Set ``should_exit`` (on the server's loop) and wait for ``serve()`` to return; the
        seconds it took."""
        started = time.monotonic()
        self.loop.call_soon_threadsafe(setattr, self.server, "should_exit", True)
        self.serve_task.result(timeout)
        return time.monotonic() - started

    def open_connections(self) -> int:
        state = self.server.state
        return -1 if state is None else len(state.connections)

    def wait_open_connections(self, n: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.open_connections() != n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_connections()} connections open, not {n}")
            time.sleep(0.01)


@contextlib.contextmanager
def serving(app: Any, *, drain_timeout_s: float = 5.0, **limits: Any) -> Iterator[Running]:
    """Serve ``app`` on a free loopback port until the block ends."""
    port = free_port()
    counts = EdgeCounts()
    server = HttpServer(
        app,
        host=LOOPBACK,
        port=port,
        limits=_limits(**limits),
        counts=counts,
        drain_timeout_s=drain_timeout_s,
        default_headers=[(b"server", b"mlwarden")],
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-http-server", daemon=True)
    thread.start()
    task = asyncio.run_coroutine_threadsafe(server.serve(), loop)
    running = Running(server, port, counts, loop, task)
    try:
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            if task.done():
                task.result()  # raises why it did not start
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.01)
        yield running
    finally:
        if not task.done():
            running.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


# -- a raw client ------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    raw: bytes = b""
    chunks: list[bytes] = field(default_factory=list)

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    def get(self, name: bytes) -> bytes | None:
        values = self.all(name)
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


class Client:
    """A socket and what it has received but not yet parsed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=WAIT_S)
        self.buffer = b""
        self.raw = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed by the server; unparsed: {self.buffer[:200]!r}")
        self.buffer += chunk
        self.raw += chunk

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self, *, head: bool = False) -> Response:
        """The next response, framed as its headers say (``head``: the request was HEAD)."""
        start = len(self.raw) - len(self.buffer)
        version, status, *_ = self._take_line().split(b" ", 2)
        assert version == b"HTTP/1.1", version
        headers = []
        while line := self._take_line():
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip()))
        resp = Response(int(status), headers)
        if head or resp.status in (204, 304) or resp.status < 200:
            pass
        elif resp.get(b"transfer-encoding") == b"chunked":
            while size := int(self._take_line(), 16):
                resp.chunks.append(self._take(size))
                assert self._take(2) == b"\r\n"
            assert self._take_line() == b""
            resp.body = b"".join(resp.chunks)
        elif (length := resp.get(b"content-length")) is not None:
            resp.body = self._take(int(length))
        else:  # close-delimited
            with contextlib.suppress(EOFError):
                while True:
                    self._fill()
            resp.body, self.buffer = self.buffer, b""
        resp.raw = self.raw[start : len(self.raw) - len(self.buffer)]
        return resp

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection (EOF or reset) within the bound, having sent
        nothing more."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def nothing_within(self, seconds: float) -> bool:
        """Whether nothing arrives (and the connection stays open) for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return not self.buffer
        finally:
            self.sock.settimeout(WAIT_S)
        return False


def _get(path: str = "/", *, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nhost: test\r\n{extra}\r\n".encode()


def _post(path: str, body: bytes, *, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


# -- the apps ----------------------------------------------------------------------------------


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The request's body back in one message (so the server adds its length); the path in
    ``x-path``."""
    body = await _read_body(receive)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"x-path", scope["raw_path"]),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


STREAMED = [b"first,", b"second,", b"third"]


async def streamed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A body in several messages, with no length: chunked in HTTP/1.1."""
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in STREAMED:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello world"})


# -- keep-alive, pipelining, framing -----------------------------------------------------------


def test_two_requests_on_one_connection_are_answered_with_length_date_and_server() -> None:
    with serving(echo) as srv, Client(srv.port) as c:
        for body in (b"one", b"second body"):
            c.send(_post("/e", body))
            resp = c.response()
            assert resp.status == 200
            assert resp.body == body
            assert resp.get(b"content-length") == str(len(body)).encode()
            assert len(resp.all(b"date")) == 1
            assert resp.all(b"server") == [b"mlwarden"]
            assert resp.get(b"connection") is None
            assert resp.get(b"transfer-encoding") is None
        assert srv.open_connections() == 1


def test_pipelined_requests_are_answered_in_order() -> None:
    async def slow_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/1":
            await asyncio.sleep(0.1)  # the others are parsed meanwhile and wait
        await echo(scope, receive, send)

    with serving(slow_first) as srv, Client(srv.port) as c:
        c.send(_post("/1", b"a") + _get("/2") + _post("/3", b"ccc"))
        answers = [c.response() for _ in range(3)]
        assert [r.get(b"x-path") for r in answers] == [b"/1", b"/2", b"/3"]
        assert [r.body for r in answers] == [b"a", b"", b"ccc"]
        c.send(_get("/4"))  # and the connection is still usable
        assert c.response().get(b"x-path") == b"/4"


def test_a_chunked_request_body_reaches_the_app_whole() -> None:
    head = b"POST /c HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
    with serving(echo) as srv, Client(srv.port) as c:
        c.send(head + b"5\r\nhello\r\n1\r\n \r\n")
        c.send(b"5\r\nworld\r\n0\r\n\r\n")
        resp = c.response()
        assert resp.status == 200
        assert resp.body == b"hello world"


def test_a_1_mib_body_is_echoed_whole_through_the_read_pauses() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, well above the 64 KiB where reading pauses
    assert len(body) > 8 * BODY_HIGH_WATER
    reads: list[int] = []

    async def slow_reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        parts = []
        while True:
            message = await receive()
            parts.append(message["body"])
            reads.append(len(message["body"]))
            # Slower than the client: the buffer fills and reading pauses (without the pause,
            # the whole rest of the body would be buffered by the next read).
            await asyncio.sleep(0.02)
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(parts)})

    with serving(slow_reader) as srv, Client(srv.port) as c:
        c.send(_post("/big", body))
        resp = c.response()
        assert resp.status == 200
        assert resp.get(b"content-length") == b"1048576"
        assert resp.body == body
    assert sum(reads) == len(body)
    # Never much more than the high water buffered: one read of the transport above it at most.
    assert max(reads) <= BODY_HIGH_WATER + 256 * 1024
    assert len(reads) >= 4


def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    head = "POST /x HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
    with serving(echo) as srv, Client(srv.port) as c:
        c.send(head.encode())
        interim = c.response()
        assert interim.status == 100
        assert interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello")
        resp = c.response()
        assert (resp.status, resp.body) == (200, b"hello")


def test_an_http_1_0_request_is_answered_with_connection_close_and_closed() -> None:
    with serving(hello) as srv, Client(srv.port) as c:
        c.send(_get("/", version="1.0"))
        resp = c.response()
        assert (resp.status, resp.body) == (200, b"hello world")
        assert resp.get(b"connection") == b"close"
        assert c.closed_by_server()


def test_a_streamed_response_is_chunked_in_http_1_1() -> None:
    with serving(streamed) as srv, Client(srv.port) as c:
        c.send(_get("/s"))
        resp = c.response()
        assert resp.get(b"transfer-encoding") == b"chunked"
        assert resp.get(b"content-length") is None
        assert resp.chunks == STREAMED
        assert resp.raw.endswith(b"\r\n0\r\n\r\n")
        c.send(_get("/s"))  # framed exactly: the next answer parses on the same connection
        assert c.response().body == b"".join(STREAMED)


def test_a_streamed_response_is_close_delimited_in_http_1_0() -> None:
    with serving(streamed) as srv, Client(srv.port) as c:
        c.send(_get("/s", version="1.0"))
        resp = c.response()
        assert resp.get(b"transfer-encoding") is None
        assert resp.get(b"content-length") is None
        assert resp.get(b"connection") == b"close"
        assert resp.body == b"".join(STREAMED)  # read until the server closed


def test_a_head_request_gets_the_headers_and_no_body() -> None:
    with serving(hello) as srv, Client(srv.port) as c:
        c.send(b"HEAD / HTTP/1.1\r\nhost: test\r\n\r\n")
        resp = c.response(head=True)
        assert resp.status == 200
        assert resp.get(b"content-length") == b"11"
        c.send(_get("/"))  # no body bytes came before this answer
        assert c.response().body == b"hello world"


def test_a_head_request_to_a_streamed_response_gets_no_body_bytes() -> None:
    with serving(streamed) as srv, Client(srv.port) as c:
        c.send(b"HEAD /s HTTP/1.1\r\nhost: test\r\n\r\n")
        resp = c.response(head=True)
        assert resp.status == 200
        c.send(_get("/s"))  # not even the terminating chunk came before this answer
        nxt = c.response()
        assert (nxt.status, nxt.body) == (200, b"".join(STREAMED))


def test_a_204_answer_sends_no_body_bytes_whatever_the_app_sends() -> None:
    async def no_content(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] != "/204":
            await hello(scope, receive, send)
            return
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"stray"})

    with serving(no_content) as srv, Client(srv.port) as c:
        c.send(_get("/204"))
        resp = c.response()
        assert resp.status == 204
        assert resp.get(b"content-length") is None
        assert resp.get(b"transfer-encoding") is None
        c.send(_get("/"))
        assert c.response().body == b"hello world"


# -- the edge's refusals -----------------------------------------------------------------------


def test_a_malformed_request_line_is_answered_400_counted_and_closed() -> None:
    with serving(echo) as srv, Client(srv.port) as c:
        c.send(b"THIS IS NOT HTTP\r\n\r\n")
        resp = c.response()
        assert resp.status == 400
        assert resp.get(b"connection") == b"close"
        assert c.closed_by_server()
    assert srv.counts.refused["malformed"] == 1


def test_connections_beyond_the_limit_get_503_and_a_freed_slot_is_reused() -> None:
    with serving(hello, max_connections=2) as srv:
        first, second = Client(srv.port), Client(srv.port)
        with first, second:
            for c in (first, second):  # both accepted and kept alive
                c.send(_get("/"))
                assert c.response().status == 200
            with Client(srv.port) as third:
                resp = third.response()
                assert resp.status == 503
                assert resp.get(b"connection") == b"close"
                assert third.closed_by_server()
            assert srv.counts.refused["connection_limit"] == 1
            first.sock.close()
            srv.wait_open_connections(1)
            with Client(srv.port) as fourth:
                fourth.send(_get("/"))
                assert fourth.response().status == 200
            second.send(_get("/"))
            assert second.response().status == 200
    assert srv.counts.refused["connection_limit"] == 1


def test_an_idle_kept_alive_connection_is_closed_by_the_server() -> None:
    with serving(hello, keep_alive_idle_s=0.5) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        resp = c.response()
        assert resp.status == 200
        assert resp.get(b"connection") is None  # kept alive...
        assert c.closed_by_server()  # ...until idle for keep_alive_idle_s (bound: WAIT_S)
        srv.wait_open_connections(0)


def test_a_partial_head_sent_during_a_slow_answer_is_still_timed_out() -> None:
    """The head timer may fire while a request is being answered (it is then ignored): the
    partial head after it must still be on a clock once the answer is done."""
    started = threading.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await asyncio.sleep(0.6)
        await hello(scope, receive, send)

    # keep_alive_idle_s above WAIT_S: only the head timer can close it within the bound.
    limits = {"request_head_timeout_s": 0.2, "keep_alive_idle_s": 30.0}
    with serving(slow, **limits) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        assert started.wait(WAIT_S)
        c.send(b"GET / HT")
        assert c.response().status == 200
        resp = c.response()
        assert resp.status == 408
        assert c.closed_by_server()
    assert srv.counts.refused["head_timeout"] == 1


def test_a_partial_head_in_the_packet_of_a_request_is_timed_as_a_head() -> None:
    """The bytes after a complete request in one packet are the start of a head: timed by the
    head timeout (408), not taken for an idle connection."""
    limits = {"request_head_timeout_s": 0.2, "keep_alive_idle_s": 30.0}
    with serving(hello, **limits) as srv, Client(srv.port) as c:
        c.send(_get("/") + b"GET / HT")
        assert c.response().status == 200
        resp = c.response()
        assert resp.status == 408
        assert c.closed_by_server()
    assert srv.counts.refused["head_timeout"] == 1


# -- the app's failures ------------------------------------------------------------------------


def test_an_app_raising_before_its_answer_gets_500_and_the_connection_closed() -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with serving(failing) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        resp = c.response()
        assert resp.status == 500
        assert resp.get(b"connection") == b"close"
        assert c.closed_by_server()


def test_an_app_raising_mid_answer_gets_the_connection_closed() -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")

    with serving(failing) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        with pytest.raises(EOFError):
            c.response()
        assert c.raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert c.raw.endswith(b"7\r\npartial\r\n")  # no terminating chunk: visibly incomplete


def test_an_app_returning_without_completing_its_answer_gets_the_connection_closed() -> None:
    async def unfinished(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    with serving(unfinished) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        with pytest.raises(EOFError):
            c.response()
        assert c.raw.endswith(b"7\r\npartial\r\n")


def test_an_app_returning_without_any_answer_gets_500_and_the_connection_closed() -> None:
    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    with serving(silent) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        resp = c.response()
        assert resp.status == 500
        assert resp.get(b"connection") == b"close"
        assert c.closed_by_server()


# -- upgrade, drain, disconnect, scope ---------------------------------------------------------


def test_an_upgrade_request_is_served_as_plain_http_and_the_connection_closed() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    extra = (
        "connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n"
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    with serving(app) as srv, Client(srv.port) as c:
        c.send(_get("/ws", extra=extra))
        resp = c.response()
        assert (resp.status, resp.body) == (200, b"hello world")
        assert resp.get(b"connection") == b"close"  # announced, as it is closed after
        assert c.closed_by_server()
    assert [s["type"] for s in scopes] == ["http"]
    assert (b"upgrade", b"websocket") in scopes[0]["headers"]


def test_the_drain_closes_idle_connections_and_lets_requests_in_flight_finish() -> None:
    started = threading.Event()
    finished = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            started.set()
            await asyncio.sleep(0.5)
            finished.set()
        await hello(scope, receive, send)

    with (
        serving(app, drain_timeout_s=10.0) as srv,
        Client(srv.port) as idle,
        Client(srv.port) as busy,
    ):
        idle.send(_get("/"))
        assert idle.response().status == 200
        busy.send(_get("/slow"))
        assert started.wait(WAIT_S)
        srv.loop.call_soon_threadsafe(setattr, srv.server, "should_exit", True)
        assert idle.closed_by_server()
        assert not finished.is_set()  # closed at once, not after the request in flight
        resp = busy.response()
        assert (resp.status, resp.body) == (200, b"hello world")
        assert resp.get(b"connection") == b"close"
        assert busy.closed_by_server()
        srv.serve_task.result(WAIT_S)


def test_the_drain_cancels_requests_still_in_flight_after_its_timeout() -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        await hello(scope, receive, send)

    with serving(app, drain_timeout_s=0.2) as srv, Client(srv.port) as c:
        c.send(_get("/"))
        assert started.wait(WAIT_S)
        took = srv.stop(timeout=WAIT_S)
        assert took < 3  # the drain's 0.2 s, not the app's 5 s
        assert cancelled.is_set()
        status = c.response().status
        assert status == 503  # retryable elsewhere: the sidecar is going away
        assert c.closed_by_server()


def test_a_client_gone_after_its_body_resolves_receive_to_disconnect() -> None:
    got: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
    waiting = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _read_body(receive)
        waiting.set()
        got.set_result(await receive())

    with serving(app) as srv:
        with Client(srv.port) as c:
            c.send(_post("/", b"body"))
            assert waiting.wait(WAIT_S)
        assert got.result(WAIT_S) == {"type": "http.disconnect"}
        srv.wait_open_connections(0)


def test_the_scope_of_a_request() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    request = (
        b"PUT /a%20b/c%2Fd/%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: example\r\n"
        b"X-Custom-Header: Some Value\r\ncontent-length: 0\r\n\r\n"
    )
    with serving(app) as srv, Client(srv.port) as c:
        c.send(request)
        assert c.response().status == 200
        c.send(_get("/plain", version="1.0"))
        assert c.response().status == 200
        client_port = c.sock.getsockname()[1]
    scope, scope_10 = scopes
    assert scope["type"] == "http"
    assert scope["scheme"] == "http"
    assert scope["method"] == "PUT"
    assert scope["path"] == "/a b/c/d/é"
    assert scope["raw_path"] == b"/a%20b/c%2Fd/%C3%A9"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == ""
    assert scope["headers"] == [
        (b"host", b"example"),
        (b"x-custom-header", b"Some Value"),
        (b"content-length", b"0"),
    ]
    assert tuple(scope["client"]) == (LOOPBACK, client_port)
    assert tuple(scope["server"]) == (LOOPBACK, srv.port)
    assert scope["http_version"] == "1.1"
    assert scope["asgi"]["version"] == "3.0"
    assert (scope_10["http_version"], scope_10["path"], scope_10["query_string"]) == (
        "1.0",
        "/plain",
        b"",
    )


def test_options_asterisk_and_an_absolute_target_reach_the_app() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    with serving(app) as srv, Client(srv.port) as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nhost: test\r\n\r\n")
        assert c.response().status == 200
        c.send(b"GET http://example/p?q=1 HTTP/1.1\r\nhost: example\r\n\r\n")
        assert c.response().status == 200
    assert [(s["path"], s["raw_path"], s["query_string"]) for s in scopes] == [
        ("*", b"*", b""),
        ("/p", b"/p", b"q=1"),
    ]


def test_an_http_1_0_client_gets_no_interim_100_continue() -> None:
    with serving(echo) as srv, Client(srv.port) as c:
        c.send(b"POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\nbody")
        answer = c.response()
        assert (answer.status, answer.body) == (200, b"body")
