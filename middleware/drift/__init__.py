"""Drift of the feature windows against the baseline.

- :mod:`~mlwarden.middleware.drift.settings`: :class:`DriftThresholds`, the window scales and
  the false-alarm budget (no thresholds to tune);
- :mod:`~mlwarden.middleware.drift.calibration`: each test's distribution on undrifted
  traffic, from the baseline, and the thresholds per window size
  (:mod:`~mlwarden.middleware.drift.saddlepoint` for the rank tests' tails);
- :mod:`~mlwarden.middleware.drift.scale_tests`: the tests on one window scale;
- :mod:`~mlwarden.middleware.drift.verdict`: :class:`DriftEvaluator` over every scale,
  :func:`evaluate_drift` and the report;
- :mod:`~mlwarden.middleware.drift.scores` and :mod:`~mlwarden.middleware.drift.descriptive`:
  PSI, KS and chi-square with textbook p-values, reported over the whole window.
"""

from mlwarden.middleware.drift.scale_tests import TestOutcome
from mlwarden.middleware.drift.scores import (
    Chi2Result,
    chi2_sf,
    chi2_test,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic_binned,
    psi,
)
from mlwarden.middleware.drift.settings import CATEGORICAL_TESTS, NUMERIC_TESTS, DriftThresholds
from mlwarden.middleware.drift.verdict import (
    DriftEvaluator,
    DriftReport,
    FeatureDrift,
    evaluate_drift,
)

__all__ = [
    "CATEGORICAL_TESTS",
    "NUMERIC_TESTS",
    "Chi2Result",
    "DriftEvaluator",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "TestOutcome",
    "chi2_sf",
    "chi2_test",
    "evaluate_drift",
    "kolmogorov_sf",
    "ks_pvalue",
    "ks_statistic_binned",
    "psi",
]
