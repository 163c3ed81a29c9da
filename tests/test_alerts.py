"""The Prometheus alert rules: valid for promtool, their unit tests pass, their metrics exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
    assert "SUCCESS: 11 rules found" in done.stdout


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


def _anchor(heading: str) -> str:
    """The fragment a Markdown renderer gives a heading (GitHub's rule, for our headings)."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_rule_has_a_summary_a_description_and_a_runbook_section() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    runbooks = ROOT / "docs" / "runbooks.md"
    anchors = {
        _anchor(line.removeprefix("## "))
        for line in runbooks.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    assert len(rules) == 11
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), rule
        path, _, fragment = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", rule["alert"]
        assert fragment == _anchor(rule["alert"]) and fragment in anchors, rule["alert"]
    # one section per rule, nothing else at that level
    assert anchors == {_anchor(r["alert"]) for r in rules}


def test_alerts_keep_the_deployment_labels_in_every_aggregation() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        for clause in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in clause.split(",")}
            assert {"job", "namespace"} <= labels, (rule["alert"], clause)
