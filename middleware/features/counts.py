"""What a feature window is read out as: counts on the baseline's bins, per feature.

Drift statistics only need counts per cell, so :meth:`FeatureWindows.snapshot
<mlwarden.middleware.features.windows.FeatureWindows.snapshot>` returns a
:class:`WindowSnapshot` of them; :mod:`mlwarden.middleware.drift` turns those into scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CategoricalCounts",
    "NumericCounts",
    "NumericTable",
    "RecentCounts",
    "WindowSnapshot",
]


@dataclass(frozen=True, slots=True)
class NumericCounts:
    """A numeric feature over the window, as counts on the baseline's bins.

    ``grid[j]``: finite values ``x`` with ``points[j-1] < x <= points[j]`` on the deduplicated
    KS grid ``points`` (``grid[-1]``: finite values above the last point), and
    ``reference_cdf[j]`` the baseline ECDF at ``points[j]``. ``bins[i]``: non-null values in
    PSI bin ``i``, ±inf included in the end bins.
    """

    name: str
    rows: int
    nulls: int
    finite: int
    total: float
    total_squares: float
    bins: np.ndarray
    grid: np.ndarray
    points: np.ndarray
    reference_cdf: np.ndarray

    @property
    def mean(self) -> float | None:
        return self.total / self.finite if self.finite else None

    @property
    def std(self) -> float | None:
        if not self.finite:
            return None
        mean = self.total / self.finite
        return math.sqrt(max(self.total_squares / self.finite - mean * mean, 0.0))


@dataclass(frozen=True, slots=True)
class CategoricalCounts:
    """A categorical feature over the window: ``counts`` per baseline category, then other."""

    name: str
    rows: int
    nulls: int
    counts: np.ndarray


@dataclass(frozen=True, slots=True)
class NumericTable:
    """The numeric features' counts side by side, padded to one width, to score all at once.

    Row ``i`` is feature ``names[i]``. ``bins`` holds PSI bin counts and
    ``reference_proportions`` the baseline shares, both padded with zeros (a bin empty on both
    sides scores 0). ``grid`` holds the KS cells, each row padded with zeros after its "above"
    cell, and ``reference_cdf`` is padded with 1.0, so that padding never changes D. Scoring 20
    features with a dozen numpy calls instead of a dozen per feature halves an evaluation.
    """

    names: tuple[str, ...]
    bins: np.ndarray
    reference_proportions: np.ndarray
    grid: np.ndarray
    reference_cdf: np.ndarray
    finite: np.ndarray
    nulls: np.ndarray
    totals: np.ndarray


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """Counts of every baseline feature, in baseline order, over the rows in the window.

    ``numeric`` holds the numeric features' counts again, as one padded table.
    """

    rows: int
    features: tuple[NumericCounts | CategoricalCounts, ...]
    numeric: NumericTable


@dataclass(frozen=True, slots=True)
class RecentCounts:
    """The most recent ``rows`` rows of the window, as the drift tests count them.

    ``numeric[i, j]``: values of numeric feature ``i`` (baseline order) in grid cell ``j``,
    ``-inf`` in the first cell and ``+inf`` in the one above the last point; ``present[i]``
    their number (nulls are left out). ``categorical[k][j]``: values of the ``k``-th
    categorical feature in category ``j``, "other" last.
    """

    rows: int
    numeric: np.ndarray
    present: np.ndarray
    categorical: tuple[np.ndarray, ...]
