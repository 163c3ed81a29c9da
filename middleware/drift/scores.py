"""The textbook drift statistics: PSI, KS and chi-square with their p-values.

Pure functions on counts (numpy and :mod:`math` only; the tests hold them against scipy). KS
works on binned counts: the window's cells on the baseline's fine grid against the reference
ECDF at the grid points. They describe the whole window
(:mod:`~mlwarden.middleware.drift.descriptive`); the calibrated tests decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "EPS",
    "Chi2Result",
    "chi2_sf",
    "chi2_test",
    "kolmogorov_sf",
    "ks_pvalue",
    "ks_statistic_binned",
    "psi",
]

#: The floor of a share in PSI and of an expected share in chi-square.
EPS = 1e-4


def psi(
    reference_proportions: Sequence[float] | np.ndarray,
    counts: Sequence[float] | np.ndarray,
    eps: float = EPS,
) -> float:
    """Population stability index of window ``counts`` against the reference shares.

    ``sum((q - p) * ln(q / p))`` with ``p``, ``q`` the reference and window shares, each
    floored at ``eps`` so that an empty bin costs a large but finite amount. NaN when the
    window is empty.
    """
    p = np.asarray(reference_proportions, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if p.shape != c.shape:
        raise ValueError(f"shapes differ: reference {p.shape}, counts {c.shape}")
    n = c.sum()
    if n <= 0:
        return math.nan
    p = np.maximum(p, eps)
    q = np.maximum(c / n, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic_binned(
    reference_cdf: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray
) -> float:
    """KS distance between a window and the reference, evaluated on the reference's grid.

    ``reference_cdf[j]`` is the reference ECDF at grid point ``u_j``; ``counts[j]`` the window
    values in ``(u_{j-1}, u_j]`` and ``counts[-1]`` those above the last point. Both ECDFs are
    exact at the grid points, so the result ``D_grid`` is a lower bound of the two-sample KS
    statistic ``D`` and ``D - D_grid`` is at most the reference mass strictly between two
    neighbouring points: about ``1 / (len(grid) - 1)`` for continuous data (0.01 with the
    default 101 quantiles), zero for discrete data with fewer distinct values than points.
    NaN when the window is empty.
    """
    ref = np.asarray(reference_cdf, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (ref.size + 1,):
        raise ValueError(f"counts must have {ref.size + 1} cells, got shape {c.shape}")
    n = c.sum()
    if n <= 0:
        return math.nan
    window_cdf = np.cumsum(c[:-1]) / n
    return float(np.max(np.abs(window_cdf - ref)))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit of sqrt(n)·D)."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        # The theta-function form converges fast for small x, where the other does not.
        w = -(math.pi**2) / (8 * x * x)
        total = sum(math.exp((2 * k - 1) ** 2 * w) for k in range(1, 8))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / x * total))
    w = -2 * x * x
    total = 0.0
    for k in range(1, 101):
        term = math.exp(k * k * w)
        total += term if k % 2 else -term
        if term < 1e-17 * total:
            break
    return min(1.0, max(0.0, 2 * total))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Two-sample KS p-value for distance ``d`` between samples of ``n`` and ``m`` values.

    The asymptotic Kolmogorov distribution with Stephens' small-sample correction,
    ``lambda = (sqrt(e) + 0.12 + 0.11 / sqrt(e)) * d`` with ``e = n m / (n + m)``: within a
    few per cent of the exact p-value from a few dozen values on. NaN when undefined.
    """
    if not (n > 0 and m > 0) or not math.isfinite(d):
        return math.nan
    root = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def chi2_sf(x: float, dof: float) -> float:
    """Upper tail of the chi-square distribution: the regularized incomplete gamma Q(k/2, x/2).

    A power series where ``x < a + 1`` (there Q is not small, so ``1 - P`` keeps its
    precision) and Lentz's continued fraction elsewhere (precise in relative terms deep in the
    tail, where p-values are tiny).
    """
    if not dof > 0 or math.isnan(x):
        raise ValueError(f"chi2_sf needs dof > 0 and a number x, got x={x!r}, dof={dof!r}")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    a = 0.5 * dof
    z = 0.5 * x
    log_prefix = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= z / ap
            total += term
            if term < total * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = z + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_prefix) * h)


class Chi2Result(NamedTuple):
    statistic: float
    dof: int
    pvalue: float


def chi2_test(
    reference_proportions: Sequence[float] | np.ndarray,
    counts: Sequence[float] | np.ndarray,
    eps: float = EPS,
) -> Chi2Result:
    """Pearson's goodness-of-fit of window ``counts`` to the reference shares.

    Expected counts are ``n`` times the reference shares floored at ``eps`` and renormalised,
    so that a category the reference never saw gives a large but finite statistic. A cell
    empty in both (the "other" share of a baseline with few categories) is a structural zero:
    it is left out and does not count towards ``dof = cells - 1``.
    """
    p = np.asarray(reference_proportions, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if p.shape != c.shape:
        raise ValueError(f"shapes differ: reference {p.shape}, counts {c.shape}")
    n = c.sum()
    keep = (p > 0) | (c > 0)
    dof = int(keep.sum()) - 1
    if n <= 0 or dof < 1:
        return Chi2Result(math.nan, max(dof, 0), math.nan)
    shares = np.maximum(p[keep], eps)
    expected = n * shares / shares.sum()
    statistic = float(np.sum((c[keep] - expected) ** 2 / expected))
    return Chi2Result(statistic, dof, chi2_sf(statistic, dof))
