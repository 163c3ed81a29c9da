"""The lean per-request metrics expose exactly what prometheus_client's own would: the same
bytes, ``_created`` samples and exemplars included, in the text format and in OpenMetrics."""

from __future__ import annotations

import time
from typing import Any

import prometheus_client.metrics
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from mlwarden.middleware.fastmetrics import (
    FastCounter,
    FastFamilies,
    FastGauge,
    FastHistogram,
)
from mlwarden.middleware.metrics import MonitorMetrics

pytestmark = pytest.mark.floor

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
# Below the first bound, on bounds, between them, beyond the last.
VALUES = (0.0005, 0.001, 0.0011, 0.05, 0.1, 0.7, 1.0, 9.9, 10.0, 12.0, 1e9)
TRACE = {"trace_id": "ab" * 16}
T0 = 1_700_000_000.25


class WallClock:
    """``time.time`` for both implementations at once: the same instants give the same
    ``_created`` values and exemplar timestamps, and a value taken at the wrong moment
    (at scrape rather than at creation) shows as a difference."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock(T0)
    monkeypatch.setattr(time, "time", clock)
    return clock


def series(metric: Any, *values: str) -> Any:
    """A child by label values; an unlabelled prometheus_client metric is its own child."""
    if values or isinstance(metric, FastCounter | FastGauge | FastHistogram):
        return metric.labels(*values)
    return metric


def lean_and_standard() -> tuple[CollectorRegistry, list[Any], CollectorRegistry, list[Any]]:
    """The same definitions twice, each registered in the same order."""
    lean_registry, standard_registry = CollectorRegistry(), CollectorRegistry()
    lean: list[Any] = [
        FastHistogram("h_seconds", "A histogram.", ("a",), BUCKETS),
        FastCounter("c_total", "A counter.", ("a",)),
        FastGauge("g", "A gauge.", ("a",)),
        FastCounter("plain_total", "Without labels.", ()),
        FastHistogram("below_zero", "Buckets below 0: no _sum.", (), (-1.0, 0.0, 1.0)),
        FastHistogram("wide_seconds", "Go's spelling of bounds.", ("a", "b"), (0.5, 604800, 1e7)),
    ]
    for family in lean:
        lean_registry.register(family)
    r = standard_registry
    standard: list[Any] = [
        Histogram("h_seconds", "A histogram.", ("a",), buckets=BUCKETS, registry=r),
        Counter("c_total", "A counter.", ("a",), registry=r),
        Gauge("g", "A gauge.", ("a",), registry=r),
        Counter("plain_total", "Without labels.", (), registry=r),
        Histogram("below_zero", "Buckets below 0: no _sum.", buckets=(-1.0, 0.0, 1.0), registry=r),
        Histogram(
            "wide_seconds",
            "Go's spelling of bounds.",
            ("a", "b"),
            buckets=(0.5, 604800, 1e7),
            registry=r,
        ),
    ]
    return lean_registry, lean, standard_registry, standard


def observe(metrics: list[Any], clock: WallClock) -> None:
    """The same observations, at the same instants."""
    h, c, g, plain, below, wide = metrics
    clock.now = T0
    for values in (("x",), ("y",)):
        series(h, *values)
    series(c, "y")
    for i, value in enumerate(VALUES):
        clock.now = T0 + 1.5 + i / 4  # exemplars carry the time of their observation
        series(h, "x").observe(value, TRACE if i % 3 == 0 else None)
        series(c, "y").inc(value)
        series(
            below,
        ).observe(value - 1.5)
        series(wide, "x", "z").observe(value * 1e5)
    series(h, "y").observe(float("inf"))
    series(h, "y").observe(float("nan"))  # in the sum, in no bucket
    series(plain).inc()
    series(g, "z").inc(3)
    series(g, "z").dec()
    series(g, "w").set(-2.5)
    clock.now = T0 + 30.125  # a series that appears later has a later _created
    series(c, "late").inc(2)
    clock.now = T0 + 60  # the scrape


def test_lean_metrics_expose_the_same_bytes_as_prometheus_clients(wall_clock: WallClock) -> None:
    lean_registry, lean, standard_registry, standard = lean_and_standard()
    observe(lean, wall_clock)
    observe(standard, wall_clock)
    text = generate_latest(lean_registry).decode()
    assert text == generate_latest(standard_registry).decode()
    assert openmetrics_latest(lean_registry) == openmetrics_latest(standard_registry)
    # The comparison covers what it should: created at creation, not at the scrape.
    assert 'h_seconds_created{a="x"} 1.70000000025e+09' in text
    assert 'c_created{a="late"} 1.70000003037' in text
    assert "plain_total 1.0" in text and "below_zero_sum" not in text
    assert 'wide_seconds_bucket{a="x",b="z",le="1e+07"}' in text
    exemplars = openmetrics_latest(lean_registry).decode()
    assert '{trace_id="' + "ab" * 16 + '"} 1.0 1700000003.25' in exemplars
    assert 'h_seconds_sum{a="x"} 1.0000000337526e+09' in text
    assert 'h_seconds_bucket{a="y",le="+Inf"} 1.0' in text and 'h_seconds_sum{a="y"} NaN' in text


def test_without_created_series_both_leave_them_out(wall_clock: WallClock) -> None:
    was_on = prometheus_client.metrics._use_created
    disable_created_metrics()
    try:
        lean_registry, lean, standard_registry, standard = lean_and_standard()
        observe(lean, wall_clock)
        observe(standard, wall_clock)
        text = generate_latest(lean_registry)
        assert text == generate_latest(standard_registry)
        assert openmetrics_latest(lean_registry) == openmetrics_latest(standard_registry)
    finally:
        if was_on:
            enable_created_metrics()
    assert b"_created" not in text


def record(metrics: MonitorMetrics) -> None:
    mv = ("churn", "1")
    route = (*mv, "/predict", "POST")
    metrics.request_duration.labels(*route, "2xx").observe(0.012, TRACE)
    metrics.request_duration.labels(*route, "5xx").observe(0.3)
    metrics.time_to_first_byte.labels(*route, "2xx").observe(0.004)
    metrics.requests_in_flight.labels(*mv).inc()
    metrics.requests_in_flight.labels(*mv).dec()
    metrics.rows_scored.labels(*mv).inc(10)
    metrics.rows_skipped.labels(*mv, "5xx").inc(3)
    metrics.predictions.labels(*mv).observe(0.3)
    metrics.predicted_classes.labels(*mv, "yes").inc(7)
    metrics.confidence.labels(*mv).observe(0.97)
    metrics.payload_errors.labels(*mv, "invalid_json").inc()


def test_the_monitors_metrics_match_prometheus_clients_classes_byte_for_byte(
    wall_clock: WallClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    lean = MonitorMetrics(CollectorRegistry())
    # Under multiprocess mode the monitor uses prometheus_client's classes for every metric
    # (the values stay in memory here: prometheus_client chose its value class at import).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    standard = MonitorMetrics(CollectorRegistry())
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert isinstance(standard.request_duration, Histogram)
    assert isinstance(lean.request_duration, FastHistogram)
    wall_clock.now = T0 + 2
    record(lean)
    record(standard)
    wall_clock.now = T0 + 10
    text = generate_latest(lean.registry).decode()
    assert text == generate_latest(standard.registry).decode()
    assert openmetrics_latest(lean.registry) == openmetrics_latest(standard.registry)
    assert "mlwarden_rows_scored_created" in text and "mlwarden_build_info{" in text


def test_families_grouped_in_one_collector_expose_what_they_would_alone(
    wall_clock: WallClock,
) -> None:
    grouped, alone = CollectorRegistry(), CollectorRegistry()
    families = FastFamilies()
    for registry in (grouped, alone):
        h = FastHistogram("lat_seconds", "l", ("a",), BUCKETS)
        c = FastCounter("n_total", "n", ("a",))
        for family in (h, c):
            if registry is grouped:
                families.add(family)
            else:
                registry.register(family)
        h.labels("x").observe(0.05, TRACE)
        c.labels("x").inc()
    grouped.register(families)
    assert openmetrics_latest(grouped) == openmetrics_latest(alone)
    with pytest.raises(ValueError):  # the grouped names are known to the registry
        Counter("n_total", "again", registry=grouped)


def test_counters_refuse_to_go_down():
    with pytest.raises(ValueError):
        FastCounter("c_total", "c", ()).labels().inc(-1)


def test_a_name_clash_is_refused_like_prometheus_client_does():
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    with pytest.raises(ValueError):
        Counter("mlwarden_rows_scored_total", "again", registry=registry)


def test_multiprocess_mode_uses_prometheus_client_classes(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = MonitorMetrics(CollectorRegistry())
    assert isinstance(metrics.request_duration, Histogram)
    assert isinstance(metrics.requests_in_flight, Gauge)
