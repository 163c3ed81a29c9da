"""The sidecar proxy side by side with nginx and two naive Python proxies, in front of one upstream.

Run as the ``proxy`` part of ``python3 -m benchmarks.run``. Five variants, all started once and
stopped by PID at the end, each in front of the same upstream process (a raw ASGI app under
uvicorn answering a ~200-byte JSON prediction, :mod:`benchmarks.naive_proxies`):

- ``direct``: no proxy;
- ``sidecar``: ``mlwarden sidecar --config FILE`` as users start it, with a second upstream
  (``stable``) so that fallback is live, and everything else at its defaults: retries with the
  retry budget, breakers, health checks every 5 s;
- ``nginx``: ``proxy_pass`` to an ``upstream`` block with ``keepalive 32``, HTTP/1.1 upstream
  connections, one worker process;
- ``naive-aiohttp`` and ``naive-httpx``: Starlette with one shared client, under uvicorn.

Every server (proxies and upstreams) is pinned to core 0 with ``taskset``; every load generator
to core 1. Measured:

1. **Throughput**: ``wrk -t1 -cN`` with a Lua script of distinct POST bodies, in rounds that
   alternate between the variants (order rotating each round); medians, and per-round paired
   ratios. The proxy's CPU time per request (all its processes) comes from ``/proc``.
2. **Added latency** at a fixed rate: wrk is closed-loop (a slow answer delays the next
   request, hiding the delay), so an open-loop generator (``benchmarks/open_loop.py``, in
   its own process) sends at a fixed rate over keep-alive connections and measures every
   latency from the request's *scheduled* time, so that a stall is charged to every request
   it delayed. p50/p99 per variant and the difference to ``direct``.
3. **Failover**: a fresh sidecar in front of a fresh primary and the stable upstream, under the
   open-loop rate; the primary is killed (SIGKILL). Reported: the time from the kill to the
   first answer from ``stable`` (the ``x-mlwarden-upstream`` header), until every answer comes
   from it, and the client requests that failed.
4. **Memory**: the sidecar's RSS (``VmRSS``) every second during a sustained wrk run.

``python3 -m benchmarks.open_loop URL --rate R --seconds S --start-at T --out FILE`` is the
generator alone (``T`` on the ``time.monotonic`` clock, which all processes share on Linux).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.loopback import free_port

if TYPE_CHECKING:
    from benchmarks.over_http import WrkRun

__all__ = ["VARIANTS", "ProxyResult", "run_proxy"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("direct", "sidecar", "nginx", "naive-aiohttp", "naive-httpx")
_UPSTREAM_HEADER = b"x-mlwarden-upstream"
_READY_DEADLINE_S = 30.0


# --------------------------------------------------------------------------- results


@dataclass
class ProxyResult:
    connections: int
    duration_s: float
    rounds: int
    pinning: str
    rate_per_s: float
    latency_s: float
    latency_rounds: int
    throughput: dict[str, list[WrkRun]] = field(default_factory=dict)
    # CPU µs of the upstream process per request, per round (the proxy's is in WrkRun).
    upstream_cpu_us: dict[str, list[float]] = field(default_factory=dict)
    # Per round: count, errors, p50/p90/p99/p99.9/max ms, the generator's own send lag.
    latency: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    # All rounds' latencies pooled, same keys.
    latency_pooled: dict[str, dict[str, float]] = field(default_factory=dict)
    failover: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, name: str, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in self.throughput[name])


# --------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's worker), from ``/proc``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes (all threads), from ``/proc/PID/stat``."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _wait_idle(pids: list[int], *, timeout_s: float = 15.0, busy_share: float = 0.05) -> None:
    """Until the processes use under ``busy_share`` of a core over 0.25 s (a backlog drained).

    An overloaded proxy keeps working through queued requests after its load generator has
    gone; the next variant's round must not share core 0 with that.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = _cpu_seconds(pids)
        time.sleep(0.25)
        if _cpu_seconds(pids) - before < busy_share * 0.25:
            return


