"""What undrifted traffic looks like to each drift test, and the thresholds that follow.

Every test runs on counts per cell of the baseline's grid (numeric features) or per category,
so its distribution on traffic that matches the baseline is fixed by the baseline alone: the
reference share of each cell. This module derives, once per baseline and per window size:

- **location** and **spread** (numeric): the mean of the rows' normal scores
  ``Phi^-1(mid-rank of the cell)`` and of their squares — van der Waerden's and Klotz's rank
  tests, as efficient as the t- and F-tests on normal data and robust to outliers, since a
  score is bounded by the grid. Thresholds by the saddlepoint approximation
  (:mod:`~mlwarden.middleware.drift.saddlepoint`), on both sides;
- **shape** (numeric): the KS distance on the grid, against the Dvoretzky-Kiefer-Wolfowitz
  bound ``sqrt(ln(2/alpha) / 2n)``, which holds for every window size and for discrete data;
- **chi2** (categorical): Pearson's statistic with the categories expected fewer than
  :data:`MIN_EXPECTED` times in a window of that size pooled, so that the chi-square law holds.

The reference shares are themselves estimated from the ``count`` training values: every
statistic is widened by ``sqrt(1 + n / count)`` (a two-sample test), so that a small baseline
does not raise false alarms on large windows. :func:`alpha_per_test` splits the false-alarm
budget across features, tests, window scales and evaluations.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mlwarden.middleware.baseline import BaselineProfile, CategoricalProfile, NumericProfile
from mlwarden.middleware.drift.saddlepoint import normal_isf, upper_critical_mean
from mlwarden.middleware.drift.scores import chi2_sf

__all__ = [
    "EVALUATIONS_PER_SCALE",
    "MIN_EXPECTED",
    "PARTIAL_STEP",
    "Calibration",
    "CategoricalNull",
    "NumericNull",
    "ScaleThresholds",
    "alpha_per_test",
    "chi2_isf",
]

#: A window scale is evaluated again once this share of its rows is new (1/5 of them).
EVALUATIONS_PER_SCALE = 5
#: Categories expected fewer times than this in a window are pooled for chi-square.
MIN_EXPECTED = 5.0
#: Partial windows are calibrated at multiples of this many rows.
PARTIAL_STEP = 25
#: Distinct window sizes whose thresholds are kept (full scales, and partial windows).
_CACHE_SIZE = 64


def alpha_per_test(
    *, expected_run_rows: int, tests_per_evaluation: int, scales: Sequence[int]
) -> float:
    """The level of each test so that false alarms come at most once per ``expected_run_rows``.

    With ``k`` tests per evaluation of a scale and that scale evaluated every
    ``s / EVALUATIONS_PER_SCALE`` rows, a row sees ``k * sum(EVALUATIONS_PER_SCALE / s)``
    tests; Bonferroni over them bounds the expected false alarms per row by ``1 /
    expected_run_rows``. Overlapping windows are strongly correlated, so the true rate is
    lower (measured in ``benchmarks/drift_quality.py``).
    """
    tests_per_row = tests_per_evaluation * sum(EVALUATIONS_PER_SCALE / s for s in scales)
    if tests_per_row <= 0:
        return 0.05
    return 1.0 / (expected_run_rows * tests_per_row)


def chi2_isf(alpha: float, dof: float) -> float:
    """The chi-square quantile exceeded with probability ``alpha`` (bisection on the tail)."""
    low, high = 0.0, max(1.0, 2.0 * dof)
    while chi2_sf(high, dof) > alpha:
        low, high = high, high * 2.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if chi2_sf(middle, dof) > alpha:
            low = middle
        else:
            high = middle
        if high - low < 1e-9 * high:
            break
    return high


def _normal_scores(shares: np.ndarray) -> np.ndarray:
    """``Phi^-1`` of each cell's mid-rank under the reference shares (0 for empty cells)."""
    inv = NormalDist().inv_cdf
    upper = np.cumsum(shares)
    mid = np.clip(upper - shares / 2, 1e-12, 1 - 1e-12)
    return np.array([inv(m) if s > 0 else 0.0 for m, s in zip(mid, shares, strict=True)])


