"""Drift of the feature windows against the baseline.

- :mod:`~mlwarden.middleware.drift.scores`: the statistics (PSI, KS, chi-square, TVD) and the
  multiple-testing corrections, pure functions on counts;
- :mod:`~mlwarden.middleware.drift.verdict`: the thresholds, :func:`evaluate_drift` and the
  report it returns.
"""

from mlwarden.middleware.drift.scores import (
    CORRECTIONS,
    Chi2Result,
    adjust_pvalues,
    chi2_sf,
    chi2_test,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic_binned,
    psi,
    total_variation,
)
from mlwarden.middleware.drift.verdict import (
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    evaluate_drift,
)

__all__ = [
    "CORRECTIONS",
    "Chi2Result",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "adjust_pvalues",
    "chi2_sf",
    "chi2_test",
    "evaluate_drift",
    "kolmogorov_sf",
    "ks_pvalue",
    "ks_statistic_binned",
    "psi",
    "total_variation",
]
