"""Hostile clients against a real ``mlwarden sidecar`` process: each is refused or closed by
the default limits (made short here where they are times), the sidecar's memory stays
bounded, and a legitimate client is served meanwhile."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import serve_app
from tests.test_sidecar_cli import cli_sidecar_process, version_app

_TIMEOUTS = "timeouts: {request_head_timeout_s: 1, request_body_timeout_s: 1}\n"


@pytest.fixture(scope="module")
def sidecar() -> Iterator[tuple[int, int, int]]:
    """(pid, proxy port, admin port) of a sidecar in front of one model app."""
    with (
        serve_app(version_app("v1")) as upstream,
        cli_sidecar_process(
            "sidecar-edge",
            f"upstreams:\n  primary: {upstream.url}\n  stable: {upstream.url}\n" + _TIMEOUTS,
        ) as (proc, port, admin_port),
    ):
        yield proc.pid, port, admin_port


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the sidecar sends until it closes, and when it closed (bounded)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data, time.monotonic() - started


def _legit(port: int) -> None:
    r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"ok": 1}, timeout=5)
    assert r.status_code == 200, r.text


def test_a_32_mib_header_is_refused_with_431_and_memory_stays_bounded(sidecar) -> None:
    pid, port, _ = sidecar
    before = _rss_mib(pid)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sent = 0
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ")
        chunk = b"a" * 2**20
        try:
            for _ in range(32):
                sock.sendall(chunk)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the sidecar before the whole header was sent
        data, _ = _read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert sent < 32
    assert _rss_mib(pid) - before < 16
    _legit(port)


def test_ten_thousand_headers_are_refused_with_431(sidecar) -> None:
    _, port, _ = sidecar
    head = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + b"\r\n")
        data, _ = _read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert b"too many request headers" in data
    _legit(port)


def test_a_head_within_the_limits_is_served(sidecar) -> None:
    _, port, _ = sidecar
    headers = {f"x-h{i}": "v" * 100 for i in range(90)}  # ~10 KiB in 92 headers
    r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"ok": 1}, headers=headers, timeout=5)
    assert r.status_code == 200, r.text


def test_an_idle_connection_is_closed_after_the_head_timeout(sidecar) -> None:
    _, port, _ = sidecar
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data, elapsed = _read_until_closed(sock, 5)
    assert data == b""
    assert elapsed < 4  # closed by the sidecar, not by the 5 s bound here


def test_a_head_sent_a_byte_a_second_is_answered_408(sidecar) -> None:
    _, port, _ = sidecar
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        try:
            for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: 1234567890":
                sock.sendall(bytes([byte]))
                time.sleep(0.25)
                if time.monotonic() - started > 5:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = _read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert time.monotonic() - started < 6


def test_a_body_sent_slowly_is_answered_408_and_closed(sidecar) -> None:
    _, port, _ = sidecar
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{")
        _legit(port)  # served while the slow body is pending
        data, elapsed = _read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert elapsed < 4


def test_refusals_are_counted_on_the_admin_port(sidecar) -> None:
    _, port, admin_port = sidecar
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"x: y\r\n" * 200 + b"\r\n")
        _read_until_closed(sock, 5)
    metrics = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith('mlwarden_proxy_edge_refused_total{reason="header_count"}')
    )
    assert float(line.split()[-1]) >= 1
