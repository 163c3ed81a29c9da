"""The familiar figures of a whole window, reported beside the verdict but not deciding it.

PSI, the KS distance and the chi-square statistic with their textbook p-values, over every
row the window holds, plus each feature's mean and null ratio. Dashboards and policies know
these scales (PSI above 0.2 "drifted"); but a fixed PSI threshold is blind to the window's
size, so the verdict comes from :mod:`~mlwarden.middleware.drift.scale_tests`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlwarden.middleware.baseline import BaselineProfile, CategoricalProfile
from mlwarden.middleware.drift.scores import EPS, chi2_test, ks_pvalue, psi
from mlwarden.middleware.features import CategoricalCounts, NumericTable, WindowSnapshot

__all__ = ["Description", "describe"]


@dataclass(slots=True)
class Description:
    """One feature over the whole window."""

    name: str
    kind: str
    rows: int
    mean: float | None
    null_ratio: float
    scores: dict[str, float]  # psi, ks | chi2
    pvalues: dict[str, float]  # ks | chi2


def _numeric(table: NumericTable, baseline: BaselineProfile, rows: int) -> dict[str, Description]:
    """PSI and KS of every numeric feature at once, on the padded table.

    The same arithmetic as :func:`psi` and :func:`ks_statistic_binned` (the tests hold the
    two paths equal), without a dozen small numpy calls per feature.
    """
    out: dict[str, Description] = {}
    if not table.names:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        present = table.bins.sum(axis=1)
        q = np.maximum(table.bins / present[:, None], EPS)
        p = np.maximum(table.reference_proportions, EPS)
        psis = np.where(present > 0, np.sum((q - p) * np.log(q / p), axis=1), np.nan)
        window_cdf = np.cumsum(table.grid, axis=1) / table.finite[:, None]
        distances = np.max(np.abs(window_cdf - table.reference_cdf), axis=1)
        distances = np.where(table.finite > 0, distances, np.nan)
    for i, name in enumerate(table.names):
        finite = int(table.finite[i])
        d = float(distances[i])
        out[name] = Description(
            name=name,
            kind="numeric",
            rows=rows,
            mean=float(table.totals[i]) / finite if finite else None,
            null_ratio=int(table.nulls[i]) / rows if rows else math.nan,
            scores={"psi": float(psis[i]), "ks": d},
            pvalues={"ks": ks_pvalue(d, finite, baseline.feature(name).count)},
        )
    return out


def _categorical(counts: CategoricalCounts, profile: CategoricalProfile) -> Description:
    result = chi2_test(profile.proportions, counts.counts)
    rows = counts.rows
    return Description(
        name=counts.name,
        kind="categorical",
        rows=rows,
        mean=None,
        null_ratio=counts.nulls / rows if rows else math.nan,
        scores={"psi": psi(profile.proportions, counts.counts), "chi2": result.statistic},
        pvalues={"chi2": result.pvalue},
    )


def describe(snapshot: WindowSnapshot, baseline: BaselineProfile) -> list[Description]:
    """Every feature's figures over the snapshot, in baseline order."""
    numeric = _numeric(snapshot.numeric, baseline, snapshot.rows)
    out = []
    for counts in snapshot.features:
        if isinstance(counts, CategoricalCounts):
            profile = baseline.feature(counts.name)
            assert isinstance(profile, CategoricalProfile)
            out.append(_categorical(counts, profile))
        else:
            out.append(numeric[counts.name])
    return out
