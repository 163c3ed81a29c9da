"""The drift verdict: the thresholds, and what one evaluation of the windows found.

:func:`evaluate_drift` reads a window's counts, scores every feature
(:mod:`~mlwarden.middleware.drift.scores`) and decides:

- every p-value of one evaluation (KS per numeric feature, chi-square per categorical one) is
  one family, corrected with ``correction`` (Holm by default): twenty features tested every
  few seconds would otherwise raise false alarms all day;
- a significant p-value is not enough. With 10,000 rows a shift of no practical consequence
  is "significant", so KS also needs ``D >= ks_min_statistic`` and chi-square needs the total
  variation distance (the largest difference in probability of any set of categories, the
  categorical analogue of D) ``>= chi2_min_distance``;
- PSI, a distance without a p-value, flags above ``psi``;
- nothing is flagged with fewer than ``min_rows`` rows in the window, nor for a feature with
  fewer than ``min_rows`` values present.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from mlwarden.middleware.baseline import BaselineProfile, CategoricalProfile
from mlwarden.middleware.drift.scores import (
    CORRECTIONS,
    EPS,
    adjust_pvalues,
    chi2_test,
    ks_pvalue,
    psi,
    total_variation,
)
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.features import CategoricalCounts, FeatureWindows, NumericTable
from mlwarden.middleware.health_report import DriftVerdict, FeatureScores

__all__ = ["DriftReport", "DriftThresholds", "FeatureDrift", "evaluate_drift"]

_NUMERIC_METHODS = ("psi", "ks")
_CATEGORICAL_METHODS = ("psi", "chi2")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """When a feature counts as drifted; validated on creation (keys named ``drift.*``)."""

    psi: float = 0.2
    ks_pvalue: float = 0.05
    chi2_pvalue: float = 0.05
    ks_min_statistic: float = 0.1
    chi2_min_distance: float = 0.1
    min_rows: int = 100
    correction: str = "holm"
    numeric_methods: tuple[str, ...] = _NUMERIC_METHODS
    categorical_methods: tuple[str, ...] = _CATEGORICAL_METHODS

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not _is_number(self.psi) or self.psi <= 0:
            problems.append(f"drift.psi: must be > 0, got {self.psi!r}")
        for key in ("ks_pvalue", "chi2_pvalue"):
            value = getattr(self, key)
            if not _is_number(value) or not 0 < value < 1:
                problems.append(f"drift.{key}: must be between 0 and 1 (exclusive), got {value!r}")
        for key in ("ks_min_statistic", "chi2_min_distance"):
            value = getattr(self, key)
            if not _is_number(value) or not 0 <= value <= 1:
                problems.append(f"drift.{key}: must be between 0 and 1, got {value!r}")
        if (
            not isinstance(self.min_rows, int)
            or isinstance(self.min_rows, bool)
            or self.min_rows < 1
        ):
            problems.append(f"drift.min_rows: must be an integer >= 1, got {self.min_rows!r}")
        if self.correction not in CORRECTIONS:
            problems.append(
                f"drift.correction: must be one of {', '.join(CORRECTIONS)}, "
                f"got {self.correction!r}"
            )
        for key, allowed in (
            ("numeric_methods", _NUMERIC_METHODS),
            ("categorical_methods", _CATEGORICAL_METHODS),
        ):
            value = getattr(self, key)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, key, value)
            if (
                not isinstance(value, tuple)
                or not all(m in allowed for m in value)
                or len(set(value)) != len(value)
            ):
                problems.append(
                    f"drift.{key}: must be a list of distinct methods from "
                    f"{', '.join(allowed)}, got {value!r}"
                )
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftThresholds:
        """Build from a config block; unknown keys and bad values are reported together."""
        allowed = [f.name for f in fields(cls)]
        problems = [
            f"drift.{key}: unknown key (allowed: {', '.join(allowed)})"
            for key in data
            if key not in allowed
        ]
        known = {k: v for k, v in data.items() if k in allowed}
        try:
            thresholds = cls(**known)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return thresholds


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's statistics and drift verdict over the window."""

    name: str
    kind: str  # "numeric" | "categorical"
    rows: int  # rows of this feature in the window (nulls included)
    mean: float | None  # numeric only, over finite values; None when no value
    null_ratio: float
    scores: dict[str, float] = field(default_factory=dict)  # method -> statistic (psi, ks, chi2)
    pvalues: dict[str, float] = field(default_factory=dict)  # method -> raw p-value (ks, chi2)
    drifted: bool = False
    flagged_by: tuple[str, ...] = ()
    # method -> p-value after the correction across every test of the evaluation
    adjusted_pvalues: dict[str, float] = field(default_factory=dict)

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
            adjusted_pvalues={k: _finite_or_none(v) for k, v in self.adjusted_pvalues.items()},
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
            features=tuple(f.for_report() for f in self.features),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: finite floats only, None where undefined."""
        return {
            "evaluated_at": self.evaluated_at,
            "rows": self.rows,
            "enough_data": self.enough_data,
            "drift_detected": self.drift_detected,
            "drifted_features": list(self.drifted_features),
            "features": [f.to_dict() for f in self.features],
        }


@dataclass(slots=True)
class _Pending:
    """A feature's scores before the family of p-values is corrected."""

    name: str
    kind: str
    rows: int
    present: int  # values the tests ran on (KS: finite ones)
    mean: float | None
    null_ratio: float
    scores: dict[str, float]
    pvalues: dict[str, float]
    effect: dict[str, float]  # method -> effect size gated on (KS: D, chi2: TVD)


