"""The drift verdict: several window scales, calibrated tests, one report.

:class:`DriftEvaluator` judges a :class:`~mlwarden.middleware.features.FeatureWindows`
again and again, as the middleware does: each scale (the last 250, 1,000 and 4,000 rows by
default) is tested once a fifth of its rows are new, and its last results stand in between,
so that frequent evaluations cost little and add no false alarms. A feature drifts when any
of its tests fires on any scale; the thresholds come from
:mod:`~mlwarden.middleware.drift.calibration`. The report also carries the whole window's
familiar figures (:mod:`~mlwarden.middleware.drift.descriptive`). :func:`evaluate_drift` is
one evaluation of every scale.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlwarden.middleware.baseline import BaselineProfile, CategoricalProfile, NumericProfile
from mlwarden.middleware.drift.calibration import Calibration, alpha_per_test
from mlwarden.middleware.drift.descriptive import Description, describe
from mlwarden.middleware.drift.scale_tests import TestOutcome
from mlwarden.middleware.drift.scales import ScaleJudge
from mlwarden.middleware.drift.settings import DriftThresholds
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.health_report import DriftTest, DriftVerdict, FeatureScores

__all__ = ["DriftEvaluator", "DriftReport", "FeatureDrift", "evaluate_drift"]


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's figures and drift verdict."""

    name: str
    kind: str  # "numeric" | "categorical"
    rows: int  # rows of this feature in the window (nulls included)
    mean: float | None  # numeric only, over finite values; None when no value
    null_ratio: float
    scores: dict[str, float] = field(default_factory=dict)  # whole window: psi, ks | chi2
    pvalues: dict[str, float] = field(default_factory=dict)  # whole window: ks | chi2
    drifted: bool = False
    flagged_by: tuple[str, ...] = ()  # the tests that fired
    # test -> its outcome on the scale where it came closest to firing
    tests: dict[str, TestOutcome] = field(default_factory=dict)

    def for_report(self) -> FeatureScores:
        """The feature's entry in the health report: finite floats only, None where undefined."""
        return FeatureScores(
            name=self.name,
            kind=self.kind,
            rows=self.rows,
            mean=_finite_or_none(self.mean),
            null_ratio=_finite_or_none(self.null_ratio),
            scores={k: _finite_or_none(v) for k, v in self.scores.items()},
            pvalues={k: _finite_or_none(v) for k, v in self.pvalues.items()},
            tests=tuple(
                DriftTest(
                    test=t.test,
                    rows=t.rows,
                    statistic=_finite_or_none(t.statistic),
                    threshold=_finite_or_none(t.threshold),
                    ratio=_finite_or_none(t.ratio),
                    fired=t.fired,
                )
                for t in self.tests.values()
            ),
            drifted=self.drifted,
            flagged_by=self.flagged_by,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: finite floats only, None where a value is undefined."""
        return self.for_report().to_dict()


@dataclass(frozen=True, slots=True)
class DriftReport:
    """The result of one drift evaluation of every baseline feature."""

    evaluated_at: float  # wall-clock time (time.time()) of the evaluation
    rows: int  # rows in the window
    enough_data: bool  # False: too few rows for any verdict (nothing flagged)
    features: tuple[FeatureDrift, ...]
    scales: tuple[int, ...] = ()  # the scales whose results the verdict holds
    alpha_per_test: float | None = None
    expected_run_rows: int | None = None

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.drifted)

    @property
    def drift_detected(self) -> bool:
        return any(f.drifted for f in self.features)

    def verdict(self) -> DriftVerdict:
        """The health report's ``drift`` block (which computes the drift score)."""
        return DriftVerdict(
            evaluated=True,
            detected=self.drift_detected,
            drifted_features=self.drifted_features,
            evaluated_at=self.evaluated_at,
            rows=self.rows,
            enough_data=self.enough_data,
            scales=self.scales,
            alpha_per_test=self.alpha_per_test,
            expected_run_rows=self.expected_run_rows,
            features=tuple(f.for_report() for f in self.features),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: finite floats only, None where undefined."""
        return self.verdict().to_dict()


# One calibration per windows and settings: evaluate_drift may be called in a loop.
_CALIBRATIONS: weakref.WeakKeyDictionary[FeatureWindows, dict[DriftThresholds, Calibration]] = (
    weakref.WeakKeyDictionary()
)


def calibrate(baseline: BaselineProfile, settings: DriftThresholds) -> Calibration:
    """The calibration of ``baseline`` under ``settings``: the per-test level from the
    false-alarm budget, thresholds computed on demand."""
    numeric = sum(isinstance(f, NumericProfile) for f in baseline.features)
    categorical = sum(isinstance(f, CategoricalProfile) for f in baseline.features)
    alpha = alpha_per_test(
        expected_run_rows=settings.expected_run_rows,
        tests_per_evaluation=settings.tests_per_evaluation(numeric, categorical),
        scales=settings.scales,
    )
    return Calibration(baseline, alpha=alpha, scales=settings.scales, min_rows=settings.min_rows)


def calibration_for(windows: FeatureWindows, settings: DriftThresholds) -> Calibration:
    """The calibration of ``windows``' baseline under ``settings`` (made once, then shared)."""
    by_settings = _CALIBRATIONS.setdefault(windows, {})
    found = by_settings.get(settings)
    if found is None:
        found = by_settings[settings] = calibrate(windows.baseline, settings)
    return found


class DriftEvaluator:
    """Evaluates one windows object again and again, each scale when it has new rows."""

    #: The whole window's familiar figures are refreshed at most this often (seconds): they
    #: cost several times the tests, and do not decide.
    describe_every_s = 1.0

    def __init__(
        self,
        windows: FeatureWindows,
        settings: DriftThresholds,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.windows = windows
        self.settings = settings
        self.calibration = calibration_for(windows, settings)
        self._clock = clock
        self._described: tuple[float, list[Description]] | None = None
        baseline = windows.baseline
        #: The scales' tests and their standing outcomes.
        self.judge = ScaleJudge(
            self.calibration,
            settings,
            numeric_names=[f.name for f in baseline.features if isinstance(f, NumericProfile)],
            categorical_names=[
                f.name for f in baseline.features if isinstance(f, CategoricalProfile)
            ],
        )

    @property
    def last_tested(self) -> tuple[int, ...]:
        """The scales the last evaluation tested."""
        return self.judge.last_tested

    def fired_by_scale(self) -> dict[int, bool]:
        """Per active scale, whether any test fired in its latest evaluation."""
        return self.judge.fired_by_scale()

    def step(self, scale: int) -> int:
        """New rows after which ``scale`` is tested again."""
        return self.judge.step(scale)

    def rows_until_due(self) -> int:
        """New rows needed before the smallest scale is tested again (0: due now)."""
        return self.judge.rows_until_due(self.windows.added)

    def evaluate(self, now: float | None = None, *, every_scale: bool = False) -> DriftReport:
        """Test the scales that are due (all with ``every_scale``) and report on all.

        ``now`` is a reading of the windows' clock (for the age bound); the report's
        ``evaluated_at`` is always wall-clock time.
        """
        added = self.windows.added
        due = self.judge.due(added, every_scale=every_scale)
        rows, recent = self.windows.recent(due, self.calibration.numeric.cells, now)
        active = self.judge.judge(rows, added, recent)
        return self._report(rows, active, now, fresh=every_scale)

    def _describe(self, now: float | None, fresh: bool) -> list[Description]:
        at = self._clock()
        if fresh or self._described is None or at - self._described[0] >= self.describe_every_s:
            snapshot = self.windows.snapshot(now)
            self._described = (at, describe(snapshot, self.windows.baseline))
        return self._described[1]

    def _report(
        self, rows: int, active: list[int], now: float | None, *, fresh: bool
    ) -> DriftReport:
        best = self.judge.best(active)
        features = []
        for d in self._describe(now, fresh):
            tests = best.get(d.name, {})
            fired = tuple(test for test, outcome in tests.items() if outcome.fired)
            features.append(
                FeatureDrift(
                    name=d.name,
                    kind=d.kind,
                    rows=d.rows,
                    mean=d.mean,
                    null_ratio=d.null_ratio,
                    scores=d.scores,
                    pvalues=d.pvalues,
                    drifted=bool(fired),
                    flagged_by=fired,
                    tests=tests,
                )
            )
        return DriftReport(
            evaluated_at=time.time(),
            rows=rows,
            enough_data=bool(active),
            features=tuple(features),
            scales=tuple(active),
            alpha_per_test=self.calibration.alpha,
            expected_run_rows=self.settings.expected_run_rows,
        )


def evaluate_drift(
    windows: FeatureWindows, thresholds: DriftThresholds, *, now: float | None = None
) -> DriftReport:
    """Test every scale of the windows once and report (no state kept between calls)."""
    return DriftEvaluator(windows, thresholds).evaluate(now, every_scale=True)
