"""Drift statistics against numpy/scipy, and the verdict on realistic traffic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlwarden.middleware.baseline import BaselineProfile, NumericProfile, build_baseline
from mlwarden.middleware.drift import (
    DriftThresholds,
    chi2_sf,
    chi2_test,
    evaluate_drift,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic_binned,
    psi,
)
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.features import FeatureWindows, NumericCounts
from mlwarden.middleware.payloads import FeatureBatch

stats = pytest.importorskip("scipy.stats")
pytestmark = pytest.mark.floor

# D on the 101-point grid is exact at the grid points; between them the reference ECDF moves
# by at most 1/100 (plus one value's 1/m for ties at a point): the stated tolerance.
KS_TOLERANCE = 0.011


def _windows(
    baseline: BaselineProfile, columns: dict[str, np.ndarray | list[object]], **options: object
) -> FeatureWindows:
    rows = len(next(iter(columns.values())))
    windows = FeatureWindows(baseline, max_rows=max(rows, 1), max_age_s=None, **options)
    if rows:
        windows.add(
            FeatureBatch(
                rows=rows,
                columns={k: list(np.asarray(v).tolist()) for k, v in columns.items()},
                format="json",
            )
        )
    return windows


# --------------------------------------------------------------------------- statistics


def test_psi_equals_the_formula_by_hand() -> None:
    reference = np.array([0.1, 0.2, 0.3, 0.4])
    counts = np.array([30, 10, 0, 60])
    q = np.maximum(counts / counts.sum(), 1e-4)
    expected = np.sum((q - reference) * np.log(q / reference))
    assert psi(reference, counts) == pytest.approx(expected, rel=1e-12)


def test_psi_of_a_window_is_the_formula_on_the_profile_bins() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    window = rng.normal(0.4, 1.1, 2_000)
    profile = build_baseline({"x": reference})
    feature = profile.feature("x")
    assert isinstance(feature, NumericProfile)
    windows = _windows(profile, {"x": window})
    report = evaluate_drift(windows, DriftThresholds())
    edges = np.asarray(feature.edges)
    p = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1)
    q = np.bincount(np.searchsorted(edges, window, side="left"), minlength=edges.size + 1)
    p = np.maximum(p / p.sum(), 1e-4)
    q = np.maximum(q / q.sum(), 1e-4)
    assert report.features[0].scores["psi"] == pytest.approx(
        np.sum((q - p) * np.log(q / p)), rel=1e-9
    )


def test_psi_of_an_empty_window_is_nan() -> None:
    assert math.isnan(psi([0.5, 0.5], [0, 0]))


_DISTRIBUTIONS = {
    "normal": lambda rng, shift, n: rng.normal(shift, 1.0, n),
    "lognormal": lambda rng, shift, n: rng.lognormal(shift, 0.8, n),
    "uniform": lambda rng, shift, n: rng.uniform(shift, 1 + shift, n),
    "exponential": lambda rng, shift, n: rng.exponential(1 + shift, n),
}


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("dist", sorted(_DISTRIBUTIONS))
def test_ks_statistic_is_within_tolerance_of_scipy(dist: str, shift: float) -> None:
    rng = np.random.default_rng(1)
    draw = _DISTRIBUTIONS[dist]
    reference, window = draw(rng, 0.0, 20_000), draw(rng, shift, 1_500)
    windows = _windows(build_baseline({"x": reference}), {"x": window})
    counts = windows.snapshot().features[0]
    assert isinstance(counts, NumericCounts)
    d = ks_statistic_binned(counts.reference_cdf, counts.grid)
    expected = stats.ks_2samp(reference, window).statistic
    assert d <= expected + 1e-12  # exact at the grid points: never above
    assert expected - d <= KS_TOLERANCE


def test_ks_statistic_is_exact_for_integer_data() -> None:
    rng = np.random.default_rng(2)
    reference, window = rng.poisson(3, 10_000), rng.poisson(3.4, 1_000)
    windows = _windows(build_baseline({"x": reference}), {"x": window})
    counts = windows.snapshot().features[0]
    assert isinstance(counts, NumericCounts)
    assert ks_statistic_binned(counts.reference_cdf, counts.grid) == pytest.approx(
        stats.ks_2samp(reference, window).statistic, abs=1e-12
    )


@pytest.mark.parametrize(
    ("n", "m", "shift"),
    [
        (100, 1_000, 0.0),
        (100, 1_000, 0.3),
        (500, 5_000, 0.1),
        (1_000, 20_000, 0.05),
        (2_000, 2_000, 0.1),
        (60, 50, 0.5),
        (30, 200, 0.5),
    ],
)
def test_ks_pvalue_is_close_to_scipy_exact(n: int, m: int, shift: float) -> None:
    rng = np.random.default_rng(3)
    result = stats.ks_2samp(rng.normal(size=m), rng.normal(shift, 1, n), method="exact")
    ours = ks_pvalue(result.statistic, n, m)
    assert ours == pytest.approx(result.pvalue, rel=0.1, abs=0.005)


def test_kolmogorov_sf_matches_scipy() -> None:
    xs = np.linspace(0.05, 4.0, 80)
    np.testing.assert_allclose(
        [kolmogorov_sf(x) for x in xs], stats.kstwobign.sf(xs), rtol=1e-10, atol=1e-300
    )


@pytest.mark.parametrize("dof", [1, 2, 3, 4.5, 7, 10, 30, 100, 500])
def test_chi2_sf_matches_scipy_to_1e_6_relative(dof: float) -> None:
    xs = np.concatenate([np.linspace(0.001, 4 * dof + 60, 150), [dof - 0.5, dof, dof + 1]])
    expected = stats.chi2.sf(xs, dof)
    got = np.array([chi2_sf(float(x), dof) for x in xs])
    meaningful = expected > 1e-290
    np.testing.assert_allclose(got[meaningful], expected[meaningful], rtol=1e-6)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(math.inf, 3) == 0.0
    with pytest.raises(ValueError, match="dof > 0"):
        chi2_sf(1.0, 0)


def test_chi2_test_matches_scipy_chisquare() -> None:
    reference = np.array([0.5, 0.3, 0.15, 0.05])
    counts = np.array([480, 330, 140, 50])
    result = chi2_test(reference, counts)
    expected = stats.chisquare(counts, f_exp=counts.sum() * reference)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-6)
    assert result.dof == 3


def test_chi2_test_smooths_a_cell_the_reference_never_saw() -> None:
    reference = np.array([0.6, 0.4, 0.0])
    counts = np.array([55, 40, 5])
    shares = np.maximum(reference, 1e-4)
    expected = counts.sum() * shares / shares.sum()
    result = chi2_test(reference, counts)
    assert result.statistic == pytest.approx(stats.chisquare(counts, expected).statistic)
    assert result.dof == 2


def test_chi2_test_leaves_out_cells_empty_on_both_sides() -> None:
    result = chi2_test([0.6, 0.4, 0.0], [55, 45, 0])
    assert result.dof == 1
    assert result.statistic == pytest.approx(
        stats.chisquare([55, 45], f_exp=[60, 40]).statistic, rel=1e-3
    )


def _twenty_features(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for i in range(4):
        columns[f"normal{i}"] = rng.normal(10 * i, 1 + i, rows)
        columns[f"lognormal{i}"] = rng.lognormal(i / 2, 0.5 + i / 4, rows)
        columns[f"uniform{i}"] = rng.uniform(-i, 1 + 2 * i, rows)
        columns[f"integer{i}"] = rng.poisson(1 + 3 * i, rows)
        shares = np.arange(1, 4 + i) / np.arange(1, 4 + i).sum()
        columns[f"category{i}"] = np.array(list("abcdefg")[: 3 + i])[
            rng.choice(3 + i, rows, p=shares)
        ]
    return columns


@pytest.fixture(scope="module")
def twenty() -> BaselineProfile:
    return build_baseline(_twenty_features(np.random.default_rng(1234), 20_000))


# --------------------------------------------------------------------------- verdicts


def test_scores_of_all_features_at_once_equal_the_per_feature_functions(
    twenty: BaselineProfile,
) -> None:
    columns = _twenty_features(np.random.default_rng(15), 1_200)
    columns["integer2"] = columns["integer2"] + 1
    columns["lognormal1"] = columns["lognormal1"] * 1.3
    windows = _windows(twenty, columns)
    snapshot = windows.snapshot()
    report = evaluate_drift(windows, DriftThresholds())
    checked = 0
    for counts, feature in zip(snapshot.features, report.features, strict=True):
        if not isinstance(counts, NumericCounts):
            continue
        profile = twenty.feature(counts.name)
        assert isinstance(profile, NumericProfile)
        d = ks_statistic_binned(counts.reference_cdf, counts.grid)
        assert feature.scores["psi"] == pytest.approx(
            psi(profile.proportions, counts.bins), rel=1e-12
        )
        assert feature.scores["ks"] == pytest.approx(d, rel=1e-12)
        assert feature.pvalues["ks"] == pytest.approx(ks_pvalue(d, counts.finite, profile.count))
        assert feature.mean == pytest.approx(np.mean(columns[counts.name]))
        checked += 1
    assert checked == 16


@pytest.mark.parametrize("seed", range(5))
def test_traffic_drawn_from_the_baseline_raises_no_drift(
    twenty: BaselineProfile, seed: int
) -> None:
    windows = _windows(twenty, _twenty_features(np.random.default_rng(seed), 1_500))
    report = evaluate_drift(windows, DriftThresholds())
    assert report.enough_data
    assert report.drifted_features == ()


@pytest.mark.parametrize("name", ["normal1", "lognormal2", "uniform0", "integer3"])
def test_a_one_std_mean_shift_flags_that_feature_only_by_location(
    twenty: BaselineProfile, name: str
) -> None:
    columns = _twenty_features(np.random.default_rng(7), 1_500)
    profile = twenty.feature(name)
    assert isinstance(profile, NumericProfile)
    columns[name] = columns[name] + profile.std
    report = evaluate_drift(_windows(twenty, columns), DriftThresholds())
    assert report.drifted_features == (name,)
    flagged = next(f for f in report.features if f.name == name)
    assert "location" in flagged.flagged_by
    assert flagged.tests["location"].ratio > 1 and flagged.tests["location"].statistic > 0


def test_a_wider_spread_at_the_same_mean_is_flagged_by_spread() -> None:
    rng = np.random.default_rng(21)
    profile = build_baseline({"x": rng.normal(size=20_000), "y": rng.normal(size=20_000)})
    windows = _windows(profile, {"x": rng.normal(0, 1.5, 1_000), "y": rng.normal(size=1_000)})
    report = evaluate_drift(windows, DriftThresholds())
    assert report.drifted_features == ("x",)
    x = report.features[0]
    assert "spread" in x.flagged_by and "location" not in x.flagged_by
    assert x.tests["spread"].statistic > 0


def test_a_narrower_spread_is_flagged_too() -> None:
    rng = np.random.default_rng(22)
    profile = build_baseline({"x": rng.normal(size=20_000)})
    report = evaluate_drift(_windows(profile, {"x": rng.normal(0, 0.6, 1_000)}), DriftThresholds())
    assert "spread" in report.features[0].flagged_by
    assert report.features[0].tests["spread"].statistic < 0


def test_a_change_of_shape_with_the_same_mean_and_sd_is_flagged_by_shape() -> None:
    rng = np.random.default_rng(23)
    profile = build_baseline({"x": rng.normal(size=20_000)})
    # Two bumps at +-0.8 with sd 0.6: mean 0 and variance 1, like the baseline.
    bimodal = rng.choice([-0.8, 0.8], 4_000) + rng.normal(0, 0.6, 4_000)
    report = evaluate_drift(_windows(profile, {"x": bimodal}), DriftThresholds())
    x = report.features[0]
    assert x.drifted and "shape" in x.flagged_by
    assert "location" not in x.flagged_by


def test_a_category_mix_shift_is_flagged_by_chi2(twenty: BaselineProfile) -> None:
    columns = _twenty_features(np.random.default_rng(8), 1_500)
    columns["category1"] = np.array(list("abcd"))[
        np.random.default_rng(9).choice(4, 1_500, p=[0.4, 0.3, 0.2, 0.1])
    ]
    report = evaluate_drift(_windows(twenty, columns), DriftThresholds())
    assert report.drifted_features == ("category1",)
    assert report.features[4 + 5].flagged_by == ("chi2",)


def test_nothing_is_flagged_below_min_rows() -> None:
    rng = np.random.default_rng(11)
    profile = build_baseline({"x": rng.normal(size=10_000)})
    shifted = rng.normal(3, 1, 100)
    few = evaluate_drift(_windows(profile, {"x": shifted[:99]}), DriftThresholds())
    enough = evaluate_drift(_windows(profile, {"x": shifted}), DriftThresholds())
    assert not few.enough_data and few.drifted_features == ()
    assert few.features[0].scores["psi"] > 1  # still scored, just not flagged
    assert enough.enough_data and enough.drifted_features == ("x",)
    assert enough.scales == (250,)  # a partial window, on the smallest scale only


def test_a_feature_with_too_few_values_present_is_not_flagged() -> None:
    rng = np.random.default_rng(12)
    profile = build_baseline({"x": rng.normal(size=5_000), "y": rng.normal(size=5_000)})
    y: list[object] = [None] * 500
    y[:50] = (rng.normal(5, 1, 50)).tolist()
    report = evaluate_drift(
        _windows(profile, {"x": rng.normal(size=500), "y": y}), DriftThresholds()
    )
    assert report.enough_data
    assert report.drifted_features == ()
    assert report.features[1].null_ratio == pytest.approx(0.9)
    assert report.features[1].tests == {}


def test_tests_can_be_switched_off(twenty: BaselineProfile) -> None:
    columns = _twenty_features(np.random.default_rng(13), 1_500)
    columns["normal0"] = columns["normal0"] + 2
    report = evaluate_drift(
        _windows(twenty, columns), DriftThresholds(numeric_tests=("shape",), categorical_tests=())
    )
    assert report.features[0].flagged_by == ("shape",)
    assert set(report.features[0].tests) == {"shape"}
    assert report.features[4].tests == {}


def test_report_to_dict_is_strict_json_with_none_where_undefined() -> None:
    profile = build_baseline({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})
    report = evaluate_drift(_windows(profile, {"x": []}), DriftThresholds())
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    x = data["features"][0]
    assert data["rows"] == 0 and data["enough_data"] is False and data["scales"] == []
    assert x["mean"] is None and x["null_ratio"] is None and x["tests"] == []
    assert x["scores"] == {"psi": None, "ks": None} and x["pvalues"] == {"ks": None}
    assert data["features"][1]["scores"] == {"psi": None, "chi2": None}


def test_report_shows_the_scale_that_fired_and_its_threshold(twenty: BaselineProfile) -> None:
    columns = _twenty_features(np.random.default_rng(14), 1_000)
    columns["uniform2"] = columns["uniform2"] + 3
    data = evaluate_drift(_windows(twenty, columns), DriftThresholds()).to_dict()
    assert data["drift_detected"] is True and data["drifted_features"] == ["uniform2"]
    assert data["scales"] == [250, 1000]  # 4,000 rows are not there yet
    assert 0 < data["alpha_per_test"] < 1e-4 and data["expected_run_rows"] == 200_000
    feature = next(f for f in data["features"] if f["name"] == "uniform2")
    assert "location" in feature["flagged_by"]
    tests = {t["test"]: t for t in feature["tests"]}
    assert set(tests) == {"location", "spread", "shape"}
    location = tests["location"]
    assert location["fired"] is True and location["rows"] in (250, 1000)
    assert location["ratio"] == pytest.approx(abs(location["statistic"]) / location["threshold"])
    calm = next(f for f in data["features"] if f["name"] == "normal0")
    assert all(not t["fired"] and t["ratio"] < 1 for t in calm["tests"])


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scales": ()}, "drift.scales: must be a list of increasing integers"),
        ({"scales": (500, 250)}, "drift.scales: must be a list of increasing integers"),
        ({"scales": (50, 500)}, "drift.scales: the smallest scale must be >= min_rows (100)"),
        ({"expected_run_rows": 10}, "drift.expected_run_rows: must be an integer >= 1000"),
        ({"min_rows": 5}, "drift.min_rows: must be an integer >= 20"),
        ({"min_rows": 100.5}, "drift.min_rows: must be an integer >= 20"),
        ({"numeric_tests": ("location", "chi2")}, "drift.numeric_tests: must be a list"),
        ({"categorical_tests": ("chi2", "chi2")}, "drift.categorical_tests: must be a list"),
    ],
)
def test_settings_reject_bad_values_naming_the_key(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DriftThresholds(**options)
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


def test_settings_from_mapping_rejects_unknown_and_retired_keys_with_the_rest() -> None:
    with pytest.raises(ConfigError) as info:
        DriftThresholds.from_mapping({"ks_min_statistic": 0.1, "scale": [1], "min_rows": 1})
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "drift.ks_min_statistic",
        "drift.scale",
        "drift.min_rows",
    ]
    assert "no longer an option (thresholds are calibrated per window size" in problems[0]


def test_settings_from_mapping_accepts_yaml_lists() -> None:
    settings = DriftThresholds.from_mapping({"scales": [200, 2000], "numeric_tests": ["shape"]})
    assert settings.scales == (200, 2000) and settings.numeric_tests == ("shape",)
