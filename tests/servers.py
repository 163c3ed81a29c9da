"""Real servers on loopback for the tests: uvicorn apps, victoria-metrics, prometheus.

Every process started here is stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

LOOPBACK = "127.0.0.1"


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=256)


def free_port() -> int:
    """A port nothing listens on now, and not one handed out lately: the OS may give the same
    free port twice in a row (seen: a sidecar's admin and proxy ports collided)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def wait_http(url: str, *, timeout: float = 15.0, expect: int = 200) -> None:
    """Poll ``url`` until it answers ``expect`` or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == expect:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == expect:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {expect} within {timeout}s (last: {last!r})")


@dataclass
class ServedApp:
    """An ASGI app served by uvicorn in a thread of this process (so tests can read its state)."""

    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread


@contextlib.contextmanager
def serve_app(app, *, lifespan: str = "on", **config) -> Iterator[ServedApp]:
    """Serve ``app`` with uvicorn on a free loopback port until the block ends."""
    port = free_port()
    cfg = uvicorn.Config(
        app,
        host=LOOPBACK,
        port=port,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        **config,
    )
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped during start-up")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("uvicorn did not start within 15s")
        time.sleep(0.01)
    try:
        yield ServedApp(f"http://{LOOPBACK}:{port}", port, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


class Process:
    """A server process we started; stopped by its PID."""

    def __init__(self, argv: list[str], *, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: run scripts/test (it installs Debian's {name})"
        )
    return path


@dataclass
class VictoriaMetrics:
    """victoria-metrics serving the InfluxDB v2 write API on loopback."""

    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def is_running(self) -> bool:
        return self.process.proc.poll() is None

    def flush(self) -> None:
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5).close()


def start_victoria_metrics(workdir: Path, port: int | None = None) -> VictoriaMetrics:
    binary = require_binary("victoria-metrics")
    port = port or free_port()
    data = workdir / "vm-data"
    data.mkdir(parents=True, exist_ok=True)
    proc = Process(
        [
            binary,
            f"-storageDataPath={data}",
            f"-httpListenAddr={LOOPBACK}:{port}",
            "-retentionPeriod=1d",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ],
        name=f"victoria-metrics-{port}",
        workdir=workdir,
    )
    try:
        wait_http(f"http://{LOOPBACK}:{port}/health", timeout=15)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"victoria-metrics did not start:\n{proc.log()}") from None
    return VictoriaMetrics(proc, port)


@dataclass
class Prometheus:
    process: Process
    port: int
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def start_prometheus(
    workdir: Path, scrape_targets: list[str], *, interval: str = "1s"
) -> Prometheus:
    """Start Debian's prometheus scraping ``scrape_targets`` (host:port) every ``interval``."""
    binary = require_binary("prometheus")
    port = free_port()
    targets = ", ".join(f"'{t}'" for t in scrape_targets)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        "  - job_name: mlwarden\n"
        "    static_configs:\n"
        f"      - targets: [{targets}]\n"
    )
    data = workdir / "prom-data"
    data.mkdir(parents=True, exist_ok=True)
    proc = Process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--web.enable-lifecycle",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        name=f"prometheus-{port}",
        workdir=workdir,
    )
    try:
        wait_http(f"http://{LOOPBACK}:{port}/-/ready", timeout=20)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"prometheus did not start:\n{proc.log()}") from None
    return Prometheus(proc, port, config)


def temp_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"mlwarden-{prefix}-"))


async def relay_body(receive, send) -> None:
    """Send back every request body chunk as it arrives (the echo apps' body loop)."""
    while True:
        message = await receive()
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if body or not more:
            await send({"type": "http.response.body", "body": body, "more_body": more})
        if not more:
            return
