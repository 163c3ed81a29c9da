"""The proxy hot path and the router: real upstream apps and the proxy itself on loopback.

Each upstream is a small raw ASGI app served by uvicorn; its ``mode`` makes it echo, answer
503 or hang (a bounded sleep). The proxy is ``serve_app(Sidecar(cfg))`` and the client is a
plain httpx client, so every byte crosses real sockets twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.routing.router import Router
from tests.servers import LOOPBACK, free_port, relay_body, serve_app

# --------------------------------------------------------------------------- router


def test_router_orders_primary_then_fallbacks() -> None:
    router = Router("p", ["a", "b"], is_available=lambda name: True)
    assert router.candidates() == ["p", "a", "b"]


def test_router_skips_unavailable_upstreams() -> None:
    down = {"p", "a"}
    router = Router("p", ["a", "b"], is_available=lambda name: name not in down)
    assert router.candidates() == ["b"]


def test_router_tries_everything_primary_first_when_nothing_is_available() -> None:
    router = Router("p", ["a", "b"], is_available=lambda name: False)
    assert router.candidates() == ["p", "a", "b"]


def test_router_force_moves_an_upstream_to_the_front_and_none_restores() -> None:
    router = Router("p", ["a", "b"], is_available=lambda name: True)
    router.force("b")
    assert router.candidates() == ["b", "p", "a"]
    router.force(None)
    assert router.candidates() == ["p", "a", "b"]


def test_router_rejects_unknown_forced_upstream_and_bad_orders() -> None:
    router = Router("p", ["a"], is_available=lambda name: True)
    with pytest.raises(ValueError, match="unknown upstream 'x'"):
        router.force("x")
    with pytest.raises(ValueError, match="also listed as a fallback"):
        Router("p", ["p"], is_available=lambda name: True)
    with pytest.raises(ValueError, match="more than once"):
        Router("p", ["a", "a"], is_available=lambda name: True)


# --------------------------------------------------------------------------- upstreams


class Upstream:
    """Echoes (``mode="ok"``), answers 503 or hangs; counts the requests it served."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.hits = 0
        self.seen_headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/-/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        self.hits += 1
        self.seen_headers = list(scope["headers"])
        if self.mode == "503":
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"overloaded " * 1000})
            return
        if self.mode == "hang":
            await asyncio.sleep(1.5)  # bounded: longer than every deadline below
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(3):
                await send(
                    {"type": "http.response.body", "body": b"part%d;" % i, "more_body": True}
                )
                await asyncio.sleep(0.1)
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"x-method", scope["method"].encode()),
            (b"x-path", scope["raw_path"]),
            (b"x-query", scope["query_string"]),
            (
                b"x-echo-headers",
                json.dumps(
                    [[n.decode(), v.decode("latin-1")] for n, v in scope["headers"]]
                ).encode(),
            ),
            # hop-by-hop headers the proxy must not pass back
            (b"connection", b"x-conn-named"),
            (b"x-conn-named", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"x-kept", b"1"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await relay_body(receive, send)


def make_config(primary: str, stable: str, **blocks: Any) -> SidecarConfig:
    data: dict[str, Any] = {
        "upstreams": {
            "primary": {"url": primary, "connect_timeout_s": 0.2},
            "stable": {"url": stable, "connect_timeout_s": 0.2},
        },
        "timeouts": {"per_try_timeout_s": 0.5, "total_timeout_s": 2.0},
        "retry": {"num_retries": 1, "base_interval_s": 0.01, "max_interval_s": 0.02},
        "breaker": {"consecutive_5xx": 2, "reset_timeout_s": 30},
    }
    for key, value in blocks.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return SidecarConfig.from_mapping(data, environ={})


def dead_url() -> str:
    """A loopback port with nothing listening: connections are refused at once."""
    return f"http://{LOOPBACK}:{free_port()}"


@contextlib.contextmanager
def proxied(cfg: SidecarConfig) -> Iterator[tuple[Sidecar, httpx.Client]]:
    app = Sidecar(cfg)
    # uvicorn's proxy_headers would take the client address from x-forwarded-for itself.
    with (
        serve_app(app.proxy, proxy_headers=False) as served,
        httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
    ):
        yield app, client


@contextlib.contextmanager
def two_upstreams(primary_mode: str = "ok") -> Iterator[tuple[Upstream, Upstream, str, str]]:
    primary, stable = Upstream(primary_mode), Upstream()
    with serve_app(primary) as p, serve_app(stable) as s:
        yield primary, stable, p.url, s.url


# --------------------------------------------------------------------------- faithful proxying


def test_proxy_forwards_method_path_query_headers_and_2mb_bodies_byte_exact() -> None:
    body = os.urandom(2 * 2**20)
    with (
        two_upstreams() as (_, stable, p_url, s_url),
        proxied(make_config(p_url, s_url)) as (_, client),
    ):
        response = client.put(
            "/v1/models/m:predict?a=1&a=2&b=%20x",
            content=body,
            headers=[
                ("x-rep", "one"),
                ("x-rep", "two"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ],
        )
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["x-mlwarden-upstream"] == "primary"
    assert response.headers["x-method"] == "PUT"
    assert response.headers["x-path"] == "/v1/models/m:predict"
    assert response.headers["x-query"] == "a=1&a=2&b=%20x"
    seen = json.loads(response.headers["x-echo-headers"])
    assert [v for n, v in seen if n == "x-rep"] == ["one", "two"]
    assert [v for n, v in seen if n == "traceparent"] == [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ]
    host = dict(seen)["host"]
    assert host == p_url.removeprefix("http://")
    assert dict(seen)["x-forwarded-for"] == "127.0.0.1"
    assert dict(seen)["x-forwarded-proto"] == "http"
    assert dict(seen)["x-forwarded-host"] == client.base_url.netloc.decode()
    assert stable.hits == 0


def test_proxy_appends_to_existing_forwarded_headers() -> None:
    with two_upstreams() as (_, _s, p_url, s_url), proxied(make_config(p_url, s_url)) as (_, c):
        response = c.get("/", headers={"x-forwarded-for": "10.0.0.1"})
    seen = dict(json.loads(response.headers["x-echo-headers"]))
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"


def test_proxy_strips_hop_by_hop_headers_both_ways() -> None:
    with two_upstreams() as (_, _s, p_url, s_url), proxied(make_config(p_url, s_url)) as (_, c):
        response = c.get(
            "/",
            headers={
                "connection": "keep-alive, x-named",
                "x-named": "secret",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "proxy-authorization": "Basic eA==",
                "upgrade": "h2c",
                "x-kept": "yes",
            },
        )
    names = {n for n, _ in json.loads(response.headers["x-echo-headers"])}
    assert not names & {
        "connection",
        "x-named",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    }
    assert "x-kept" in names
    assert "x-conn-named" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers["x-kept"] == "1"


def test_streaming_response_reaches_the_client_in_several_chunks() -> None:
    with two_upstreams() as (_, _s, p_url, s_url), proxied(make_config(p_url, s_url)) as (_, c):
        chunks = []
        with c.stream("GET", "/stream") as response:
            for chunk in response.iter_raw():
                chunks.append((time.monotonic(), chunk))
    assert b"".join(c for _, c in chunks) == b"part0;part1;part2;"
    assert len(chunks) >= 2
    assert chunks[-1][0] - chunks[0][0] >= 0.1  # arrived as sent, not buffered whole


def test_oversize_request_body_is_refused_with_413() -> None:
    limits = {"max_request_bytes": 1000}
    with (
        two_upstreams() as (primary, _s, p_url, s_url),
        proxied(make_config(p_url, s_url, limits=limits)) as (_, c),
    ):
        declared = c.post("/", content=b"x" * 2000)
        chunked = c.post("/", content=iter([b"x" * 600, b"x" * 600]))
        fits = c.post("/", content=b"x" * 1000)
    assert declared.status_code == 413
    assert declared.json()["error"] == "request body too large"
    assert chunked.status_code == 413
    assert fits.status_code == 200
    assert primary.hits == 1


def test_header_injection_from_the_wire_is_refused_and_the_proxy_keeps_serving() -> None:
    with (
        two_upstreams() as (primary, _s, p_url, s_url),
        proxied(make_config(p_url, s_url)) as (_, c),
    ):
        port = c.base_url.port
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\rx-evil: 1\r\n\r\n")
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 4")
        assert c.get("/").status_code == 200
    assert all(n != b"x-evil" for n, _ in primary.seen_headers)


def test_header_injection_inside_the_asgi_scope_gets_a_clean_400() -> None:
    """A server less strict than uvicorn could hand over CR/LF: the pool refuses, we say 400."""
    with two_upstreams() as (primary, _s, p_url, s_url):
        app = Sidecar(make_config(p_url, s_url), health_checks=False)
        sent: list[dict[str, Any]] = []

        async def run() -> None:
            messages = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.sleep(5)
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "GET",
                "path": "/",
                "raw_path": b"/",
                "query_string": b"",
                "scheme": "http",
                "client": ("127.0.0.1", 1),
                "headers": [(b"host", b"x"), (b"x-a", b"a\r\nx-evil: 1")],
            }
            try:
                await asyncio.wait_for(app.proxy(scope, receive, send), timeout=5)
            finally:
                await app.aclose()

        asyncio.run(run())
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"] == "request cannot be forwarded"
    assert primary.hits == 0
    assert app.breakers["primary"].fail_counter == 0


def test_websocket_is_refused() -> None:
    with two_upstreams() as (_, _s, p_url, s_url), proxied(make_config(p_url, s_url)) as (_, c):
        response = c.get(
            "/ws",
            headers={
                "connection": "upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
    assert response.status_code == 403


# --------------------------------------------------------------------------- healing


def test_primary_503_is_retried_then_falls_back_to_stable() -> None:
    with (
        two_upstreams("503") as (primary, stable, p_url, s_url),
        proxied(make_config(p_url, s_url)) as (_, c),
    ):
        response = c.post("/predict", json={"x": 1})
    assert response.status_code == 200
    assert response.headers["x-mlwarden-upstream"] == "stable"
    assert response.json() == {"x": 1}
    assert primary.hits == 2  # the first try and one retry (num_retries: 1)
    assert stable.hits == 1


def test_retriable_status_from_the_last_candidate_is_passed_on_as_sent() -> None:
    with two_upstreams("503") as (_, stable, p_url, s_url):
        stable.mode = "503"
        with proxied(make_config(p_url, s_url)) as (_, c):
            response = c.get("/")
    assert response.status_code == 503
    assert response.headers["x-mlwarden-upstream"] == "stable"
    assert response.content.startswith(b"overloaded")


def test_primary_down_every_request_served_by_stable_and_breaker_opens() -> None:
    stable = Upstream()
    with serve_app(stable) as s, proxied(make_config(dead_url(), s.url)) as (app, c):
        responses = [c.get(f"/r{i}") for i in range(5)]
        state = app.breakers["primary"].state
    assert [r.status_code for r in responses] == [200] * 5
    assert {r.headers["x-mlwarden-upstream"] for r in responses} == {"stable"}
    assert state == "open"
    assert stable.hits == 5


def test_primary_hanging_falls_back_within_the_per_try_deadline() -> None:
    timeouts = {"per_try_timeout_s": 0.3, "total_timeout_s": 1.0}
    with (
        two_upstreams("hang") as (_, _s, p_url, s_url),
        proxied(make_config(p_url, s_url, timeouts=timeouts)) as (_, c),
    ):
        started = time.monotonic()
        response = c.get("/")
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-mlwarden-upstream"] == "stable"
    assert 0.3 <= elapsed < 0.3 + 0.4
    assert elapsed < 1.0


def test_both_hanging_ends_at_the_total_deadline() -> None:
    timeouts = {"per_try_timeout_s": 0.3, "total_timeout_s": 0.5}
    with two_upstreams("hang") as (_, stable, p_url, s_url):
        stable.mode = "hang"
        with proxied(make_config(p_url, s_url, timeouts=timeouts)) as (_, c):
            started = time.monotonic()
            response = c.get("/")
            elapsed = time.monotonic() - started
    # Out of time, as Envoy and nginx say it: 504, with what was tried.
    assert response.status_code == 504
    payload = response.json()
    assert payload["error"] == "upstream request timeout"
    assert payload["tried"] == ["primary", "stable"]
    assert elapsed < 0.5 + 0.3


def test_a_timeout_then_a_refused_fallback_is_503_not_504() -> None:
    """The last attempt's failure decides: the fallback refused the connection, so the
    request did not run out of time and the answer is 503."""
    timeouts = {"per_try_timeout_s": 0.3, "total_timeout_s": 1.0}
    with (
        two_upstreams("hang") as (_, _s, p_url, _s_url),
        proxied(make_config(p_url, dead_url(), timeouts=timeouts)) as (_, c),
    ):
        response = c.get("/")
    assert response.status_code == 503
    payload = response.json()
    assert payload["error"] == "no upstream available"
    assert "connect_error" in payload["reason"]


def test_both_down_answers_503_json_quickly() -> None:
    with proxied(make_config(dead_url(), dead_url())) as (_, c):
        started = time.monotonic()
        response = c.post("/predict", json={"x": 1})
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    payload = response.json()
    assert payload["error"] == "no upstream available"
    assert payload["tried"] == ["primary", "stable"]
    assert "connect_error" in payload["reason"]
    assert "x-mlwarden-upstream" not in response.headers
    assert elapsed < 1.0


def test_both_down_with_degraded_response_answers_it() -> None:
    degraded = {"status": 200, "body": '{"prediction": null, "degraded": true}'}
    cfg = make_config(dead_url(), dead_url(), degraded_response=degraded)
    with proxied(cfg) as (_, c):
        response = c.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"prediction": None, "degraded": True}


def test_client_disconnect_mid_response_counts_no_upstream_failure() -> None:
    with two_upstreams() as (_, _s, p_url, s_url), proxied(make_config(p_url, s_url)) as (app, c):
        with c.stream("GET", "/stream") as response:
            first = next(response.iter_raw())
        # the client closed after the first chunk; the proxy still serves the next request
        assert first.startswith(b"part0")
        assert c.get("/").status_code == 200
        assert app.breakers["primary"].fail_counter == 0
        assert app.breakers["primary"].state == "closed"


def test_client_disconnect_mid_request_body_sends_nothing_upstream() -> None:
    with two_upstreams() as (primary, _s, p_url, s_url):
        app = Sidecar(make_config(p_url, s_url), health_checks=False)
        sent: list[dict[str, Any]] = []

        async def run() -> None:
            messages = [
                {"type": "http.disconnect"},
                {"type": "http.request", "body": b"x" * 100, "more_body": True},
            ]

            async def receive() -> dict[str, Any]:
                return messages.pop()

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/",
                "raw_path": b"/",
                "query_string": b"",
                "scheme": "http",
                "client": ("127.0.0.1", 1),
                "headers": [(b"host", b"x")],
            }
            try:
                await asyncio.wait_for(app.proxy(scope, receive, send), timeout=5)
            finally:
                await app.aclose()

        asyncio.run(run())
    assert sent == []
    assert primary.hits == 0


def test_open_breaker_sends_the_request_to_the_fallback_without_trying_the_primary() -> None:
    with (
        two_upstreams() as (primary, stable, p_url, s_url),
        proxied(make_config(p_url, s_url)) as (app, c),
    ):
        app.breakers["primary"].force_open()
        response = c.get("/")
    assert response.status_code == 200
    assert response.headers["x-mlwarden-upstream"] == "stable"
    assert primary.hits == 0
    assert stable.hits == 1


# --------------------------------------------------------------------------- trailers


def _trailers_exchange(extensions: dict[str, Any]) -> list[dict[str, Any]]:
    """One request through Sidecar, driven as an ASGI server would, in front of a real socket
    upstream answering chunked with an announced trailer (uvicorn has no trailers extension,
    so the server side is played here)."""
    from tests.test_upstream import raw_server

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
            b"trailer: grpc-status, x-checksum\r\n\r\n"
            b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-checksum: 5d41\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async def main() -> list[dict[str, Any]]:
        async with raw_server(upstream) as (url, _):
            proxy = Sidecar(make_config(url, dead_url()), health_checks=False)
            sent: list[dict[str, Any]] = []
            inbox = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> dict[str, Any]:
                if inbox:
                    return inbox.pop()
                await asyncio.sleep(3600)  # no disconnect: the watcher waits
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "GET",
                "path": "/",
                "raw_path": b"/",
                "query_string": b"",
                "headers": [(b"host", b"sidecar")],
                "client": ("127.0.0.1", 5000),
                "scheme": "http",
                "extensions": extensions,
            }
            await proxy.proxy(scope, receive, send)
            await proxy.aclose()
            return sent

    return asyncio.run(main())


