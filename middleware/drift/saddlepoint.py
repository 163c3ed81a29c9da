"""Tail probabilities of a sum of iid discrete scores, by the saddlepoint approximation.

A window's rank statistics are sums of ``n`` scores, one per row, each drawn from a discrete
distribution the baseline fixes (a score per grid cell, the cell's reference share). The
normal approximation of such a sum is poor exactly where a drift test needs it, a few sd out
in the tail, when the scores are skewed (the squared scores of the spread test are). The
Lugannani-Rice formula is accurate there to a few per cent of the tail probability itself
from a few dozen rows on; :func:`upper_critical_mean` inverts it for the threshold a test
needs. Every function works on all features at once: rows of ``shares`` and ``scores``.
Pure numpy and :mod:`math`; tests hold it against exact enumeration and simulation.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["normal_isf", "upper_critical_mean", "upper_tail"]

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def normal_isf(alpha: float) -> float:
    """The ``z`` with ``P(Z > z) = alpha`` for a standard normal ``Z``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha)


def _cumulants(
    shares: np.ndarray, scores: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K(t), K'(t), K''(t) of one score, per row, computed without overflow."""
    exponent = t[:, None] * scores
    top = np.max(np.where(shares > 0, exponent, -np.inf), axis=1)
    weights = shares * np.exp(exponent - top[:, None])
    total = weights.sum(axis=1)
    mean = (weights * scores).sum(axis=1) / total
    second = (weights * scores * scores).sum(axis=1) / total
    return top + np.log(total), mean, np.maximum(second - mean * mean, 0.0)


def upper_tail(shares: np.ndarray, scores: np.ndarray, n: int, t: np.ndarray) -> np.ndarray:
    """``P(mean of n scores >= K'(t))`` for each row, at saddlepoints ``t > 0``.

    Lugannani-Rice: ``Q(w) + phi(w) (1/u - 1/w)`` with ``w = sqrt(2n(t K' - K))`` and
    ``u = t sqrt(n K'')``. Given as a function of ``t`` rather than of the mean because the
    mean is monotone in ``t``: solving for a threshold is then a search over ``t``.
    """
    cgf, mean, variance = _cumulants(shares, scores, t)
    w = np.sqrt(np.maximum(2.0 * n * (t * mean - cgf), 1e-300))
    u = t * np.sqrt(n * variance)
    with np.errstate(divide="ignore", invalid="ignore"):
        correction = np.exp(-0.5 * w * w) / _SQRT2PI * (1.0 / u - 1.0 / w)
    tail = 0.5 * _erfc(w / _SQRT2).astype(np.float64) + correction
    # Where the score's distribution has all but collapsed on its largest value (u -> 0)
    # the formula is meaningless; the tail is then below any threshold we solve for.
    return np.where(np.isfinite(tail), np.clip(tail, 0.0, 1.0), 0.0)


def upper_critical_mean(
    shares: np.ndarray, scores: np.ndarray, n: int, alpha: float, *, iterations: int = 48
) -> np.ndarray:
    """Per row, the mean of ``n`` scores that is exceeded with probability ``alpha``.

    ``+inf`` where even the largest score on every row is more likely than ``alpha`` (a
    window too small for the test at that level: it can never fire). Bisection over the
    saddlepoint ``t``, all rows together.
    """
    shares = np.asarray(shares, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    rows = shares.shape[0]
    if rows == 0:
        return np.zeros(0)
    highest = np.max(np.where(shares > 0, scores, -np.inf), axis=1)
    top_share = np.where(scores == highest[:, None], shares, 0.0).sum(axis=1)
    with np.errstate(divide="ignore"):
        reachable = n * np.log(top_share) < math.log(alpha)
    low = np.zeros(rows)
    high = np.ones(rows)
    for _ in range(60):  # widen until the tail at ``high`` is below alpha
        tail = upper_tail(shares, scores, n, high)
        wide = (tail < alpha) | ~reachable
        if wide.all():
            break
        high = np.where(wide, high, high * 2.0)
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        above = upper_tail(shares, scores, n, middle) > alpha
        low = np.where(above, middle, low)
        high = np.where(above, high, middle)
    _, critical, _ = _cumulants(shares, scores, high)
    return np.where(reachable, critical, np.inf)
