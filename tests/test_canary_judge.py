"""The canary's statistics against scipy's, and the judgements' decisions on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlwarden.sidecar.routing.canary_judge import (
    fisher_greater,
    judge_errors,
    judge_latency,
    judge_latency_binned,
    mann_whitney_greater,
)

JUDGE = {"alpha": 0.01, "max_latency_ratio": 1.25, "max_latency_p99_ratio": 1.5}
ERRORS = {"alpha": 0.01, "max_error_rate": 0.05, "max_error_rate_increase": 0.01}


@pytest.mark.parametrize(
    ("a", "n_a", "b", "n_b"),
    [(3, 30, 0, 200), (5, 100, 2, 400), (0, 50, 3, 50), (10, 10, 0, 10), (40, 800, 20, 900)],
)
def test_fisher_matches_scipy_one_sided(a, n_a, b, n_b):
    table = [[a, n_a - a], [b, n_b - b]]
    expected = stats.fisher_exact(table, alternative="greater").pvalue
    assert fisher_greater(a, n_a, b, n_b) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_mann_whitney_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.lognormal(0.1, 0.5, 300), 2)  # rounded: many ties
    y = np.round(rng.lognormal(0.0, 0.5, 500), 2)
    u, p = mann_whitney_greater(x, y)
    expected = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    assert u == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=1e-6)


def test_identical_versions_rarely_fail_on_latency():
    rng = np.random.default_rng(3)
    failed = sum(
        judge_latency(
            rng.lognormal(-4, 0.6, 200), rng.lognormal(-4, 0.6, 800), rng=rng, **JUDGE
        ).failed
        for _ in range(300)
    )
    assert failed <= 3  # the effect-size floor: a rank test alone would flag about 1%


def test_a_doubled_median_fails_with_its_interval():
    rng = np.random.default_rng(4)
    evidence = judge_latency(
        rng.lognormal(-4, 0.4, 100) * 2, rng.lognormal(-4, 0.4, 400), rng=rng, **JUDGE
    )
    assert evidence.failed and evidence.effect == "median ratio"
    assert evidence.interval is not None and 1.6 < evidence.interval[0] < 2.0 < evidence.interval[1]


def test_a_slow_tail_alone_fails_on_the_p99():
    rng = np.random.default_rng(5)
    stable = rng.lognormal(-4, 0.3, 2000)
    candidate = rng.lognormal(-4, 0.3, 2000)
    candidate[:200] *= 6  # 10% of answers six times slower: the median barely moves
    evidence = judge_latency(candidate, stable, rng=rng, **JUDGE)
    assert evidence.failed and evidence.effect == "p99 ratio"


def test_errors_within_noise_pass_and_a_clear_excess_fails():
    assert not judge_errors(1, 40, 4, 400, **ERRORS).failed
    assert judge_errors(3, 30, 0, 200, **ERRORS).failed
    clear = judge_errors(30, 60, 0, 200, **ERRORS)
    assert clear.failed and clear.unmistakable


def test_the_same_error_rate_as_the_stable_never_fails_whatever_the_rate():
    # The stable itself fails 20%: the candidate doing the same is no reason to roll back.
    assert not judge_errors(20, 100, 80, 400, **ERRORS).failed


BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, float("inf")]


def test_the_fleets_histograms_of_identical_versions_pass():
    rng = np.random.default_rng(6)
    counts = [0, 10, 200, 400, 300, 60, 20, 10, 0]
    evidence = judge_latency_binned(
        BOUNDS, counts, [4 * c for c in counts], alpha=0.01, max_latency_ratio=1.25, rng=rng
    )
    assert not evidence.failed and evidence.passed
    assert evidence.interval is not None and evidence.interval[1] < 1.25


def test_the_fleets_histograms_of_a_slower_candidate_fail():
    rng = np.random.default_rng(7)
    stable = [0, 10, 200, 400, 300, 60, 20, 10, 0]
    slower = [0, 0, 20, 100, 350, 400, 100, 30, 0]  # its mass one bucket up or more
    evidence = judge_latency_binned(
        BOUNDS, slower, [4 * c for c in stable], alpha=0.01, max_latency_ratio=1.25, rng=rng
    )
    assert evidence.failed and evidence.p_value < 1e-6
    assert evidence.interval is not None and evidence.interval[0] > 1.25