def rss_kib(pid: int) -> int:
    """``VmRSS`` of a process in KiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class _Process:
    """One server process, stopped by its PID (and its children's, for nginx)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        directory: Path,
        *,
        port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = directory / f"{name}.log"
        self._log = self.log_path.open("wb")
        # taskset execs the command, so the PID is the server's own.
        self.process = subprocess.Popen(
            argv,
            cwd=_REPO_ROOT,
            env=env or dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.children: list[int] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.pid, *self.children]

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, body: bytes, expect_upstream: str | None = None) -> None:
        """A real POST answered with a prediction, within a deadline."""
        deadline = time.monotonic() + _READY_DEADLINE_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                status, headers, answer = _post(f"{self.url}/predict", body)
            except OSError:
                status = 0
            if status == 200:
                if b'"predictions"' not in answer:
                    raise RuntimeError(f"{self.name}: unexpected answer {answer[:200]!r}")
                got = headers.get(_UPSTREAM_HEADER.decode())
                if expect_upstream is None or got == expect_upstream:
                    self.children = _children(self.pid)
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: not ready in {_READY_DEADLINE_S:g} s "
                    f"(last status {status}):\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        for child in self.children:  # nginx's worker, should its master have been killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self._log.close()


def _post(url: str, body: bytes, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return int(response.status), headers, bytes(response.read())


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _uvicorn(
    target: str, port: int, prefix: list[str], *, factory: bool = False, lifespan: str = "on"
) -> list[str]:
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return [
        *prefix,
        sys.executable,
        "-m",
        "uvicorn",
        target,
        *(["--factory"] if factory else []),
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
        lifespan,
    ]


def _start_upstream(name: str, prefix: list[str], directory: Path) -> _Process:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_UPSTREAM_NAME=name)
    return _Process(
        f"upstream-{name}",
        _uvicorn("benchmarks.naive_proxies:upstream_app", port, prefix, lifespan="off"),
        directory,
        port=port,
        env=env,
    )


def _start_naive(kind: str, upstream: _Process, prefix: list[str], directory: Path) -> _Process:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_UPSTREAM_URL=upstream.url)
    target = f"benchmarks.naive_proxies:{kind}_proxy"
    return _Process(
        f"naive-{kind}", _uvicorn(target, port, prefix, factory=True), directory, port=port, env=env
    )


def _mlwarden_command() -> list[str]:
    """The ``mlwarden`` entry point next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("mlwarden")
    if here.exists():
        return [str(here)]
    found = shutil.which("mlwarden")
    if found is None:
        raise RuntimeError("the mlwarden entry point is not installed (pip install -e .)")
    return [found]


def sidecar_config_text(primary: _Process, stable: _Process, port: int, admin: int) -> str:
    """The benchmarks' sidecar file: the two upstreams, the ports, every other key default."""
    return (
        "# Every resilience feature at its default: retries and retry budget, breakers,\n"
        "# health checks. The first upstream is the primary, the second its fallback.\n"
        "upstreams:\n"
        f"  primary: {primary.url}\n"
        f"  stable: {stable.url}\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
    )


def _start_sidecar(
    name: str, primary: _Process, stable: _Process, prefix: list[str], directory: Path
) -> tuple[_Process, int]:
    """The sidecar with its defaults, started as users start it; returns it and its admin port."""
    port, admin = free_port(), free_port()
    config = directory / f"{name}.yaml"
    config.write_text(sidecar_config_text(primary, stable, port, admin))
    # The file alone configures it: no MLWARDEN__ override leaks in from this environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWARDEN")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [*prefix, *_mlwarden_command(), "sidecar", "--config", str(config)]
    return _Process(name, argv, directory, port=port, env=env), admin