def _numeric(
    table: NumericTable, baseline: BaselineProfile, rows: int, methods: tuple[str, ...]
) -> dict[str, _Pending]:
    """PSI and KS of every numeric feature at once, on the padded table.

    The same arithmetic as :func:`psi` and :func:`ks_statistic_binned` (the tests hold the
    two paths equal), without a dozen small numpy calls per feature.
    """
    features = len(table.names)
    scores: list[dict[str, float]] = [{} for _ in range(features)]
    pvalues: list[dict[str, float]] = [{} for _ in range(features)]
    effect: list[dict[str, float]] = [{} for _ in range(features)]
    with np.errstate(divide="ignore", invalid="ignore"):
        if "psi" in methods and features:
            present = table.bins.sum(axis=1)
            q = np.maximum(table.bins / present[:, None], EPS)
            p = np.maximum(table.reference_proportions, EPS)
            values = np.where(present > 0, np.sum((q - p) * np.log(q / p), axis=1), np.nan)
            for i, value in enumerate(values.tolist()):
                scores[i]["psi"] = value
        if "ks" in methods and features:
            window_cdf = np.cumsum(table.grid, axis=1) / table.finite[:, None]
            distances = np.max(np.abs(window_cdf - table.reference_cdf), axis=1)
            distances = np.where(table.finite > 0, distances, np.nan)
            for i, (d, n) in enumerate(zip(distances.tolist(), table.finite.tolist(), strict=True)):
                profile = baseline.feature(table.names[i])
                scores[i]["ks"] = effect[i]["ks"] = d
                pvalues[i]["ks"] = ks_pvalue(d, n, profile.count)
    out = {}
    for i, name in enumerate(table.names):
        finite = int(table.finite[i])
        out[name] = _Pending(
            name=name,
            kind="numeric",
            rows=rows,
            present=finite,
            mean=float(table.totals[i]) / finite if finite else None,
            null_ratio=int(table.nulls[i]) / rows if rows else math.nan,
            scores=scores[i],
            pvalues=pvalues[i],
            effect=effect[i],
        )
    return out


def _categorical(
    counts: CategoricalCounts, profile: CategoricalProfile, methods: tuple[str, ...]
) -> _Pending:
    scores: dict[str, float] = {}
    pvalues: dict[str, float] = {}
    effect: dict[str, float] = {}
    if "psi" in methods:
        scores["psi"] = psi(profile.proportions, counts.counts)
    if "chi2" in methods:
        result = chi2_test(profile.proportions, counts.counts)
        scores["chi2"] = result.statistic
        pvalues["chi2"] = result.pvalue
        effect["chi2"] = total_variation(profile.proportions, counts.counts)
    rows = counts.rows
    return _Pending(
        name=counts.name,
        kind="categorical",
        rows=rows,
        present=rows - counts.nulls,
        mean=None,
        null_ratio=counts.nulls / rows if rows else math.nan,
        scores=scores,
        pvalues=pvalues,
        effect=effect,
    )


def evaluate_drift(
    windows: FeatureWindows, thresholds: DriftThresholds, *, now: float | None = None
) -> DriftReport:
    """Score every feature's window against the baseline and decide which ones drifted.

    ``now`` is a reading of the windows' clock (for the age bound); the report's
    ``evaluated_at`` is always wall-clock time.
    """
    t = thresholds
    snapshot = windows.snapshot(now)
    baseline = windows.baseline
    numeric = _numeric(snapshot.numeric, baseline, snapshot.rows, t.numeric_methods)
    pending: list[_Pending] = []
    for counts in snapshot.features:
        if isinstance(counts, CategoricalCounts):
            profile = baseline.feature(counts.name)
            assert isinstance(profile, CategoricalProfile)
            pending.append(_categorical(counts, profile, t.categorical_methods))
        else:
            pending.append(numeric[counts.name])

    family = [(i, method, p) for i, f in enumerate(pending) for method, p in f.pvalues.items()]
    adjusted = adjust_pvalues([p for _, _, p in family], t.correction)
    corrected: list[dict[str, float]] = [{} for _ in pending]
    for (i, method, _), value in zip(family, adjusted, strict=True):
        corrected[i][method] = float(value)

    enough = snapshot.rows >= t.min_rows
    limits = {"ks": (t.ks_pvalue, t.ks_min_statistic), "chi2": (t.chi2_pvalue, t.chi2_min_distance)}
    features = []
    for f, adj in zip(pending, corrected, strict=True):
        flagged: list[str] = []
        if enough and f.present >= t.min_rows:
            for method, score in f.scores.items():
                if method == "psi":
                    if score > t.psi:
                        flagged.append(method)
                    continue
                alpha, min_effect = limits[method]
                if adj[method] < alpha and f.effect[method] >= min_effect:
                    flagged.append(method)
        features.append(
            FeatureDrift(
                name=f.name,
                kind=f.kind,
                rows=f.rows,
                mean=f.mean,
                null_ratio=f.null_ratio,
                scores=f.scores,
                pvalues=f.pvalues,
                drifted=bool(flagged),
                flagged_by=tuple(flagged),
                adjusted_pvalues=adj,
            )
        )
    return DriftReport(
        evaluated_at=time.time(), rows=snapshot.rows, enough_data=enough, features=tuple(features)
    )
