"""The baseline profile: building, the table readers, saving and strict loading."""

from __future__ import annotations

import builtins
import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlwarden.middleware.baseline import (
    BaselineProfile,
    CategoricalProfile,
    NumericProfile,
    build_baseline,
    build_baseline_file,
    category_key,
    load_baseline,
    read_table,
)
from mlwarden.middleware.errors import BaselineError

pytestmark = pytest.mark.floor

# --------------------------------------------------------------------------- building


def test_numeric_profile_matches_numpy_over_finite_values() -> None:
    values = np.array([1.0, 2.0, np.nan, 4.0, np.inf, -np.inf, 7.0, np.nan])
    profile = build_baseline({"x": values}).feature("x")
    finite = np.array([1.0, 2.0, 4.0, 7.0])
    assert isinstance(profile, NumericProfile)
    assert profile.count == 4
    assert profile.mean == pytest.approx(finite.mean())
    assert profile.std == pytest.approx(finite.std())
    assert (profile.min, profile.max) == (1.0, 7.0)
    assert profile.null_ratio == pytest.approx(2 / 8)


def test_default_profile_has_ten_psi_bins_and_a_101_point_grid() -> None:
    values = np.random.default_rng(0).normal(size=5_000)
    profile = build_baseline({"x": values}).feature("x")
    assert isinstance(profile, NumericProfile)
    assert len(profile.edges) == 9
    assert len(profile.proportions) == 10
    assert len(profile.quantiles) == 101
    assert profile.proportions == pytest.approx([0.1] * 10, abs=1e-3)
    assert profile.quantiles[0] == profile.min and profile.quantiles[-1] == profile.max


def test_grid_cdf_is_the_reference_ecdf_at_each_quantile() -> None:
    values = np.random.default_rng(1).lognormal(size=3_000)
    profile = build_baseline({"x": values}).feature("x")
    assert isinstance(profile, NumericProfile)
    expected = [(values <= q).mean() for q in profile.quantiles]
    assert profile.cdf == pytest.approx(expected, abs=1e-12)


def test_every_psi_edge_is_a_grid_point() -> None:
    values = np.random.default_rng(2).exponential(size=2_000)
    profile = build_baseline({"x": values}, bins=7, quantiles=51).feature("x")
    assert isinstance(profile, NumericProfile)
    assert set(profile.edges) <= set(profile.quantiles)


def test_discrete_data_get_one_bin_per_value() -> None:
    values = np.repeat([0, 1, 2, 3], [400, 300, 200, 100])
    profile = build_baseline({"x": values}).feature("x")
    assert isinstance(profile, NumericProfile)
    assert profile.edges == (0.0, 1.0, 2.0)
    assert profile.proportions == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_no_psi_bin_is_empty_in_the_reference() -> None:
    profile = build_baseline({"x": np.repeat([0, 1], 500)}).feature("x")
    assert isinstance(profile, NumericProfile)
    assert profile.edges == (0.0,)
    assert profile.proportions == pytest.approx([0.5, 0.5])


def test_infinities_count_in_the_end_bins() -> None:
    values = np.concatenate([np.arange(100.0), [-np.inf, np.inf, np.inf]])
    profile = build_baseline({"x": values}).feature("x")
    assert isinstance(profile, NumericProfile)
    total = 103
    assert profile.proportions[0] == pytest.approx((10 + 1) / total)
    assert profile.proportions[-1] == pytest.approx(
        (len([v for v in range(100) if v > 89]) + 2) / total
    )


def test_integer_column_with_few_values_stays_numeric() -> None:
    profile = build_baseline({"x": np.array([0, 1, 1, 2] * 10)}).feature("x")
    assert isinstance(profile, NumericProfile)


def test_column_named_categorical_is_profiled_as_categories() -> None:
    profile = build_baseline({"x": np.array([1, 1, 2, 3] * 10)}, categorical=["x"]).feature("x")
    assert isinstance(profile, CategoricalProfile)
    assert profile.categories == ("1", "2", "3")
    assert profile.proportions == pytest.approx([0.5, 0.25, 0.25, 0.0])


def test_strings_and_booleans_are_categorical() -> None:
    profile = build_baseline(
        {
            "s": np.array(["a", "b", "a", "a"]),
            "b": np.array([True, False, True, True]),
        }
    )
    s, b = profile.feature("s"), profile.feature("b")
    assert isinstance(s, CategoricalProfile) and isinstance(b, CategoricalProfile)
    assert s.categories == ("a", "b")
    assert b.categories == ("true", "false")


def test_object_column_of_numbers_and_none_is_numeric() -> None:
    profile = build_baseline({"x": [1, 2.5, None, 4]}).feature("x")
    assert isinstance(profile, NumericProfile)
    assert profile.count == 3
    assert profile.null_ratio == pytest.approx(0.25)