def _nginx_version() -> str:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def _start_nginx(upstream: _Process, prefix: list[str], directory: Path) -> _Process:
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx-light)")
    port = free_port()
    root = directory / "nginx"
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(f"""\
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream model {{
        server 127.0.0.1:{upstream.port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    argv = [
        *prefix,
        "nginx",
        "-p",
        str(root),
        "-c",
        str(conf),
        "-e",
        str(root / "error.log"),
        "-g",
        "daemon off;",
    ]
    return _Process("nginx", argv, directory, port=port)


@contextlib.contextmanager
def _stopping() -> Iterator[list[_Process]]:
    """A list to put started processes in; all are stopped by PID on exit, last first."""
    started: list[_Process] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


# --------------------------------------------------------------------------- throughput


def _wrk_once(
    target: _Process,
    upstream: _Process,
    script: Path,
    prefix: list[str],
    *,
    connections: int,
    duration_s: float,
) -> tuple[WrkRun, float]:
    """One wrk run; the proxy's and the upstream's CPU µs per request ride along."""
    from benchmarks.over_http import parse_wrk

    command = [
        *prefix,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"{target.url}/predict",
    ]
    proxy_pids = target.pids()
    cpu_before = _cpu_seconds(proxy_pids), _cpu_seconds([upstream.pid])
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    cpu_after = _cpu_seconds(proxy_pids), _cpu_seconds([upstream.pid])
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    run = parse_wrk(done.stdout)
    upstream_us = 0.0
    if run.requests:
        run.server_cpu_us = (cpu_after[0] - cpu_before[0]) / run.requests * 1e6
        upstream_us = (cpu_after[1] - cpu_before[1]) / run.requests * 1e6
    return run, upstream_us


def _open_loop(
    url: str,
    *,
    rate: float,
    seconds: float,
    prefix: list[str],
    directory: Path,
    start_in_s: float = 1.0,
    during: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """The generator in its own process (pinned by ``prefix``); ``during(t0)`` runs meanwhile.

    The request bodies are in ``directory/bodies.json`` (see :func:`_write_bodies`).
    """
    out = directory / "openloop.json"
    start_at = time.monotonic() + start_in_s
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "benchmarks.open_loop",
        url,
        "--rate",
        f"{rate:g}",
        "--seconds",
        f"{seconds:g}",
        "--start-at",
        repr(start_at),
        "--bodies",
        str(directory / "bodies.json"),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        argv,
        cwd=_REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        if during is not None:
            during(start_at)
        _, err = proc.communicate(timeout=start_in_s + seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if proc.returncode != 0:
        raise RuntimeError(
            f"open-loop generator failed ({proc.returncode}):\n"
            f"{err.decode(errors='replace')[-2000:]}"
        )
    return dict(json.loads(out.read_text()))


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list (``q`` in 0-100)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _latencies(data: dict[str, Any], warmup_s: float) -> tuple[list[float], list[float], int]:
    """Latencies (ms) of the 2xx answers after the warm-up, send lags (ms), failures."""
    latencies, lags, failed = [], [], 0
    for due, lag, done, status in zip(
        data["due"], data["lag"], data["done"], data["status"], strict=True
    ):
        if due < warmup_s:
            continue
        lags.append(lag * 1e3)
        if 200 <= status < 300:
            latencies.append((done - due) * 1e3)
        else:
            failed += 1
    return latencies, lags, failed


def _summary(latencies: list[float], lags: list[float], failed: int) -> dict[str, float]:
    ordered, lag_sorted = sorted(latencies), sorted(lags)
    return {
        "count": float(len(latencies) + failed),
        "failed": float(failed),
        "p50_ms": _percentile(ordered, 50),
        "p90_ms": _percentile(ordered, 90),
        "p99_ms": _percentile(ordered, 99),
        "p999_ms": _percentile(ordered, 99.9),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "lag_p50_ms": _percentile(lag_sorted, 50),
        "lag_p99_ms": _percentile(lag_sorted, 99),
    }


def _write_bodies(bodies: list[bytes], directory: Path) -> None:
    (directory / "bodies.json").write_text(json.dumps([b.decode() for b in bodies]))


# --------------------------------------------------------------------------- failover


def _failover_analysis(data: dict[str, Any], kill_at: float) -> dict[str, Any]:
    """When answers moved to ``stable`` after the kill, and what failed meanwhile."""
    kill = kill_at - data["t0"]
    rows = list(
        zip(data["due"], data["done"], data["status"], data["upstream"], data["error"], strict=True)
    )
    after = sorted((r for r in rows if r[1] >= kill and r[2]), key=lambda r: r[1])
    stable = [r[1] for r in after if r[3] == "stable"]
    primary = [r[1] for r in after if r[3] == "primary"]
    last_primary = max(primary) if primary else None
    settled = [t for t in stable if last_primary is None or t > last_primary]
    failures = [r for r in rows if not 200 <= r[2] < 300]
    near = sorted(
        (r[1] - r[0]) * 1e3 for r in rows if kill - 0.1 <= r[0] <= kill + 1.0 and 200 <= r[2] < 300
    )
    errors = collections.Counter(r[4] or f"status {r[2]}" for r in failures)
    return {
        "requests": len(rows),
        "failed": len(failures),
        "failed_share": len(failures) / len(rows) if rows else 0.0,
        "failures_by_kind": dict(errors),
        "kill_at_s": kill,
        "first_stable_ms": (stable[0] - kill) * 1e3 if stable else None,
        "last_primary_ms": (last_primary - kill) * 1e3 if last_primary is not None else None,
        "all_stable_ms": (settled[0] - kill) * 1e3 if settled else None,
        "answers_after_kill": {"primary": len(primary), "stable": len(stable)},
        "p50_ms_first_s_after_kill": _percentile(near, 50),
        "max_ms_first_s_after_kill": near[-1] if near else float("nan"),
    }


def _failover_once(
    stable: _Process,
    body: bytes,
    *,
    rate: float,
    before_s: float,
    after_s: float,
    server_prefix: list[str],
    load_prefix: list[str],
    directory: Path,
    index: int,
) -> dict[str, Any]:
    with _stopping() as started:
        primary = _start_upstream("primary", server_prefix, directory / f"failover-{index}")
        started.append(primary)
        sidecar, admin = _start_sidecar(
            f"sidecar-failover-{index}",
            primary,
            stable,
            server_prefix,
            directory / f"failover-{index}",
        )
        started.append(sidecar)
        primary.wait_ready(body)
        sidecar.wait_ready(body, expect_upstream="primary")
        killed: dict[str, float] = {}

        def kill_primary(t0: float) -> None:
            pause = t0 + before_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            before = time.monotonic()
            primary.kill()
            killed["at"] = before

        data = _open_loop(
            f"{sidecar.url}/predict",
            rate=rate,
            seconds=before_s + after_s,
            prefix=load_prefix,
            directory=directory,
            during=kill_primary,
        )
        result = _failover_analysis(data, killed["at"])
        status = _get_json(f"http://127.0.0.1:{admin}/-/status")
        result["breakers_after"] = {
            name: u.get("breaker", {}).get("state")
            for name, u in status.get("upstreams", {}).items()
        }
        return result


# --------------------------------------------------------------------------- memory


def _memory(
    sidecar: _Process, script: Path, prefix: list[str], *, connections: int, duration_s: float
) -> dict[str, Any]:
    """The sidecar's RSS every second during one sustained wrk run."""
    from benchmarks.over_http import parse_wrk

    command = [
        *prefix,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"{sidecar.url}/predict",
    ]
    samples: list[tuple[float, int]] = [(0.0, rss_kib(sidecar.pid))]
    begin = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = begin + duration_s + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            samples.append((time.monotonic() - begin, rss_kib(sidecar.pid)))
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err or out}")
    run = parse_wrk(out)
    values = [kib for _, kib in samples]
    return {
        "duration_s": duration_s,
        "requests": run.requests,
        "requests_per_s": run.requests_per_s,
        "errors": run.non_2xx + run.socket_errors,
        "start_kib": values[0],
        "end_kib": values[-1],
        "max_kib": max(values),
        "growth_kib": values[-1] - values[0],
        "samples": samples,
    }


