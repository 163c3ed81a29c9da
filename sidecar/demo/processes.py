"""The demo's processes: model servers, the sidecar and an optional Prometheus, by PID.

Each runs as a child process with its output in a log file of the demo's work directory, is
waited for through its own readiness URL (bounded), and is stopped by its PID: SIGTERM, then
SIGKILL after a grace period. ``kill()`` is the outage: SIGKILL, no goodbye.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = [
    "Child",
    "free_port",
    "prometheus_config",
    "start_prometheus",
    "wait_until_ready",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """One child process, its log file, and how to tell that it is ready."""

    def __init__(self, name: str, argv: list[str], *, log_dir: Path, ready_url: str) -> None:
        self.name = name
        self.argv = argv
        self.ready_url = ready_url
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, argv: list[str] | None = None) -> None:
        if argv is not None:
            self.argv = argv
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies mid-request, as in a crash or an OOM kill."""
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, grace_s: float = 5.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_until_ready(
    child: Child, client: httpx.AsyncClient, *, timeout_s: float = 30.0
) -> None:
    """Until ``child.ready_url`` answers 2xx; RuntimeError (with the log's tail) otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            code = child.process.returncode if child.process is not None else "?"
            raise RuntimeError(
                f"{child.name} exited with {code}; its log ({child.log_path}) "
                f"ends:\n{child.log_tail()}"
            )
        try:
            response = await client.get(child.ready_url, timeout=1.0)
            if response.is_success:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(
        f"{child.name} was not ready within {timeout_s:.0f} s; its log "
        f"({child.log_path}) ends:\n{child.log_tail()}"
    )


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def prometheus_config(targets: dict[str, str], scrape_interval_s: float = 2.0) -> str:
    """A scrape config for ``{job: "127.0.0.1:port"}`` (the sidecar's admin, the models)."""
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    return (
        f"global:\n  scrape_interval: {scrape_interval_s:g}s\n"
        f"  evaluation_interval: {scrape_interval_s:g}s\nscrape_configs:\n{jobs}"
    )


async def start_prometheus(
    targets: dict[str, str], workdir: Path, client: httpx.AsyncClient
) -> tuple[Child, str] | None:
    """A local Prometheus scraping ``targets`` (job -> host:port), ready; None without one."""
    binary = prometheus_binary()
    if binary is None:
        return None
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets))
    child = Child(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        ],
        log_dir=workdir,
        ready_url=f"http://127.0.0.1:{port}/-/ready",
    )
    child.start()
    try:
        await wait_until_ready(child, client, timeout_s=30)
    except BaseException:
        child.stop()  # the caller never sees it: stop it here, by its PID
        raise
    return child, f"http://127.0.0.1:{port}"
