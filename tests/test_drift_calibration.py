"""The drift thresholds hold their false-alarm level, and shifts are seen near the limit.

Calibration is checked against simulation (the null distribution drawn from the baseline's
own cells), the sequential false alarms over whole server lifetimes, and detection in rows
for the shifts the defaults must see. Counts are bounded and seeded: these are statements
about behaviour, checked over repeated runs, not about speed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlwarden.middleware.baseline import BaselineProfile, build_baseline
from mlwarden.middleware.drift import DriftEvaluator, DriftThresholds
from mlwarden.middleware.drift.calibration import (
    MIN_EXPECTED,
    Calibration,
    CategoricalNull,
    alpha_per_test,
    chi2_isf,
)
from mlwarden.middleware.drift.saddlepoint import normal_isf, upper_critical_mean
from mlwarden.middleware.drift.scores import chi2_sf
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.payloads import FeatureBatch

pytestmark = pytest.mark.floor


def _tail_in_simulation(
    shares: np.ndarray, scores: np.ndarray, n: int, critical: float, draws: int, seed: int
) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws // 50_000):
        counts = rng.multinomial(n, shares, size=50_000)
        hits += int(np.count_nonzero(counts @ scores / n >= critical))
    return hits / draws


@pytest.mark.parametrize("kind", ["lognormal", "poisson"])
@pytest.mark.parametrize("test", ["location", "spread"])
def test_saddlepoint_thresholds_hold_their_level_in_simulation(kind: str, test: str) -> None:
    rng = np.random.default_rng(5)
    data = rng.lognormal(0, 1, 20_000) if kind == "lognormal" else rng.poisson(2.5, 20_000)
    calibration = Calibration(build_baseline({"x": data}), alpha=2e-3)
    null = calibration.numeric
    scores = (null.location if test == "location" else null.spread)[0]
    shares = null.shares[0]
    for sign in (1.0, -1.0):
        critical = upper_critical_mean(shares[None], sign * scores[None], 250, 1e-3)[0]
        tail = _tail_in_simulation(shares, sign * scores, 250, critical, 400_000, 6)
        # 400,000 draws at 1e-3: the simulated tail is within +-16 % with 99.9 % odds.
        assert 0.75e-3 < tail < 1.3e-3, (sign, tail)


def test_the_spread_thresholds_are_asymmetric_as_its_skewed_statistic_is() -> None:
    rng = np.random.default_rng(6)
    calibration = Calibration(build_baseline({"x": rng.normal(size=20_000)}), alpha=1e-5)
    t = calibration.thresholds(250)
    z = normal_isf(0.5e-5)
    assert t.spread_upper[0] > z + 0.3  # the squared scores have a long right tail
    assert t.spread_lower[0] < z - 0.3
    assert abs(t.location_upper[0] - z) < 0.1  # the scores themselves are symmetric


def test_chi2_isf_inverts_chi2_sf() -> None:
    for dof in (1, 2, 9, 40):
        for alpha in (0.05, 1e-3, 1e-7):
            assert chi2_sf(chi2_isf(alpha, dof), dof) == pytest.approx(alpha, rel=1e-6)


def test_rare_categories_are_pooled_until_each_group_is_expected_often_enough() -> None:
    shares = np.array([0.6, 0.3, 0.05, 0.02, 0.02, 0.01])
    null = CategoricalNull(name="c", shares=shares, reference_rows=100_000)
    group_of, grouped = null.pooling(100)
    assert grouped.sum() == pytest.approx(1.0)
    assert np.all(grouped * 100 >= MIN_EXPECTED)
    # 0.05 x 100 = 5 stays alone; 0.02 + 0.02 + 0.01 are pooled into one group of 5
    assert len(set(group_of[:3].tolist())) == 3 and len(set(group_of[3:].tolist())) == 1
    assert group_of[3] not in group_of[:3]
    assert null.pooling(8) is None  # nothing left to compare at 8 rows


def test_pooled_chi2_holds_its_level_for_many_rare_categories() -> None:
    ranks = np.arange(1, 51)
    zipf = (1 / ranks) / (1 / ranks).sum()
    rng = np.random.default_rng(7)
    training = rng.choice(50, 50_000, p=zipf).astype(str).astype(object)
    profile = build_baseline({"c": training})
    calibration = Calibration(profile, alpha=1e-3)
    group_of, grouped, critical = calibration.thresholds(250).chi2[0]
    feature = calibration.categorical[0]
    hits = 0
    draws = 200_000
    for _ in range(draws // 50_000):
        counts = rng.multinomial(250, feature.shares, size=50_000)
        pooled = np.stack(
            [counts[:, group_of == g].sum(axis=1) for g in range(grouped.size)], axis=1
        )
        expected = 250 * grouped
        statistic = ((pooled - expected) ** 2 / expected).sum(axis=1)
        hits += int(np.count_nonzero(statistic / (1 + 250 / feature.reference_rows) >= critical))
    assert 0.5e-3 < hits / draws < 1.6e-3


def test_a_small_baseline_does_not_make_large_windows_raise_false_alarms() -> None:
    # The reference is itself a sample: with 500 training rows and 4,000-row windows the
    # one-sample statistic would be sqrt(1 + 4000/500) = 3 times too wide.
    rng = np.random.default_rng(8)
    z: dict[str, list[float]] = {"location": [], "spread": []}
    one_scale = DriftThresholds(scales=(4_000,))
    for _ in range(150):
        profile = build_baseline({"x": rng.normal(size=500)})
        windows = FeatureWindows(profile, max_rows=4_000, max_age_s=None)
        windows.add(
            FeatureBatch(rows=4_000, columns={"x": rng.normal(size=4_000).tolist()}, format="json")
        )
        report = DriftEvaluator(windows, one_scale).evaluate(every_scale=True)
        for test, values in z.items():
            values.append(report.features[0].tests[test].statistic)
    for values in z.values():
        assert 0.8 < float(np.std(values)) < 1.25


def test_alpha_per_test_splits_the_budget_over_tests_scales_and_evaluations() -> None:
    alpha = alpha_per_test(expected_run_rows=200_000, tests_per_evaluation=61, scales=(250,))
    # one scale of 250 rows tested every 50 rows: 61 tests per 50 rows
    assert alpha == pytest.approx(50 / (200_000 * 61))


# --------------------------------------------------------------------------- lifetimes


def _training(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {f"f{i}": rng.normal(size=rows) for i in range(20)}
    columns["c"] = rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2]).astype(object)
    return columns


@pytest.fixture(scope="module")
def baseline() -> BaselineProfile:
    return build_baseline(_training(np.random.default_rng(2024), 20_000))


def _rows(
    rng: np.random.Generator,
    rows: int,
    *,
    shift: float = 0.0,
    scale: float = 1.0,
    shares: tuple[float, ...] = (0.5, 0.3, 0.2),
) -> FeatureBatch:
    columns: dict[str, list[object]] = {f"f{i}": rng.normal(size=rows).tolist() for i in range(20)}
    columns["f3"] = (rng.normal(size=rows) * scale + shift).tolist()
    columns["c"] = rng.choice(["a", "b", "c"], rows, p=list(shares)).tolist()
    return FeatureBatch(rows=rows, columns=columns, format="json")


class _Server:
    """A fresh server's windows and evaluator, fed in requests of ``batch`` rows and
    evaluated as the worker does: once the smallest scale has a fifth of its rows new."""

    def __init__(self, baseline: BaselineProfile, batch: int = 10) -> None:
        self.windows = FeatureWindows(baseline, max_rows=10_000, max_age_s=None)
        self.evaluator = DriftEvaluator(self.windows, DriftThresholds())
        self.batch = batch
        self.rows = 0

    def feed(self, rng: np.random.Generator, rows: int, **shift: object) -> int | None:
        """Feed ``rows``; the rows fed when a report first flags drift, or None."""
        for _ in range(rows // self.batch):
            self.windows.add(_rows(rng, self.batch, **shift))  # type: ignore[arg-type]
            self.rows += self.batch
            if self.evaluator.rows_until_due() == 0:
                report = self.evaluator.evaluate()
                if report.drift_detected:
                    self.last = report
                    return self.rows
        return None


def test_few_server_lifetimes_on_undrifted_traffic_ever_raise_a_false_alarm(
    baseline: BaselineProfile,
) -> None:
    rng = np.random.default_rng(31)
    lifetimes, flagged = 24, 0
    for _ in range(lifetimes):
        server = _Server(baseline)
        if server.feed(rng, 3_000) is not None:
            flagged += 1
    # Expected at most 3,000 / 200,000 per lifetime: 0.36 of 24; 2 would be rare luck.
    assert flagged <= 1


@pytest.mark.parametrize(
    ("change", "within"),
    [
        ({"shift": 0.5}, 500),
        ({"shift": 0.25}, 2_000),
        ({"scale": 1.5}, 1_000),
    ],
)
def test_a_numeric_shift_is_flagged_within_its_row_budget_naming_only_that_feature(
    baseline: BaselineProfile, change: dict[str, float], within: int
) -> None:
    rng = np.random.default_rng(41)
    delays = []
    for _ in range(6):
        server = _Server(baseline)
        assert server.feed(rng, 5_000) is None
        start = server.rows
        flagged_at = server.feed(rng, within, **change)
        assert flagged_at is not None, f"not flagged within {within} rows"
        assert server.last.drifted_features == ("f3",)
        delays.append(flagged_at - start)
    assert max(delays) <= within


def test_the_categorical_shift_is_flagged_within_1000_rows_by_chi2(
    baseline: BaselineProfile,
) -> None:
    rng = np.random.default_rng(43)
    for _ in range(6):
        server = _Server(baseline)
        assert server.feed(rng, 5_000) is None
        start = server.rows
        flagged_at = server.feed(rng, 1_000, shares=(0.35, 0.3, 0.35))
        assert flagged_at is not None and flagged_at - start <= 1_000
        assert server.last.drifted_features == ("c",)
        c = server.last.features[-1]
        assert c.flagged_by == ("chi2",) and math.isfinite(c.tests["chi2"].threshold)
