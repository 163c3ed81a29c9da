"""Bad options stop the server process at start-up with a message naming the problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.servers import free_port

pytestmark = pytest.mark.floor

APP = """
from starlette.applications import Starlette
from mlwarden.middleware import InferenceMonitor

app = Starlette()
app.add_middleware(InferenceMonitor, {options})
"""


def run_uvicorn(tmp_path: Path, options: str, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "badapp.py").write_text(textwrap.dedent(APP.format(options=options)))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "badapp:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            *extra,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_missing_baseline_file_stops_uvicorn_with_its_path(tmp_path):
    result = run_uvicorn(tmp_path, "model_name='m', baseline='nowhere/baseline.json'")
    assert result.returncode != 0
    assert "nowhere/baseline.json" in result.stderr
    assert "Application startup failed" in result.stderr


def test_unknown_option_is_named_with_a_suggestion(tmp_path):
    result = run_uvicorn(tmp_path, "model_name='m', modle_version='2'")
    assert result.returncode != 0
    assert "modle_version: unknown option (did you mean 'model_version'?)" in result.stderr


def test_bad_threshold_is_named_with_what_is_allowed(tmp_path):
    result = run_uvicorn(
        tmp_path, "model_name='m', health={'error_rate_degraded': 2}, drift_interval_s=0"
    )
    assert result.returncode != 0
    assert "health.error_rate_degraded: expected a number between 0.0 and 1.0" in result.stderr
    assert "drift_interval_s: expected a number > 0, got 0" in result.stderr


def test_malformed_baseline_names_the_key(tmp_path):
    (tmp_path / "b.json").write_text('{"version": 1, "features": [{"name": "x"}]}')
    result = run_uvicorn(tmp_path, "model_name='m', baseline='b.json'", "--lifespan", "on")
    assert result.returncode != 0
    assert "features[0]" in result.stderr


def test_influx_without_a_baseline_is_refused(tmp_path):
    result = run_uvicorn(
        tmp_path, "model_name='m', influx={'url': 'http://127.0.0.1:1', 'bucket': 'b'}"
    )
    assert result.returncode != 0
    assert "influx: needs a baseline" in result.stderr
