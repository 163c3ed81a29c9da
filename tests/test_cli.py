"""The ``mlwarden`` command line: baseline build and check."""

from __future__ import annotations

import json

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
