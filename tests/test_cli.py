"""The ``mlwarden`` command line: baseline build and check."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mlwarden.middleware.baseline import load_baseline
from mlwarden.sidecar.cli import main


def write_csv(path, rows: int = 500) -> None:
    rng = np.random.default_rng(1)
    lines = ["age,income,plan"]
    for _ in range(rows):
        lines.append(
            f"{rng.normal(40, 10):.3f},{rng.lognormal(10, 0.5):.2f},{rng.choice(['basic', 'pro'])}"
        )
    path.write_text("\n".join(lines) + "\n")


def test_baseline_build_from_csv_writes_a_loadable_profile(tmp_path, capsys):
    data, out = tmp_path / "train.csv", tmp_path / "baseline.json"
    write_csv(data)
    assert main(["baseline", "build", str(data), "--out", str(out)]) == 0
    profile = load_baseline(out)
    assert profile.names == ("age", "income", "plan")
    assert [f.kind for f in profile.features] == ["numeric", "numeric", "categorical"]
    assert profile.rows == 500
    assert "500 rows, 3 features" in capsys.readouterr().out


def test_baseline_build_from_npz_with_a_categorical_column(tmp_path):
    data, out = tmp_path / "train.npz", tmp_path / "b.json"
    rng = np.random.default_rng(2)
    np.savez(data, x=rng.normal(size=300), code=rng.integers(0, 3, 300))
    assert (
        main(
            [
                "baseline",
                "build",
                str(data),
                "--out",
                str(out),
                "--categorical",
                "code",
                "--bins",
                "5",
            ]
        )
        == 0
    )
    profile = load_baseline(out)
    assert profile.feature("code").kind == "categorical"
    assert len(profile.feature("x").proportions) <= 5


def test_baseline_build_from_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    data, out = tmp_path / "train.parquet", tmp_path / "b.json"
    pq.write_table(pa.table({"a": [float(i) for i in range(200)], "b": ["x", "y"] * 100}), data)
    assert main(["baseline", "build", str(data), "--out", str(out)]) == 0
    assert load_baseline(out).names == ("a", "b")


def write_labelled_csv(path, label: str = "churned", rows: int = 300) -> None:
    rng = np.random.default_rng(3)
    lines = [f"customer_id,age,plan,signup_ts,{label}"]
    for i in range(rows):
        plan = rng.choice(["basic", "pro"])
        lines.append(f"{i},{rng.normal(40, 10):.3f},{plan},2024-01-{i % 28 + 1:02d},{i % 2}")
    path.write_text("\n".join(lines) + "\n")


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mlwarden.sidecar.cli", "baseline", "build", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_baseline_build_skips_the_target_and_excluded_columns_and_says_so(tmp_path):
    data, out = tmp_path / "train.csv", tmp_path / "b.json"
    write_labelled_csv(data)
    result = run_build(
        str(data),
        "--out",
        str(out),
        "--target",
        "churned",
        "--exclude",
        "customer_id",
        "--exclude",
        "signup_ts",
    )
    assert result.returncode == 0, result.stderr
    assert load_baseline(out).names == ("age", "plan")
    assert result.stdout.strip() == (
        f"wrote {out}: 300 rows, 2 features (1 numeric, 1 categorical): age (numeric), "
        "plan (categorical); skipped: churned (target), customer_id (excluded), "
        "signup_ts (excluded)"
    )
    assert result.stderr == ""


def test_baseline_build_takes_comma_separated_exclusions(tmp_path):
    data, out = tmp_path / "train.csv", tmp_path / "b.json"
    write_labelled_csv(data)
    result = run_build(str(data), "--out", str(out), "--exclude", "customer_id, signup_ts,churned")
    assert result.returncode == 0, result.stderr
    assert load_baseline(out).names == ("age", "plan")
    assert "skipped: customer_id (excluded), signup_ts (excluded), churned (excluded)" in (
        result.stdout
    )


def test_baseline_build_without_exclusions_says_nothing_was_skipped(tmp_path, capsys):
    data, out = tmp_path / "train.csv", tmp_path / "b.json"
    write_csv(data)
    assert main(["baseline", "build", str(data), "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("; skipped: none")


def test_baseline_build_rejects_unknown_names_naming_the_option(tmp_path):
    data, out = tmp_path / "train.csv", tmp_path / "b.json"
    write_labelled_csv(data)
    result = run_build(str(data), "--out", str(out), "--exclude", "id,nope", "--target", "y")
    assert result.returncode == 2
    assert "exclude: names columns that do not exist: ['id', 'nope']" in result.stderr
    assert "target: names a column that does not exist: 'y'" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("label", ["label", "Target", "y", "class", "outcome"])
def test_baseline_build_warns_when_a_label_like_column_is_profiled(tmp_path, label):
    data, out = tmp_path / "train.csv", tmp_path / "b.json"
    write_labelled_csv(data, label=label)
    result = run_build(str(data), "--out", str(out), "--exclude", "customer_id,signup_ts")
    assert result.returncode == 0, result.stderr
    assert label in load_baseline(out).names  # a warning, not a failure
    assert f"warning: column {label!r} looks like a label" in result.stderr
    assert f"--target {label}" in result.stderr


def test_baseline_build_does_not_warn_once_the_target_is_named(tmp_path):
    # "class" is a feature here (a customer class); naming the target settles the question.
    data, out = tmp_path / "train.csv", tmp_path / "b.json"
    data.write_text("class,age,churned\n" + "".join(f"{i % 3},{i},{i % 2}\n" for i in range(60)))
    result = run_build(str(data), "--out", str(out), "--target", "churned")
    assert result.returncode == 0, result.stderr
    assert load_baseline(out).names == ("class", "age")
    assert result.stderr == ""


def test_baseline_check_names_the_bad_key(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "features": []}))
    assert main(["baseline", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "features" in err


def test_baseline_build_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert (
        main(["baseline", "build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "b.json")])
        == 2
    )
    assert "nope.csv" in capsys.readouterr().err


def test_version_names_the_installed_distribution(capsys):
    import tomllib
    from pathlib import Path

    expected = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlwarden {expected['project']['version']}"