@dataclass(frozen=True, slots=True)
class NumericNull:
    """The numeric features' reference side, one row per feature, padded to one width.

    Cell ``j < len(points)`` holds values in ``(points[j-1], points[j]]`` (``-inf`` in the
    first), cell ``len(points)`` values above the last point (``+inf`` too); the padding
    cells after it have no share. ``shares`` gives the cell above the training maximum half
    a row's share, since a finite training set never saw the values beyond it.
    """

    names: tuple[str, ...]
    cells: int  # the padded width
    shares: np.ndarray
    cdf: np.ndarray  # reference ECDF at each cell's upper point (1.0 from the last on)
    location: np.ndarray
    spread: np.ndarray
    reference_rows: np.ndarray  # the training values each feature's shares come from

    @classmethod
    def from_profiles(cls, profiles: Sequence[NumericProfile]) -> NumericNull:
        grids = [p.grid()[1] for p in profiles]
        cells = max((len(g) for g in grids), default=0) + 1
        shares = np.zeros((len(profiles), cells))
        cdf = np.ones((len(profiles), cells))
        location = np.zeros((len(profiles), cells))
        for i, (p, grid) in enumerate(zip(profiles, grids, strict=True)):
            raw = np.diff(grid, prepend=0.0)
            row = np.append(raw, 0.5 / p.count)
            row = row / row.sum()
            shares[i, : row.size] = row
            cdf[i, : grid.size] = grid
            location[i, : row.size] = _normal_scores(row)
        spread = location * location
        return cls(
            names=tuple(p.name for p in profiles),
            cells=cells,
            shares=shares,
            cdf=cdf,
            location=location,
            spread=spread,
            reference_rows=np.array([p.count for p in profiles], dtype=np.float64),
        )

    def moments(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of one row's score, per feature."""
        mean = (self.shares * scores).sum(axis=1)
        second = (self.shares * scores * scores).sum(axis=1)
        return mean, np.sqrt(np.maximum(second - mean * mean, 1e-300))


@dataclass(frozen=True, slots=True)
class CategoricalNull:
    """A categorical feature's reference shares: its categories, then "other".

    An "other" share of 0 (a baseline with fewer categories than the limit) becomes half a
    row's share: a value never seen in training is then surprising, not impossible.
    """

    name: str
    shares: np.ndarray
    reference_rows: int

    @classmethod
    def from_profile(cls, profile: CategoricalProfile) -> CategoricalNull:
        shares = np.asarray(profile.proportions, dtype=np.float64).copy()
        shares[-1] = max(shares[-1], 0.5 / profile.count)
        return cls(profile.name, shares / shares.sum(), profile.count)

    def pooling(self, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For a window of ``rows``: each cell's group, and the groups' shares.

        Cells expected at least :data:`MIN_EXPECTED` times stay alone; the others are
        pooled, and the pool takes the smallest cells left until it is expected that often
        too. None when fewer than two groups remain (no test at this size).
        """
        expected = self.shares * rows
        order = np.argsort(self.shares, kind="stable")
        pooled = [int(i) for i in order if expected[i] < MIN_EXPECTED]
        alone = [int(i) for i in order if expected[i] >= MIN_EXPECTED]
        while pooled and expected[pooled].sum() < MIN_EXPECTED and alone:
            pooled.append(alone.pop(0))
        groups = [[i] for i in alone] + ([pooled] if pooled else [])
        if len(groups) < 2:
            return None
        group_of = np.empty(self.shares.size, dtype=np.intp)
        for g, members in enumerate(groups):
            group_of[members] = g
        return group_of, np.bincount(group_of, weights=self.shares, minlength=len(groups))


@dataclass(frozen=True, slots=True)
class ScaleThresholds:
    """Every test's threshold for windows of ``rows`` rows (standardised units).

    ``location_upper`` and ``location_lower`` bound the standardised mean score
    ``(mean - mu) / (sd * sqrt(1/n + 1/count))`` above and (as a positive number) below;
    likewise ``spread_*``. ``shape`` is the constant ``c`` of the KS bound ``c / sqrt(n)``.
    ``chi2`` holds, per categorical feature, its pooling and critical value (or None).
    """

    rows: int
    location_upper: np.ndarray
    location_lower: np.ndarray
    spread_upper: np.ndarray
    spread_lower: np.ndarray
    shape: float
    chi2: tuple[tuple[np.ndarray, np.ndarray, float] | None, ...]


class Calibration:
    """A baseline's null model and the per-test level; thresholds computed once per size."""

    def __init__(
        self,
        baseline: BaselineProfile,
        *,
        alpha: float,
        scales: Sequence[int] = (),
        min_rows: int = 100,
    ) -> None:
        numeric = [f for f in baseline.features if isinstance(f, NumericProfile)]
        categorical = [f for f in baseline.features if isinstance(f, CategoricalProfile)]
        self.alpha = alpha
        self.numeric = NumericNull.from_profiles(numeric)
        self.categorical = tuple(CategoricalNull.from_profile(p) for p in categorical)
        self.location_moments = self.numeric.moments(self.numeric.location)
        self.spread_moments = self.numeric.moments(self.numeric.spread)
        self.normal_critical = normal_isf(alpha / 2)
        self._chi2_critical: dict[tuple[float, float], float] = {}
        self._cache: OrderedDict[int, ScaleThresholds] = OrderedDict()
        # prepare() runs in a thread at start-up; an evaluation may ask meanwhile.
        self._lock = threading.Lock()
        self.scales = tuple(scales)
        self.min_rows = min_rows

    def size_for(self, rows: int) -> int:
        """The window size whose thresholds serve ``rows`` rows.

        A full scale is itself; a partial window (a fresh server, or rows expired by age)
        is rounded down to a multiple of :data:`PARTIAL_STEP` rows, so that the sizes to
        calibrate are few and known in advance (:meth:`prepare`); the thresholds are then
        moved to the exact count like those of a feature with nulls (:meth:`adjust`).
        """
        if rows in self.scales:
            return rows
        return max(self.min_rows, rows - rows % PARTIAL_STEP)

    def prepare(self) -> None:
        """Compute every size's thresholds now (some tens of ms: do it off the event loop)."""
        smallest = self.scales[0] if self.scales else self.min_rows
        for rows in (*self.scales, *range(self.min_rows, smallest, PARTIAL_STEP)):
            self.thresholds(self.size_for(rows))

    def thresholds(self, rows: int) -> ScaleThresholds:
        """The thresholds for ``size_for(rows)`` rows (cached, least recently used out)."""
        rows = self.size_for(rows)
        with self._lock:
            found = self._cache.get(rows)
            if found is not None:
                self._cache.move_to_end(rows)
                return found
            made = self._compute(rows)
            self._cache[rows] = made
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return made

    def adjust(self, critical: np.ndarray, rows: int, present: np.ndarray) -> np.ndarray:
        """Thresholds for ``present`` values instead of ``rows`` (features with nulls).

        The saddlepoint's departure from the normal quantile shrinks as ``1 / sqrt(n)`` (the
        first Edgeworth term); scaling it is exact enough for the few per cent of rows that
        nulls take from a window, and saves a solve per feature and evaluation.
        """
        z = self.normal_critical
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = z + (critical - z) * np.sqrt(rows / np.maximum(present, 1))
        return np.where(present == rows, critical, scaled)

    def _pearson_critical(self, shares: np.ndarray, rows: int) -> float:
        """Pearson's statistic's critical value for ``rows`` rows over cells of ``shares``.

        Its exact variance under no drift is ``2k + (sum(1/p) - (k+1)^2 - ... ) / n`` (more
        than the chi-square law's ``2k`` when cells are small): matching a scaled chi-square
        ``a * chi2(nu)`` to its mean and variance keeps the far tail honest.
        """
        cells = shares.size
        dof = cells - 1
        variance = 2.0 * dof + (float(np.sum(1.0 / shares)) - cells * cells - 2 * cells + 2) / rows
        scale = max(variance, 1e-9) / (2.0 * dof)
        key = (round(dof / scale, 6), self.alpha)
        found = self._chi2_critical.get(key)
        if found is None:
            found = self._chi2_critical[key] = chi2_isf(self.alpha, dof / scale)
        return scale * found

    def _compute(self, rows: int) -> ScaleThresholds:
        null = self.numeric
        half = self.alpha / 2
        sides = []
        for scores, (mean, sd) in (
            (null.location, self.location_moments),
            (null.spread, self.spread_moments),
        ):
            for sign in (1.0, -1.0):
                critical = upper_critical_mean(null.shares, sign * scores, rows, half)
                sides.append((critical - sign * mean) * math.sqrt(rows) / sd)
        chi2 = []
        for feature in self.categorical:
            pooling = feature.pooling(rows)
            if pooling is None:
                chi2.append(None)
                continue
            group_of, shares = pooling
            chi2.append((group_of, shares, self._pearson_critical(shares, rows)))
        return ScaleThresholds(
            rows=rows,
            location_upper=sides[0],
            location_lower=sides[1],
            spread_upper=sides[2],
            spread_lower=sides[3],
            shape=math.sqrt(math.log(2.0 / self.alpha) / 2.0),
            chi2=tuple(chi2),
        )