def test_mixed_object_column_is_categorical() -> None:
    profile = build_baseline({"x": ["a", 1, None, "a"]}).feature("x")
    assert isinstance(profile, CategoricalProfile)
    assert profile.categories == ("a", "1")
    assert profile.null_ratio == pytest.approx(0.25)


def test_categorical_keeps_top_k_and_an_other_share() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 1 + [None, ""]
    profile = build_baseline({"x": values}, max_categories=2).feature("x")
    assert isinstance(profile, CategoricalProfile)
    assert profile.categories == ("a", "b")
    assert profile.proportions == pytest.approx([5 / 11, 3 / 11, 3 / 11])
    assert profile.count == 11
    assert profile.null_ratio == pytest.approx(2 / 13)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (True, "true"),
        (np.bool_(False), "false"),
        ("TRUE", "true"),
        (1, "1"),
        (1.0, "1"),
        (np.int64(7), "7"),
        (2.5, "2.5"),
        ("x", "x"),
        (None, None),
        ("", None),
        (math.nan, None),
    ],
)
def test_category_key_spells_values_one_way(value: object, key: str | None) -> None:
    assert category_key(value) == key


def test_feature_order_follows_the_columns() -> None:
    profile = build_baseline({"b": [1.0, 2.0], "a": ["x", "y"], "c": [3, 4]})
    assert profile.names == ("b", "a", "c")
    assert profile.rows == 2


@pytest.mark.parametrize(
    ("columns", "options", "key"),
    [
        ({"x": [1.0, 2.0], "y": [1.0]}, {}, "columns: must all have the same length"),
        ({"x": np.array([math.nan, math.inf])}, {}, "columns.x: has no finite value"),
        ({"x": ["", None]}, {}, "columns.x: has no non-missing value"),
        ({"x": [1.0, 2.0]}, {"categorical": ["nope"]}, "categorical: names columns"),
        ({"x": np.zeros((2, 2))}, {}, "columns.x: must be one-dimensional"),
        ({"x": [1.0]}, {"bins": 1}, "bins: must be an integer >= 2"),
        ({}, {}, "columns: no column to profile"),
    ],
)
def test_build_rejects_bad_input_naming_the_key(
    columns: dict[str, Any], options: dict[str, Any], key: str
) -> None:
    with pytest.raises(BaselineError) as info:
        build_baseline(columns, **options)
    assert any(p.startswith(key) for p in info.value.problems), info.value.problems


# --------------------------------------------------------------------------- leaving columns out


def _table_with_label(rows: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "customer_id": np.arange(rows, dtype=np.float64),
        "age": rng.normal(40, 10, rows),
        "plan": np.array(["basic", "pro"])[rng.integers(0, 2, rows)].astype(object),
        "churned": rng.integers(0, 2, rows).astype(np.float64),
    }


def test_target_and_excluded_columns_are_not_profiled() -> None:
    columns = _table_with_label()
    profile = build_baseline(columns, target="churned", exclude=["customer_id"])
    assert profile.names == ("age", "plan")
    kept = {name: columns[name] for name in ("age", "plan")}
    assert profile.features == build_baseline(kept).features
    assert profile.rows == 400


def test_the_saved_file_holds_only_the_remaining_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("id,x,label\n1,0.5,0\n2,1.5,1\n3,2.5,0\n")
    profile = build_baseline_file(path, tmp_path / "out.json", target="label", exclude=("id",))
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [f["name"] for f in saved["features"]] == ["x"]
    assert load_baseline(tmp_path / "out.json") == profile


def test_left_out_columns_are_not_checked() -> None:
    # A timestamp dtype and an all-missing label would each fail the build as features.
    columns = {
        "x": [1.0, 2.0, 3.0],
        "seen_at": np.array(["2024-01-01", "2024-01-02", "2024-01-03"], dtype="datetime64[D]"),
        "y": [math.nan, math.nan, math.nan],
    }
    with pytest.raises(BaselineError):
        build_baseline(columns)
    assert build_baseline(columns, exclude=["seen_at"], target="y").names == ("x",)


