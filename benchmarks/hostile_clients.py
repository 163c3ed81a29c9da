"""Hostile clients against a real ``mlwarden sidecar`` at its default limits and timeouts.

Starts one model app (uvicorn) and the sidecar (``python -m mlwarden.sidecar.cli``) on
loopback, then tries each case once on its own connection and reports what the client got
(the status line, or ``closed``), how long until the sidecar closed the connection, and the
sidecar's RSS before and after; a legitimate request is sent after each case and must get 200.
Every wait is bounded (``--limit-s``, default 45 s); both processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from benchmarks.loopback import free_port
from benchmarks.workload import json_bodies

LOOPBACK = "127.0.0.1"


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _wait_http(url: str, limit_s: float, expect: int = 200) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == expect:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer {expect} within {limit_s} s")


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def _answer(sock: socket.socket, limit_s: float, started: float) -> tuple[str, float]:
    """The status line the sidecar sent (or ``closed``) and when it closed, from ``started``."""
    sock.settimeout(max(0.1, limit_s - (time.monotonic() - started)))
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    status = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"
    return status, time.monotonic() - started


def _send_quietly(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def case_huge_header(port: int, limit_s: float) -> tuple[str, float]:
    with socket.create_connection((LOOPBACK, port)) as sock:
        started = time.monotonic()
        _send_quietly(sock, b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ")
        for _ in range(32):  # 32 MiB, a MiB at a time, until the sidecar closes
            if not _send_quietly(sock, b"a" * 2**20):
                break
        return _answer(sock, limit_s, started)


def case_many_headers(port: int, limit_s: float) -> tuple[str, float]:
    head = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
    with socket.create_connection((LOOPBACK, port)) as sock:
        started = time.monotonic()
        _send_quietly(sock, head + b"\r\n")
        return _answer(sock, limit_s, started)


def case_idle(port: int, limit_s: float) -> tuple[str, float]:
    with socket.create_connection((LOOPBACK, port)) as sock:
        return _answer(sock, limit_s, time.monotonic())


def case_slow_head(port: int, limit_s: float) -> tuple[str, float]:
    with socket.create_connection((LOOPBACK, port)) as sock:
        started = time.monotonic()
        sock.setblocking(False)
        for byte in b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-slow: " + b"1" * 200:
            if time.monotonic() - started > limit_s:
                break
            if not _send_quietly(sock, bytes([byte])):
                break
            with contextlib.suppress(BlockingIOError):
                if sock.recv(1, socket.MSG_PEEK) is not None:
                    break  # the sidecar answered or closed
            time.sleep(1.0)  # a byte a second
        sock.setblocking(True)
        return _answer(sock, limit_s, started)


def case_slow_body(port: int, limit_s: float) -> tuple[str, float]:
    with socket.create_connection((LOOPBACK, port)) as sock:
        started = time.monotonic()
        _send_quietly(sock, b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        sock.setblocking(False)
        while time.monotonic() - started < limit_s:
            if not _send_quietly(sock, b" "):
                break
            with contextlib.suppress(BlockingIOError):
                if sock.recv(1, socket.MSG_PEEK) is not None:
                    break
            time.sleep(1.0)
        sock.setblocking(True)
        return _answer(sock, limit_s, started)


CASES: dict[str, Callable[[int, float], tuple[str, float]]] = {
    "32 MiB header": case_huge_header,
    "10,000 headers": case_many_headers,
    "idle connection": case_idle,
    "head at 1 byte/s": case_slow_head,
    "body at 1 byte/s": case_slow_body,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit-s", type=float, default=45.0, help="bound of each case")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlwarden-hostile-"))
    model_port, port, admin_port = free_port(), free_port(), free_port()
    (work / "sidecar.yaml").write_text(
        f"listen: {{host: {LOOPBACK}, port: {port}}}\n"
        f"admin: {{host: {LOOPBACK}, port: {admin_port}}}\n"
        f"upstreams:\n  primary: http://{LOOPBACK}:{model_port}\n"
        f"  stable: http://{LOOPBACK}:{model_port}\n"
    )
    model = [sys.executable, "-m", "benchmarks.serve", "bare", str(model_port)]
    sidecar = [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar"]
    sidecar += ["--config", str(work / "sidecar.yaml")]
    rows = []
    with _process(model, work / "model.log"), _process(sidecar, work / "sidecar.log") as proc:
        _wait_http(f"http://{LOOPBACK}:{admin_port}/-/healthy", 30)
        for name, case in CASES.items():
            before = _rss_mib(proc.pid)
            status, closed_s = case(port, args.limit_s)
            legit = httpx.post(
                f"http://{LOOPBACK}:{port}/predict",
                content=json_bodies(1, seed=7)[0],
                headers={"content-type": "application/json"},
                timeout=10,
            )
            rows.append(
                {
                    "case": name,
                    "answer": status,
                    "closed_after_s": round(closed_s, 2),
                    "rss_mib_before": round(before, 1),
                    "rss_mib_after": round(_rss_mib(proc.pid), 1),
                    "legitimate_request": legit.status_code,
                }
            )
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