def test_announced_trailers_are_relayed_when_the_server_supports_them() -> None:
    sent = _trailers_exchange({"http.response.trailers": {}})
    start, *bodies, trailers = sent
    assert start["trailers"] is True
    assert (b"trailer", b"grpc-status, x-checksum") in start["headers"]
    assert b"".join(m["body"] for m in bodies) == b"hello"
    assert trailers == {
        "type": "http.response.trailers",
        "more_trailers": False,
        "headers": [(b"grpc-status", b"0"), (b"x-checksum", b"5d41")],
    }


def test_trailers_are_dropped_without_the_servers_extension() -> None:
    sent = _trailers_exchange({})
    assert "trailers" not in sent[0]
    assert all(n != b"trailer" for n, _ in sent[0]["headers"])
    assert [m["type"] for m in sent[1:]][-1] == "http.response.body"
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"hello"


@contextlib.contextmanager
def head_then_close() -> Iterator[str]:
    """An upstream that answers every request's head (200, 100 bytes announced) and closes
    before any body byte: it dies between its head and its body. Bounded: a daemon thread
    serving until the block ends."""
    server = socket.create_server((LOOPBACK, 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        if not (chunk := conn.recv(65536)):
                            break
                        data += chunk
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_an_upstream_dying_between_head_and_body_is_replaced_not_truncated() -> None:
    """The head is held until the first body bytes: the dead attempt is a failed one, the
    fallback answers whole, and the client never sees a truncated 200."""
    with head_then_close() as dying, serve_app(Upstream()) as stable:
        app = Sidecar(make_config(dying, stable.url), health_checks=False)
        with (
            serve_app(app.proxy, proxy_headers=False) as served,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
        ):
            responses = [client.post("/predict", json={"i": i}) for i in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert {r.headers["x-mlwarden-upstream"] for r in responses} == {"stable"}
    assert [r.json() for r in responses] == [{"i": i} for i in range(5)]