def test_a_name_both_excluded_and_the_target_is_left_out_once() -> None:
    profile = build_baseline(_table_with_label(), exclude=["churned", "churned"], target="churned")
    assert profile.names == ("customer_id", "age", "plan")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"exclude": ["x", "nope"]}, "exclude: names columns that do not exist: ['nope']"),
        ({"target": "nope"}, "target: names a column that does not exist: 'nope'"),
        (
            {"exclude": ["c"], "categorical": ["c"]},
            "exclude: names columns that categorical also names: ['c']",
        ),
        (
            {"target": "c", "categorical": ["c"]},
            "target: names a column that categorical also names: 'c'",
        ),
        ({"exclude": "x"}, "exclude: must be a collection of column names, got 'x'"),
        ({"target": ""}, "target: must be a non-empty column name, got ''"),
        ({"exclude": ["x"], "target": "c"}, "columns: no column left to profile"),
    ],
)
def test_leaving_out_rejects_bad_names_naming_the_key(
    options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(BaselineError) as info:
        build_baseline({"x": [1.0, 2.0], "c": [1, 2]}, **options)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


# --------------------------------------------------------------------------- round trips


def _sample_columns(rows: int = 500) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "age": rng.normal(40, 10, rows),
        "clicks": rng.poisson(3, rows).astype(np.float64),
        "country": np.array(["de", "fr", "us"])[rng.integers(0, 3, rows)].astype(object),
    }


def test_save_then_load_gives_the_same_profile(tmp_path: Path) -> None:
    profile = build_baseline(_sample_columns(), source="train.csv")
    path = tmp_path / "baseline.json"
    profile.save(path)
    assert load_baseline(path) == profile
    assert json.loads(path.read_text())["version"] == 1


def test_dict_round_trip_through_from_dict() -> None:
    profile = build_baseline(_sample_columns())
    assert BaselineProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_csv_round_trip_detects_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("age,country,score\n31,de,0.5\n42,fr,\n,us,1.5\n57,de,abc\n")
    table = read_table(path)
    assert table["age"].dtype == np.float64
    assert np.isnan(table["age"][2])
    assert table["country"].dtype == object
    assert table["score"].dtype == object  # "abc" makes it categorical
    profile = build_baseline_file(path, tmp_path / "out.json")
    assert isinstance(profile.feature("age"), NumericProfile)
    assert isinstance(profile.feature("country"), CategoricalProfile)
    assert profile.feature("age").null_ratio == pytest.approx(0.25)
    assert load_baseline(tmp_path / "out.json") == profile
    assert profile.source == "train.csv"


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # absent, or built for another numpy (minimal-versions env)
        pytest.skip(f"pyarrow not usable here: {exc}")
    return pa, pq


def test_parquet_round_trip(tmp_path: Path) -> None:
    pa, pq = _pyarrow()
    path = tmp_path / "train.parquet"
    pq.write_table(
        pa.table(
            {
                "age": pa.array([30, None, 50, 60], type=pa.int64()),
                "ok": pa.array([True, False, None, True]),
                "city": pa.array(["a", "b", "a", None]).dictionary_encode(),
            }
        ),
        path,
    )
    profile = build_baseline_file(path, tmp_path / "out.json")
    age, ok, city = (profile.feature(n) for n in ("age", "ok", "city"))
    assert isinstance(age, NumericProfile) and age.count == 3 and age.mean == pytest.approx(140 / 3)
    assert isinstance(ok, CategoricalProfile) and ok.categories == ("true", "false")
    assert isinstance(city, CategoricalProfile) and city.categories == ("a", "b")
    assert load_baseline(tmp_path / "out.json") == profile


def test_npz_with_one_array_per_column(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    columns = _sample_columns()
    np.savez(
        path, age=columns["age"], clicks=columns["clicks"], country=columns["country"].astype(str)
    )
    profile = build_baseline_file(path, tmp_path / "out.json")
    assert profile.names == ("age", "clicks", "country")
    assert profile.features == build_baseline(columns).features
    assert load_baseline(tmp_path / "out.json") == profile


@pytest.mark.parametrize("names_key", ["columns", "feature_names"])
def test_npz_with_a_matrix_and_column_names(tmp_path: Path, names_key: str) -> None:
    path = tmp_path / "train.npz"
    matrix = np.random.default_rng(4).normal(size=(200, 3))
    np.savez(path, X=matrix, **{names_key: np.array(["a", "b", "c"])})
    table = read_table(path)
    assert list(table) == ["a", "b", "c"]
    np.testing.assert_array_equal(table["b"], matrix[:, 1])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("data.txt", b"a,b\n1,2\n", "unknown table format"),
        ("empty.csv", b"", "a header row is required"),
        ("ragged.csv", b"a,b\n1,2\n3\n", "line 3: has 1 fields"),
        ("dupe.csv", b"a,a\n1,2\n", "repeated column names"),
    ],
)
def test_read_table_rejects_bad_files(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BaselineError, match=message):
        read_table(path)


def test_read_table_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="file not found"):
        read_table(tmp_path / "absent.csv")


def test_npz_matrix_without_names_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, X=np.zeros((3, 2)))
    with pytest.raises(BaselineError, match="not one-dimensional"):
        read_table(path)


def test_parquet_without_pyarrow_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(BaselineError, match=r"mlwarden\[parquet\]"):
        read_table(path)


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def good() -> dict[str, Any]:
    return build_baseline(_sample_columns()).to_dict()


