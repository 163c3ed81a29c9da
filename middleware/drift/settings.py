"""The drift settings (``drift=`` on the middleware): window scales and the false-alarm budget.

There are no thresholds to tune: each test's threshold is calibrated for its window size from
the baseline (:mod:`~mlwarden.middleware.drift.calibration`), so that on undrifted traffic a
false alarm comes on average at most once every ``expected_run_rows`` rows. The keys of the
former fixed-threshold design are refused with a message saying so.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mlwarden.middleware.errors import ConfigError

__all__ = ["CATEGORICAL_TESTS", "NUMERIC_TESTS", "DriftThresholds"]

#: The tests a numeric feature can run: a change of location, of spread, of shape.
NUMERIC_TESTS = ("location", "spread", "shape")
#: The tests a categorical feature can run.
CATEGORICAL_TESTS = ("chi2",)

_RETIRED = {
    "psi": "PSI is reported but no longer decides",
    "ks_pvalue": "thresholds are calibrated per window size",
    "chi2_pvalue": "thresholds are calibrated per window size",
    "ks_min_statistic": "thresholds are calibrated per window size",
    "chi2_min_distance": "thresholds are calibrated per window size",
    "correction": "the false-alarm budget is split across every test (expected_run_rows)",
    "numeric_methods": "use numeric_tests",
    "categorical_methods": "use categorical_tests",
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """How drift is judged; validated on creation (keys named ``drift.*``).

    - ``scales``: the window sizes tested, in rows: the last 250 rows see a large shift
      within a few hundred rows, the last 4,000 a small one; each is evaluated again once a
      fifth of its rows are new;
    - ``expected_run_rows``: on traffic that matches the baseline, the expected number of
      rows between two false alarms (the budget every test's level is derived from);
    - ``min_rows``: no verdict on fewer rows (a fresh server tests its first rows on the
      smallest scale from this many on);
    - ``numeric_tests`` / ``categorical_tests``: which tests run.
    """

    scales: tuple[int, ...] = (250, 1_000, 4_000)
    expected_run_rows: int = 200_000
    min_rows: int = 100
    numeric_tests: tuple[str, ...] = NUMERIC_TESTS
    categorical_tests: tuple[str, ...] = CATEGORICAL_TESTS

    def __post_init__(self) -> None:
        problems: list[str] = []
        for key in ("scales", "numeric_tests", "categorical_tests"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        scales = self.scales
        if (
            not isinstance(scales, tuple)
            or not scales
            or not all(_is_int(s) and s >= 1 for s in scales)
            or any(b <= a for a, b in itertools.pairwise(scales))
        ):
            problems.append(
                f"drift.scales: must be a list of increasing integers >= 1, got {scales!r}"
            )
        elif _is_int(self.min_rows) and scales[0] < self.min_rows:
            problems.append(
                f"drift.scales: the smallest scale must be >= min_rows ({self.min_rows}), "
                f"got {scales[0]}"
            )
        if not _is_int(self.expected_run_rows) or self.expected_run_rows < 1_000:
            problems.append(
                f"drift.expected_run_rows: must be an integer >= 1000, "
                f"got {self.expected_run_rows!r}"
            )
        if not _is_int(self.min_rows) or self.min_rows < 20:
            problems.append(
                f"drift.min_rows: must be an integer >= 20 (the tests need that many rows), "
                f"got {self.min_rows!r}"
            )
        for key, allowed in (
            ("numeric_tests", NUMERIC_TESTS),
            ("categorical_tests", CATEGORICAL_TESTS),
        ):
            value = getattr(self, key)
            if (
                not isinstance(value, tuple)
                or not all(m in allowed for m in value)
                or len(set(value)) != len(value)
            ):
                problems.append(
                    f"drift.{key}: must be a list of distinct tests from "
                    f"{', '.join(allowed)}, got {value!r}"
                )
        if problems:
            raise ConfigError(problems)

    @property
    def largest_scale(self) -> int:
        return self.scales[-1]

    def tests_per_evaluation(self, numeric: int, categorical: int) -> int:
        """Tests one evaluation of one scale runs (a two-sided test counts once)."""
        return numeric * len(self.numeric_tests) + categorical * len(self.categorical_tests)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftThresholds:
        """Build from a config block; unknown keys and bad values are reported together."""
        allowed = [f.name for f in fields(cls)]
        problems = []
        for key in data:
            if key in _RETIRED:
                problems.append(
                    f"drift.{key}: no longer an option ({_RETIRED[key]}; allowed: "
                    f"{', '.join(allowed)})"
                )
            elif key not in allowed:
                problems.append(f"drift.{key}: unknown key (allowed: {', '.join(allowed)})")
        known = {k: v for k, v in data.items() if k in allowed}
        try:
            thresholds = cls(**known)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return thresholds
