"""Exact samples of attempts per interval: what the canary's rank test needs.

The per-second windows keep latency as a log-scaled histogram, whose neighbouring bounds
already differ by a third: comparing two versions' p99s from it rolls back healthy
candidates. :class:`IntervalSamples` listens to the proxy and keeps, for each watched
upstream and for the current interval, the exact count of attempts and errors and a uniform
reservoir (Vitter's algorithm R) of the latencies of the answered ones, bounded by
``reservoir_size`` whatever the traffic, from the last :meth:`IntervalSamples.reset` on (the
canary resets at each step, so that evidence accumulates over the intervals of one step).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.signals.outcomes import ERROR_OUTCOMES

__all__ = ["IntervalSample", "IntervalSamples"]


@dataclass(frozen=True, slots=True)
class IntervalSample:
    """One upstream's interval: attempts, errors, and latencies of (a sample of) the rest."""

    attempts: int
    errors: int
    latencies_s: np.ndarray


class _Reservoir:
    __slots__ = ("attempts", "errors", "latencies", "seen")

    def __init__(self) -> None:
        self.attempts = 0
        self.errors = 0
        self.seen = 0  # answered attempts offered to the reservoir
        self.latencies: list[float] = []


class IntervalSamples(Listener):
    """Counts and latency reservoirs of ``upstreams`` since the last :meth:`take`."""

    def __init__(
        self,
        upstreams: Iterable[str],
        *,
        reservoir_size: int = 4000,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
        self.reservoir_size = reservoir_size
        self._rng = rng
        self._current = {name: _Reservoir() for name in upstreams}

    def attempt_finished(self, upstream: str, outcome: str, duration_s: float) -> None:
        r = self._current.get(upstream)
        if r is None:
            return
        r.attempts += 1
        if outcome in ERROR_OUTCOMES:
            r.errors += 1
            return
        r.seen += 1
        if len(r.latencies) < self.reservoir_size:
            r.latencies.append(duration_s)
        else:
            slot = int(self._rng() * r.seen)
            if slot < self.reservoir_size:
                r.latencies[slot] = duration_s

    def read(self, upstream: str) -> IntervalSample:
        """What ``upstream`` did since the last :meth:`reset`."""
        r = self._current.get(upstream)
        if r is None:
            return IntervalSample(0, 0, np.empty(0))
        return IntervalSample(r.attempts, r.errors, np.asarray(r.latencies, dtype=float))

    def reset(self) -> None:
        """Start counting afresh (a new canary step)."""
        for name in self._current:
            self._current[name] = _Reservoir()

    def __repr__(self) -> str:
        return f"IntervalSamples({list(self._current)!r}, reservoir_size={self.reservoir_size})"
