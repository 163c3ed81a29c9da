"""Windows of what each upstream did, from the proxy's own events, and the signals read from them.

:class:`UpstreamWindows` listens to the proxy (:class:`~mlwarden.sidecar.listeners.Listener`)
and keeps, per upstream, one bucket per second over a bounded horizon: attempts, errors and a
log-scaled latency histogram. Canary analysis and policies ask it for an upstream's request
count, error rate and latency quantiles over the last ``window_s`` seconds.

An *attempt* is what is counted, not a client request: when the candidate fails and the
stable version answers the client, the candidate's failure must still count against it.
Errors are 5xx answers and answers that never came (connect errors, timeouts, resets).

Memory is fixed: ``horizon_s`` buckets per upstream, each 4 numbers and a histogram of
:data:`LATENCY_BOUNDS` counters, whatever the traffic.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.signals.outcomes import ERROR_OUTCOMES
from mlwarden.sidecar.signals.source import Signal, SignalSource

__all__ = ["LATENCY_BOUNDS", "UpstreamWindows", "WindowSignals", "WindowStats"]

#: Latency histogram bounds: 0.1 ms to ~100 s, 8 buckets per decade (quantiles within ~15%).
LATENCY_BOUNDS: tuple[float, ...] = tuple(10 ** (e / 8) * 1e-4 for e in range(0, 8 * 6 + 1))


class WindowStats:
    """Counts over a window of one upstream."""

    __slots__ = ("errors", "latency_counts", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS) + 1)

    @property
    def error_rate(self) -> float | None:
        """Errors / attempts, or None without any attempt."""
        return self.errors / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        """The latency quantile ``q`` (0-1) from the histogram (bucket upper bound), or None."""
        total = sum(self.latency_counts)
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index, count in enumerate(self.latency_counts):
            seen += count
            if seen >= rank:
                return LATENCY_BOUNDS[index] if index < len(LATENCY_BOUNDS) else math.inf
        return math.inf  # pragma: no cover - the loop always reaches rank


class _Bucket:
    __slots__ = ("errors", "latency", "latency_sum", "requests", "second")

    def __init__(self) -> None:
        self.second = -1
        self.requests = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)

    def reset(self, second: int) -> None:
        self.second = second
        self.requests = self.errors = 0
        self.latency_sum = 0.0
        for i in range(len(self.latency)):
            self.latency[i] = 0


class UpstreamWindows(Listener):
    """Per-upstream per-second buckets of attempts over ``horizon_s`` seconds (max window).

    ``upstreams`` bounds the names kept (others are ignored): label-like names come from the
    configuration only. Thread-safe: the proxy runs in the event loop, readers may not.
    """

    def __init__(
        self,
        upstreams: Iterable[str],
        *,
        horizon_s: int = 900,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if horizon_s < 1:
            raise ValueError(f"horizon_s must be >= 1, got {horizon_s}")
        self.horizon_s = int(horizon_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._rings: dict[str, list[_Bucket]] = {
            name: [_Bucket() for _ in range(self.horizon_s)] for name in upstreams
        }

    # -- listening ----------------------------------------------------------------------------

    def attempt_finished(self, upstream: str, outcome: str, duration_s: float) -> None:
        ring = self._rings.get(upstream)
        if ring is None:
            return
        second = int(self._clock())
        index = bisect_left(LATENCY_BOUNDS, duration_s)
        with self._lock:
            bucket = ring[second % self.horizon_s]
            if bucket.second != second:
                bucket.reset(second)
            bucket.requests += 1
            if outcome in ERROR_OUTCOMES:
                bucket.errors += 1
            bucket.latency_sum += duration_s
            bucket.latency[index] += 1

    # -- reading ------------------------------------------------------------------------------

    def stats(self, upstream: str, window_s: float) -> WindowStats:
        """Counts of ``upstream`` over the last ``window_s`` seconds (capped at the horizon)."""
        out = WindowStats()
        ring = self._rings.get(upstream)
        if ring is None:
            return out
        now = int(self._clock())
        oldest = now - min(math.ceil(window_s), self.horizon_s) + 1
        with self._lock:
            for bucket in ring:
                if oldest <= bucket.second <= now:
                    out.requests += bucket.requests
                    out.errors += bucket.errors
                    out.latency_sum += bucket.latency_sum
                    for i, count in enumerate(bucket.latency):
                        if count:
                            out.latency_counts[i] += count
        return out

    def forget(self, upstream: str) -> None:
        """Drop what was counted for ``upstream`` (a canary that starts afresh)."""
        ring = self._rings.get(upstream)
        if ring is not None:
            with self._lock:
                for bucket in ring:
                    bucket.second = -1

    @property
    def upstreams(self) -> tuple[str, ...]:
        return tuple(self._rings)

    def __repr__(self) -> str:
        return f"UpstreamWindows(upstreams={list(self._rings)!r}, horizon_s={self.horizon_s})"


class WindowSignals(SignalSource):
    """The sidecar's own figures of an upstream: its attempts over the window."""

    SIGNALS = (
        Signal("requests", "number", "attempts in the window"),
        Signal("error_rate", "number", "5xx and no-answer share of them", function="error_rate_of"),
        Signal("p50_latency_seconds", "number", "median attempt latency"),
        Signal("p95_latency_seconds", "number", "95th percentile attempt latency"),
        Signal("p99_latency_seconds", "number", "99th percentile attempt latency"),
    )

    __slots__ = ("windows",)

    def __init__(self, windows: UpstreamWindows) -> None:
        self.windows = windows

    def read(self, target: str, window_s: float) -> dict[str, float | None]:
        stats = self.windows.stats(target, window_s)
        return {
            "requests": float(stats.requests),
            "error_rate": stats.error_rate,
            "p50_latency_seconds": stats.quantile(0.5),
            "p95_latency_seconds": stats.quantile(0.95),
            "p99_latency_seconds": stats.quantile(0.99),
        }
