"""Drift of the feature windows against the baseline (contract stub; being written)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DriftReport", "FeatureDrift"]


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's statistics and drift verdict over the window."""

    name: str
    kind: str                      # "numeric" | "categorical"
    rows: int                      # rows of this feature in the window (nulls included)
    mean: float | None             # numeric only, over finite values; None when no value
    null_ratio: float
    scores: dict[str, float] = field(default_factory=dict)   # method -> statistic (psi, ks, chi2)
    pvalues: dict[str, float] = field(default_factory=dict)  # method -> raw p-value (ks, chi2)
    drifted: bool = False
    flagged_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftReport:
    """The result of one drift evaluation of every baseline feature."""

    evaluated_at: float            # wall-clock time (time.time()) of the evaluation
    rows: int                      # rows in the window
    enough_data: bool              # False: too few rows for any verdict (nothing flagged)
    features: tuple[FeatureDrift, ...]

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.drifted)

    @property
    def drift_detected(self) -> bool:
        return any(f.drifted for f in self.features)
