"""Bounded per-feature windows of recent traffic, and what they are read out as.

- :mod:`~mlwarden.middleware.features.windows`: :class:`FeatureWindows`, the most recent rows
  of every baseline feature, bounded by count and age, binned in batches;
- :mod:`~mlwarden.middleware.features.storage`: the fixed rings the values are kept in;
- :mod:`~mlwarden.middleware.features.counts`: the counts a window is read out as, which
  :mod:`mlwarden.middleware.drift` turns into scores.
"""

from mlwarden.middleware.features.counts import (
    CategoricalCounts,
    NumericCounts,
    NumericTable,
    RecentCounts,
    WindowSnapshot,
)
from mlwarden.middleware.features.storage import to_float64
from mlwarden.middleware.features.windows import FeatureWindows

__all__ = [
    "CategoricalCounts",
    "FeatureWindows",
    "NumericCounts",
    "NumericTable",
    "RecentCounts",
    "WindowSnapshot",
    "to_float64",
]
