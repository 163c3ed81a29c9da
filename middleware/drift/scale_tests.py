"""The drift tests on one window scale: statistics against their calibrated thresholds.

:func:`run_scale` takes the counts of the last rows of the window
(:class:`~mlwarden.middleware.features.RecentCounts`) and the thresholds for that many rows
(:class:`~mlwarden.middleware.drift.calibration.ScaleThresholds`) and returns, per feature,
one :class:`TestOutcome` per test. The numeric tests run on every numeric feature at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mlwarden.middleware.drift.calibration import Calibration, ScaleThresholds
from mlwarden.middleware.features import RecentCounts

__all__ = ["TestOutcome", "run_scale"]


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """One test of one feature on one window scale.

    ``statistic`` is standardised (location, spread: signed, in sd of the statistic under no
    drift), the KS distance (shape) or the pooled chi-square (chi2); ``threshold`` is the
    calibrated value it must exceed in size. ``ratio = |statistic| / threshold``: at or
    above 1 the test fires, whatever the test, so ratios compare across tests and scales.
    """

    __test__ = False  # not a pytest class, whatever its name

    test: str
    rows: int  # the rows of the scale it ran on
    statistic: float
    threshold: float
    ratio: float = field(init=False)  # read often: computed once
    fired: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.statistic != self.statistic:  # NaN: no figure (reported as such), no fire
            ratio = math.nan
        elif math.isfinite(self.threshold) and self.threshold > 0:
            ratio = abs(self.statistic) / self.threshold
        else:  # a threshold no window of this size can reach
            ratio = 0.0
        object.__setattr__(self, "ratio", ratio)
        object.__setattr__(self, "fired", ratio >= 1.0)


def _standardised(
    counts: np.ndarray,
    present: np.ndarray,
    scores: np.ndarray,
    moments: tuple[np.ndarray, np.ndarray],
    reference_rows: np.ndarray,
) -> np.ndarray:
    mean, sd = moments
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = (counts * scores).sum(axis=1) / present
        return (observed - mean) / (sd * np.sqrt(1.0 / present + 1.0 / reference_rows))


def _numeric(
    counts: RecentCounts,
    thresholds: ScaleThresholds,
    calibration: Calibration,
    tests: tuple[str, ...],
    min_rows: int,
) -> list[dict[str, TestOutcome]]:
    null = calibration.numeric
    cells = counts.numeric
    present = counts.present.astype(np.float64)
    rows = thresholds.rows  # what the thresholds were computed for (rows, or just below)
    statistics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for test, scores, moments, upper, lower in (
        (
            "location",
            null.location,
            calibration.location_moments,
            thresholds.location_upper,
            thresholds.location_lower,
        ),
        (
            "spread",
            null.spread,
            calibration.spread_moments,
            thresholds.spread_upper,
            thresholds.spread_lower,
        ),
    ):
        if test not in tests:
            continue
        z = _standardised(cells, present, scores, moments, null.reference_rows)
        side = np.where(z >= 0, upper, lower)
        statistics[test] = (z, calibration.adjust(side, rows, present))
    if "shape" in tests:
        with np.errstate(divide="ignore", invalid="ignore"):
            window_cdf = np.cumsum(cells, axis=1) / present[:, None]
            distance = np.max(np.abs(window_cdf - null.cdf), axis=1)
            effective = present * null.reference_rows / (present + null.reference_rows)
            statistics["shape"] = (distance, thresholds.shape / np.sqrt(effective))
    out: list[dict[str, TestOutcome]] = []
    for i in range(len(null.names)):
        if present[i] < min_rows:
            out.append({})
            continue
        out.append(
            {
                test: TestOutcome(test, counts.rows, float(statistic[i]), float(threshold[i]))
                for test, (statistic, threshold) in statistics.items()
            }
        )
    return out


def _categorical(
    counts: RecentCounts,
    thresholds: ScaleThresholds,
    calibration: Calibration,
    tests: tuple[str, ...],
    min_rows: int,
) -> list[dict[str, TestOutcome]]:
    out: list[dict[str, TestOutcome]] = []
    for feature, cells, plan in zip(
        calibration.categorical, counts.categorical, thresholds.chi2, strict=True
    ):
        n = float(cells.sum())
        if "chi2" not in tests or plan is None or n < min_rows:
            out.append({})
            continue
        group_of, shares, critical = plan
        grouped = np.bincount(group_of, weights=cells, minlength=shares.size)
        expected = n * shares
        statistic = float(np.sum((grouped - expected) ** 2 / expected))
        statistic /= 1.0 + n / feature.reference_rows
        out.append({"chi2": TestOutcome("chi2", counts.rows, statistic, critical)})
    return out


def run_scale(
    counts: RecentCounts,
    calibration: Calibration,
    *,
    numeric_tests: tuple[str, ...],
    categorical_tests: tuple[str, ...],
    min_rows: int,
) -> tuple[list[dict[str, TestOutcome]], list[dict[str, TestOutcome]]]:
    """Every test on the scale's counts: (numeric features, categorical features), in
    baseline order within each kind; an empty dict for a feature with too few values."""
    thresholds = calibration.thresholds(counts.rows)
    return (
        _numeric(counts, thresholds, calibration, numeric_tests, min_rows),
        _categorical(counts, thresholds, calibration, categorical_tests, min_rows),
    )
