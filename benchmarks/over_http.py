"""Throughput and latency over HTTP: uvicorn serving each variant, ``wrk`` loading it.

Every variant gets its own uvicorn process (one worker, uvloop + httptools when installed),
all pinned to core 0; ``wrk`` (one thread, a fixed number of connections, a Lua script cycling
through distinct POST bodies) is pinned to core 1. The servers stay up for the whole run and
are loaded one at a time, in rounds whose order rotates; idle servers use no CPU. Each server
is warmed up first. Reported: requests/s, p50 and p99 latency (wrk ``--latency``), the median
over rounds. Servers are stopped by PID at the end, whatever happens.
"""

from __future__ import annotations

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

from benchmarks import workload
from benchmarks.loopback import free_port

__all__ = ["HttpResult", "WrkRun", "pinning", "run_http"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkRun:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    # The server's CPU time (all its threads) per completed request: unlike req/s, it does
    # not move when other work on the machine takes the server's core.
    server_cpu_us: float = 0.0


@dataclass
class HttpResult:
    connections: int
    duration_s: float
    rounds: int
    pinned: bool
    runs: dict[str, list[WrkRun]] = field(default_factory=dict)
    checks: dict[str, dict[str, float]] = field(default_factory=dict)

    def median(self, name: str, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in self.runs[name])


def pinning() -> tuple[list[str], list[str]]:
    """``taskset`` prefixes for the server (core 0) and the load generator (core 1)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    return [], []


def _lua_script(bodies: list[bytes], directory: Path) -> Path:
    """A wrk script that cycles through pre-formatted requests with distinct bodies."""
    lines = ["local bodies = {"]
    for body in bodies:
        text = body.decode()
        if "]]" in text:
            raise ValueError("a body cannot be embedded in a Lua long string")
        lines.append(f"  [[{text}]],")
    lines += [
        "}",
        "local requests = {}",
        "local i = 0",
        "function init(args)",
        '  local headers = {["Content-Type"] = "application/json",',
        '                   ["User-Agent"] = "wrk-bench", ["Accept"] = "*/*"}',
        "  for k, body in ipairs(bodies) do",
        '    requests[k] = wrk.format("POST", "/predict", headers, body)',
        "  end",
        "end",
        "function request()",
        "  i = i % #requests + 1",
        "  return requests[i]",
        "end",
    ]
    path = directory / "predict.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read a wrk duration from {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkRun:
    """The figures of one ``wrk --latency`` run, from its text output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkRun(
        requests_per_s=float(rps.group(1)),
        p50_ms=_to_ms(p50.group(1)),
        p99_ms=_to_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
    )


class _Server:
    """One uvicorn process serving one variant; stopped by its PID."""

    def __init__(self, name: str, prefix: list[str], directory: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = directory / f"server-{name}.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # taskset execs python, so the PID is the server's own.
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "benchmarks.serve", name, str(self.port)],
            cwd=_REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, body: bytes, deadline_s: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name}: server exited early:\n{self.log_tail()}")
            try:
                answer = self.post(body)
            except OSError:
                answer = None
            if answer is not None:
                if b'"predictions"' not in answer:
                    raise RuntimeError(f"{self.name}: unexpected answer {answer[:200]!r}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not ready in {deadline_s} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def post(self, body: bytes) -> bytes:
        request = urllib.request.Request(
            f"{self.url}/predict",
            data=body,
            method="POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return bytes(response.read())

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        self._log.close()


@contextlib.contextmanager
def _servers(
    names: tuple[str, ...], prefix: list[str], directory: Path
) -> Iterator[dict[str, _Server]]:
    started: dict[str, _Server] = {}
    try:
        for name in names:
            started[name] = _Server(name, prefix, directory)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (from ``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(
    server: _Server, script: Path, prefix: list[str], *, connections: int, duration_s: float
) -> WrkRun:
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
        f"{server.url}/predict",
    ]
    cpu_before = _cpu_seconds(server.process.pid)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    cpu = _cpu_seconds(server.process.pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    run = parse_wrk(done.stdout)
    if run.requests:
        run.server_cpu_us = cpu / run.requests * 1e6
    return run


def _mlwarden_counts(server: _Server) -> dict[str, float]:
    """What mlwarden recorded in the server: proof that features and predictions were read."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {
        "rows_scored": 0.0,
        "payload_errors": 0.0,
        "predictions_skipped": 0.0,
        "drift_evaluations": 0.0,
    }
    names = {
        "mlwarden_rows_scored_total": "rows_scored",
        "mlwarden_payload_errors_total": "payload_errors",
        "mlwarden_predictions_skipped_total": "predictions_skipped",
        "mlwarden_drift_evaluations_total": "drift_evaluations",
    }
    for family in text_string_to_metric_families(server.get("/metrics")):
        for sample in family.samples:
            if sample.name in names:
                out[names[sample.name]] += sample.value
    health = json.loads(server.get("/-/health"))
    out["health_ok"] = 1.0 if health.get("status") == "ok" else 0.0
    return out


def run_http(
    *,
    connections: int,
    duration_s: float,
    rounds: int,
    warmup_s: float,
    names: tuple[str, ...] = workload.VARIANTS,
    progress: Callable[[str], None] = print,
) -> HttpResult:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    server_prefix, load_prefix = pinning()
    result = HttpResult(connections, duration_s, rounds, pinned=bool(server_prefix))
    bodies = workload.json_bodies(256, seed=2)
    with tempfile.TemporaryDirectory(prefix="mlwarden-bench-") as tmp:
        directory = Path(tmp)
        script = _lua_script(bodies, directory)
        with _servers(names, server_prefix, directory) as servers:
            for server in servers.values():
                server.wait_ready(bodies[0])
            for server in servers.values():
                _wrk(server, script, load_prefix, connections=connections, duration_s=warmup_s)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    run = _wrk(
                        servers[name],
                        script,
                        load_prefix,
                        connections=connections,
                        duration_s=duration_s,
                    )
                    result.runs.setdefault(name, []).append(run)
                progress(
                    f"http round {r + 1}/{rounds}: "
                    + ", ".join(f"{n} {result.runs[n][-1].requests_per_s:.0f}/s" for n in names)
                )
            for name, server in servers.items():
                if name.startswith("mlwarden"):
                    result.checks[name] = _mlwarden_counts(server)
    return result
