"""The environment a run was measured in, recorded next to its figures.

Besides versions, two reference timings calibrate the machine: absolute figures on the shared
2-core machines move by 20-40% between runs, and these move with them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import timeit
from pathlib import Path

from benchmarks import workload

__all__ = ["collect", "load_average", "reference_timings"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = (
    "uvicorn",
    "fastapi",
    "starlette",
    "pydantic",
    "numpy",
    "prometheus-client",
    "prometheus-fastapi-instrumentator",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-asgi",
    "uvloop",
    "httptools",
)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def _git_head() -> str:
    # Read-only: the commit only (the tree may hold uncommitted work; see the source hash).
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _middleware_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((_REPO_ROOT / "middleware").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def reference_timings() -> dict[str, float]:
    """Two fixed workloads: a pure-Python loop and ``json.loads`` of one request body."""
    body = workload.json_bodies(1, seed=1)[0]
    loop_s = min(timeit.repeat("for _ in range(1_000_000): pass", number=1, repeat=5))
    loads_s = min(timeit.repeat(lambda: json.loads(body), number=5_000, repeat=5)) / 5_000
    return {"empty_loop_1M_ms": loop_s * 1e3, "json_loads_body_us": loads_s * 1e6}


def collect() -> dict[str, str]:
    env = {
        "CPU": f"{_cpu_model()} ({os.cpu_count()} logical cores)",
        "OS": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "not set"),
        "wrk": _wrk_version(),
        "git HEAD": _git_head(),
        "middleware sources (sha256)": _middleware_hash(),
    }
    env.update({package: _version(package) for package in _PACKAGES})
    return env