# --------------------------------------------------------------------------- the part


def _sidecar_checks(admin_port: int) -> dict[str, Any]:
    """What the sidecar's admin port says after the load: breakers closed, both healthy."""
    status = _get_json(f"http://127.0.0.1:{admin_port}/-/status")
    health = (status.get("health") or {}).get("upstreams") or {}
    out: dict[str, Any] = {}
    for name, info in status.get("upstreams", {}).items():
        checks = health.get(name) or {}
        out[name] = {
            "available": info.get("available"),
            "breaker": (info.get("breaker") or {}).get("state"),
            "healthy": checks.get("healthy"),
            "health_checks": checks.get("checks"),
        }
    out["candidates"] = (status.get("routing") or {}).get("candidates")
    out["retry_budget"] = status.get("retry_budget")
    return out


def run_proxy(
    *,
    connections: int,
    duration_s: float,
    rounds: int,
    warmup_s: float,
    rate: float,
    latency_s: float,
    latency_rounds: int,
    latency_warmup_s: float,
    failover_repeats: int,
    failover_before_s: float,
    failover_after_s: float,
    memory_s: float,
    progress: Callable[[str], None] = print,
) -> ProxyResult:
    from benchmarks import workload
    from benchmarks.over_http import _lua_script, pinning

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    server_prefix, load_prefix = pinning()
    pin = (
        "servers (proxy and upstreams) on core 0, load generators on core 1 (taskset)"
        if server_prefix
        else "not pinned (taskset missing or one core)"
    )
    result = ProxyResult(connections, duration_s, rounds, pin, rate, latency_s, latency_rounds)
    bodies = workload.json_bodies(256, seed=2)
    with tempfile.TemporaryDirectory(prefix="mlwarden-proxy-bench-") as tmp:
        directory = Path(tmp)
        for sub in ("failover-0", *(f"failover-{i}" for i in range(1, failover_repeats))):
            (directory / sub).mkdir(exist_ok=True)
        script = _lua_script(bodies, directory)
        _write_bodies(bodies, directory)
        result.notes.append(f"nginx {_nginx_version()}")
        with _stopping() as started:
            primary = _start_upstream("primary", server_prefix, directory)
            stable = _start_upstream("stable", server_prefix, directory)
            started += [primary, stable]
            sidecar, admin = _start_sidecar("sidecar", primary, stable, server_prefix, directory)
            started.append(sidecar)
            started.append(_start_nginx(primary, server_prefix, directory))
            started.append(_start_naive("aiohttp", primary, server_prefix, directory))
            started.append(_start_naive("httpx", primary, server_prefix, directory))
            targets = dict(zip(VARIANTS, [primary, *started[2:]], strict=True))
            for proc in started:
                proc.wait_ready(bodies[0], "primary" if proc is sidecar else None)
            result.memory["idle_kib"] = rss_kib(sidecar.pid)
            progress("proxy: all servers ready; warming up")
            for target in targets.values():
                _wrk_once(
                    target,
                    primary,
                    script,
                    load_prefix,
                    connections=connections,
                    duration_s=warmup_s,
                )
            for r in range(rounds):
                order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                for name in order:
                    run, upstream_us = _wrk_once(
                        targets[name],
                        primary,
                        script,
                        load_prefix,
                        connections=connections,
                        duration_s=duration_s,
                    )
                    _wait_idle([*targets[name].pids(), primary.pid])
                    result.throughput.setdefault(name, []).append(run)
                    result.upstream_cpu_us.setdefault(name, []).append(upstream_us)
                progress(
                    f"proxy throughput round {r + 1}/{rounds}: "
                    + ", ".join(
                        f"{n} {result.throughput[n][-1].requests_per_s:.0f}/s" for n in VARIANTS
                    )
                )
            pooled: dict[str, tuple[list[float], list[float], int]] = {
                n: ([], [], 0) for n in VARIANTS
            }
            for r in range(latency_rounds):
                order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                for name in order:
                    data = _open_loop(
                        f"{targets[name].url}/predict",
                        rate=rate,
                        seconds=latency_warmup_s + latency_s,
                        prefix=load_prefix,
                        directory=directory,
                    )
                    _wait_idle([*targets[name].pids(), primary.pid])
                    lat, lags, failed = _latencies(data, latency_warmup_s)
                    summary = _summary(lat, lags, failed)
                    summary["late_start_s"] = data["late_start_s"]
                    result.latency.setdefault(name, []).append(summary)
                    p = pooled[name]
                    pooled[name] = (p[0] + lat, p[1] + lags, p[2] + failed)
                progress(
                    f"proxy latency round {r + 1}/{latency_rounds} at {rate:g}/s: "
                    + ", ".join(
                        f"{n} p50 {result.latency[n][-1]['p50_ms']:.2f} "
                        f"p99 {result.latency[n][-1]['p99_ms']:.2f} ms"
                        for n in VARIANTS
                    )
                )
            result.latency_pooled = {n: _summary(*p) for n, p in pooled.items()}
            result.checks["sidecar after load"] = _sidecar_checks(admin)
            progress(f"proxy: sidecar memory under {memory_s:g} s of sustained load")
            result.memory.update(
                _memory(sidecar, script, load_prefix, connections=connections, duration_s=memory_s)
            )
            for i in range(failover_repeats):
                outcome = _failover_once(
                    stable,
                    bodies[0],
                    rate=rate,
                    before_s=failover_before_s,
                    after_s=failover_after_s,
                    server_prefix=server_prefix,
                    load_prefix=load_prefix,
                    directory=directory,
                    index=i,
                )
                result.failover.append(outcome)
                progress(
                    f"proxy failover {i + 1}/{failover_repeats}: first stable answer "
                    f"{outcome['first_stable_ms']} ms after the kill, "
                    f"{outcome['failed']} failed of {outcome['requests']}"
                )
    return result


# --------------------------------------------------------------------------- the generator CLI
