"""The lean per-request metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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
VALUES = (0.0005, 0.001, 0.0011, 0.05, 0.1, 0.7, 1.0, 9.9, 10.0, 12.0, 1e9)


def samples(registry: CollectorRegistry) -> set[tuple]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_fast_and_standard_metrics_give_the_same_samples():
    fast_registry, std_registry = CollectorRegistry(), CollectorRegistry()
    families = FastFamilies()
    fh = FastHistogram("h_seconds", "h", ("a",), BUCKETS)
    fc = FastCounter("c_total", "c", ("a",))
    fg = FastGauge("g", "g", ("a",))
    for family in (fh, fc, fg):
        families.add(family)
    fast_registry.register(families)
    sh = Histogram("h_seconds", "h", ("a",), buckets=BUCKETS, registry=std_registry)
    sc = Counter("c_total", "c", ("a",), registry=std_registry)
    sg = Gauge("g", "g", ("a",), registry=std_registry)
    for value in VALUES:
        for h in (fh, sh):
            h.labels("x").observe(value)
        for c in (fc, sc):
            c.labels("y").inc(value)
    for g in (fg, sg):
        g.labels("z").inc(3)
        g.labels("z").dec()
    assert samples(fast_registry) == samples(std_registry)
    exposed = generate_latest(fast_registry).decode()
    assert "# TYPE h_seconds histogram" in exposed and "# TYPE c_total counter" in exposed


def test_fast_histogram_keeps_exemplars_for_openmetrics():
    registry, families = CollectorRegistry(), FastFamilies()
    h = FastHistogram("lat_seconds", "l", ("a",), BUCKETS)
    families.add(h)
    registry.register(families)
    h.labels("x").observe(0.05, {"trace_id": "ab" * 16})
    text = openmetrics_latest(registry).decode()
    assert 'lat_seconds_bucket{a="x",le="0.1"} 1.0 # {trace_id="' + "ab" * 16 + '"} 0.05' in text


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