def _load(tmp_path: Path, data: object) -> BaselineProfile:
    path = tmp_path / "baseline.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return load_baseline(path)


def test_load_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="file not found") as info:
        load_baseline(tmp_path / "absent.json")
    assert info.value.source == str(tmp_path / "absent.json")
    # Named in the problem as well, for callers that collect problems without the source.
    assert info.value.problems == (f"file not found: {tmp_path / 'absent.json'}",)


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=r"baseline\.json is not valid JSON"):
        _load(tmp_path, '{"version": 1,')


def _set(path: str, value: object) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("version", 2), "version: must be 1, got 2"),
        (_set("rows", "500"), "rows: must be an integer >= 1"),
        (_set("features", []), "features: must be a non-empty list"),
        (_set("created_at", "yesterday"), "created_at: must be an ISO 8601"),
        (_set("extra", 1), "extra: unknown key"),
        (_set("features.0.std", _DELETE), "features[0].std: missing"),
        (_set("features.0.colour", "red"), "features[0].colour: unknown key"),
        (_set("features.0.count", "10"), "features[0].count: must be an integer >= 1"),
        (_set("features.0.kind", "text"), "features[0].kind: must be 'numeric' or 'categorical'"),
        (_set("features.0.mean", None), "features[0].mean: must be a finite number"),
        (_set("features.0.null_ratio", 1.5), "features[0].null_ratio: must be between 0.0 and 1.0"),
        (_set("features.0.edges", [1.0, 1.0]), "features[0].edges: must be strictly increasing"),
        (_set("features.0.edges.0", float("nan")), "features[0].edges[0]: must be a finite number"),
        (
            _set("features.0.quantiles.3", float("nan")),
            "features[0].quantiles[3]: must be a finite number",
        ),
        (_set("features.0.proportions.0", 0.5), "features[0].proportions: must sum to 1"),
        (
            _set("features.2.proportions", [1.2, -0.1, -0.1, 0.0]),
            "features[2].proportions: must not be negative",
        ),
        (_set("features.2.proportions", [1.0]), "features[2].proportions: must have 4 values"),
        (
            _set("features.2.categories", ["de", "de", "us"]),
            "features[2].categories: must be unique",
        ),
        (_set("features.1.name", "age"), "features[1].name: duplicate feature name 'age'"),
        (_set("features.0.cdf.100", 0.5), "features[0].cdf: must be non-decreasing"),
    ],
)
def test_load_rejects_a_malformed_profile_naming_the_key(
    tmp_path: Path, good: dict[str, Any], mutate: Any, expected: str
) -> None:
    data = copy.deepcopy(good)
    mutate(data)
    with pytest.raises(BaselineError) as info:
        _load(tmp_path, data)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert str(tmp_path / "baseline.json") in str(info.value)


def test_edges_off_the_grid_are_rejected(tmp_path: Path, good: dict[str, Any]) -> None:
    data = copy.deepcopy(good)
    edges = data["features"][0]["edges"]
    edges[0] = (edges[0] + edges[1]) / 2 if edges[1] - edges[0] > 1e-9 else edges[0] - 1
    with pytest.raises(BaselineError, match=r"features\[0\].edges: every edge must be one of"):
        _load(tmp_path, data)


def test_load_reports_every_problem_at_once(tmp_path: Path, good: dict[str, Any]) -> None:
    data = copy.deepcopy(good)
    data["version"] = 3
    data["features"][0]["std"] = -1
    data["features"][2]["proportions"] = [0.5, 0.5, 0.5, 0.5]
    with pytest.raises(BaselineError) as info:
        _load(tmp_path, data)
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == ["version", "features[0].std", "features[2].proportions"]


def test_nan_literal_in_json_is_rejected(tmp_path: Path, good: dict[str, Any]) -> None:
    text = re.sub(r'"mean": [^,]+', '"mean": NaN', json.dumps(good), count=1)
    with pytest.raises(BaselineError) as info:
        _load(tmp_path, text)
    assert any(
        p.startswith("features[0].mean: must be a finite number, got nan")
        for p in info.value.problems
    ), info.value.problems


def test_from_dict_validates_embedded_baselines(good: dict[str, Any]) -> None:
    data = copy.deepcopy(good)
    data["features"][0]["edges"] = [3.0, 2.0]
    with pytest.raises(BaselineError, match=r"features\[0\]\.edges: must be strictly increasing"):
        BaselineProfile.from_dict(data)


def test_feature_lookup_raises_keyerror_for_unknown_names(good: dict[str, Any]) -> None:
    profile = BaselineProfile.from_dict(good)
    assert profile.feature("age").name == "age"
    with pytest.raises(KeyError):
        profile.feature("nope")
