"""Lean counters, gauges and histograms for the per-request metrics.

prometheus_client's metric objects validate and lock per call and walk every bucket of a
histogram with two locked increments (measured: about 1.3 µs an observation, 0.5 µs an
increment); a model request records seven of them. These keep the same ``labels(...)`` /
``inc`` / ``observe`` interface and the same exposition, at a fraction of the cost: one lock
per call and a binary search for the bucket. They are exposed through one collector per
registry, whose ``describe`` lets the registry reject duplicate names as it does for its own.

Under prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) values must
live in its shared files, so :func:`multiprocess_mode` tells the caller to use
prometheus_client's own classes instead.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

__all__ = ["FastCounter", "FastFamilies", "FastGauge", "FastHistogram", "multiprocess_mode"]


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in shared files for several processes."""
    old_name = "prometheus_multiproc_dir"  # still honoured by prometheus_client
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(old_name))


class _Family:
    """A metric name, its help and label names, and its children by label values."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> object:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._child())
        return child

    def _child(self) -> object:
        raise NotImplementedError

    def _items(self) -> list[tuple[tuple[str, ...], object]]:
        with self._lock:
            return list(self._children.items())

    def describe(self) -> Metric:
        return self._family()

    def _family(self) -> Metric:
        raise NotImplementedError

    def collect(self) -> Metric:
        raise NotImplementedError


class _CounterChild:
    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only increase")
        with self._lock:
            self._value += amount

    def get(self) -> float:
        return self._value


class FastCounter(_Family):
    kind = "counter"

    def _child(self) -> _CounterChild:
        return _CounterChild()

    def _family(self) -> CounterMetricFamily:
        # CounterMetricFamily adds "_total" itself; the name is given without it.
        return CounterMetricFamily(
            self.name.removesuffix("_total"), self.documentation, labels=self.labelnames
        )

    def collect(self) -> CounterMetricFamily:
        family = self._family()
        for values, child in self._items():
            family.add_metric(values, child.get())  # type: ignore[attr-defined]
        return family


class _GaugeChild:
    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value -= amount

    def set(self, value: float) -> None:
        self._value = float(value)

    def get(self) -> float:
        return self._value


class FastGauge(_Family):
    kind = "gauge"

    def _child(self) -> _GaugeChild:
        return _GaugeChild()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> GaugeMetricFamily:
        family = self._family()
        for values, child in self._items():
            family.add_metric(values, child.get())  # type: ignore[attr-defined]
        return family


class _HistogramChild:
    __slots__ = ("_bounds", "_counts", "_exemplars", "_lock", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # finite upper bounds; the last bucket (+Inf) is implicit
        self._counts = [0] * (len(bounds) + 1)
        self._exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, exemplar: dict[str, str] | None = None) -> None:
        # bisect_left: the first bound >= value, as Prometheus buckets count value <= le.
        index = bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            if exemplar:
                self._exemplars[index] = Exemplar(exemplar, value, time.time())

    def snapshot(self) -> tuple[list[int], float, list[Exemplar | None]]:
        with self._lock:
            return list(self._counts), self._sum, list(self._exemplars)


class FastHistogram(_Family):
    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = tuple(float(b) for b in buckets if b != float("inf"))
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"{name}: buckets must be increasing, got {buckets!r}")
        self.bounds = bounds
        self._les = [_le(b) for b in bounds] + ["+Inf"]

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> HistogramMetricFamily:
        family = self._family()
        for values, child in self._items():
            counts, total, exemplars = child.snapshot()  # type: ignore[attr-defined]
            buckets: list[tuple] = []
            cumulative = 0
            for le, count, exemplar in zip(self._les, counts, exemplars, strict=True):
                cumulative += count
                buckets.append((le, cumulative, exemplar) if exemplar else (le, cumulative))
            family.add_metric(values, buckets, total)
        return family


def _le(bound: float) -> str:
    # The same spelling prometheus_client gives its own buckets ("0.005", "1.0", "10.0").
    return repr(float(bound))


class FastFamilies(Collector):
    """The collector that exposes a registry's fast families."""

    def __init__(self) -> None:
        self._families: list[_Family] = []

    def add(self, family: _Family) -> None:
        self._families.append(family)

    def describe(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.describe()

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()
