"""The Prometheus alert rules: valid for promtool, their unit tests pass, their metrics exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "dashboards" / "alerts.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (scripts/test installs Debian's prometheus)")
    return path


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_an_alert_uses_is_one_mlwarden_exports() -> None:
    documented = set(re.findall(r"`(mlwarden_[a-z_]+)`", (ROOT / "README.md").read_text()))
    used = set(re.findall(r"\b(mlwarden_[a-z_]+?)(?:_bucket|_count|_sum)?\b", RULES.read_text()))
    assert used and used <= documented, sorted(used - documented)
