"""The serving frameworks' own venvs, and their servers, for the ``frameworks`` tests.

MLServer and KServe pin conflicting FastAPI versions, so each gets a venv of its own under
``.venv-frameworks/`` (or ``$MLWARDEN_FRAMEWORKS_VENVS``), with the requirements in
``<framework>.txt`` beside this file and the middleware installed editable (the venv always runs
the checkout's middleware). A venv is reused while its requirements file is unchanged, and
rebuilt from scratch otherwise; the venvs are built side by side (the installs wait mostly on
the network). Only the frameworks are pinned: their own dependencies resolve to the newest
releases they allow, as a user's install would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import LOOPBACK, Process, free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVE = HERE / "serve.py"
FRAMEWORKS = ("mlserver", "kserve")
INSTALL_TIMEOUT_S = 900
_STAMP = ".mlwarden-requirements"


def venvs_dir() -> Path:
    return Path(os.environ.get("MLWARDEN_FRAMEWORKS_VENVS", ROOT / ".venv-frameworks"))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@dataclass
class FrameworkVenv:
    name: str
    path: Path
    built_s: float | None  # None: reused as it was

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(),
            check=False,
        )


def _requirements(name: str) -> str:
    return (HERE / f"{name}.txt").read_text()


def _is_current(path: Path, name: str) -> bool:
    stamp = path / _STAMP
    return (
        (path / "bin" / "python").exists()
        and stamp.exists()
        and (stamp.read_text() == _requirements(name))
    )


def unavailable(message: str) -> None:
    """In CI a framework that cannot be installed fails its tests; elsewhere (no network, say)
    they are skipped with the reason."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def ensure_venvs(
    names: tuple[str, ...] = FRAMEWORKS,
) -> tuple[dict[str, FrameworkVenv], dict[str, str]]:
    """Each framework's venv, built (in parallel) where missing or stale; and why each one
    that could not be built was not."""
    base = venvs_dir()
    base.mkdir(parents=True, exist_ok=True)
    started: dict[str, tuple[subprocess.Popen, float, Path]] = {}
    ready: dict[str, FrameworkVenv] = {}
    for name in names:
        path = base / name
        if _is_current(path, name):
            ready[name] = FrameworkVenv(name, path, None)
            continue
        shutil.rmtree(path, ignore_errors=True)
        log = base / f"{name}.install.log"
        # One shell line per venv, so both builds run at once.
        script = (
            f'"{sys.executable}" -m venv "{path}" && '
            f'"{path}/bin/pip" install --quiet --disable-pip-version-check '
            f'-r "{HERE / f"{name}.txt"}" -e "{ROOT}"'
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", script], stdout=out, stderr=subprocess.STDOUT, env=_clean_env()
            )
        started[name] = (proc, time.monotonic(), log)
    problems: dict[str, str] = {}
    for name, (proc, t0, log) in started.items():
        try:
            code = proc.wait(timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            code = None
        if code != 0:
            tail = "\n".join(
                line
                for line in log.read_text(errors="replace").splitlines()
                if "is ignored" not in line
            )[-1500:]
            problems[name] = f"{name} venv: install exited {code}; {log}:\n{tail}"
            continue
        path = base / name
        (path / _STAMP).write_text(_requirements(name))
        ready[name] = FrameworkVenv(name, path, time.monotonic() - t0)
    return ready, problems


@dataclass
class FrameworkServer:
    """The framework's real app in its venv: bare on one port, wrapped in the middleware on
    another, from one process (the same loaded models answer both)."""

    framework: str
    bare: str
    wrapped: str
    metrics: str | None  # MLServer's separate metrics server
    models: Path
    expected: dict[str, list[int]]
    process: Process

    def log(self) -> str:
        """The server's whole output (KServe writes a deprecation warning per request)."""
        return self.process.log_path.read_text(errors="replace")


def train(venv: FrameworkVenv, directory: Path) -> dict[str, list[int]]:
    """The two models, their baselines and their own predictions on the probe, made in the
    framework's venv (its scikit-learn pickles what it will load)."""
    result = venv.run(str(SERVE), "train", str(directory))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((directory / "expected.json").read_text())


def start_server(venv: FrameworkVenv, workdir: Path) -> FrameworkServer:
    models = workdir / "models"
    expected = train(venv, models)
    bare, wrapped = free_port(), free_port()
    argv = [
        str(venv.python),
        str(SERVE),
        "serve",
        venv.name,
        str(models),
        "--bare-port",
        str(bare),
        "--wrapped-port",
        str(wrapped),
    ]
    metrics = None
    if venv.name == "mlserver":
        metrics = free_port()
        argv += ["--metrics-port", str(metrics)]
    process = Process(argv, name=venv.name, workdir=workdir)
    server = FrameworkServer(
        framework=venv.name,
        bare=f"http://{LOOPBACK}:{bare}",
        wrapped=f"http://{LOOPBACK}:{wrapped}",
        metrics=None if metrics is None else f"http://{LOOPBACK}:{metrics}",
        models=models,
        expected=expected,
        process=process,
    )
    try:
        ready = "/v2/health/ready"
        for url in (server.bare, server.wrapped):
            wait_http(url + ready, timeout=60)
        if server.metrics:
            wait_http(server.metrics + "/metrics", timeout=60)
    except TimeoutError as exc:
        process.stop()
        raise AssertionError(f"{venv.name} did not start: {exc}\n{process.log()}") from exc
    return server
