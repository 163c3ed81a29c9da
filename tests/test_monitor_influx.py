"""The middleware ships feature statistics to InfluxDB (victoria-metrics' v2 write API) and
keeps serving at the same latency when InfluxDB is down."""

from __future__ import annotations

import json
import statistics
import time
import urllib.parse
import urllib.request

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.middleware import InferenceMonitor
from tests.apps import starlette_app
from tests.servers import free_port, serve_app
from tests.support import MEANS, make_baseline, reference_rows

MV = {"model": "m", "version": "1"}


def influx_app(registry, influx, **options):
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="1",
        registry=registry,
        baseline=make_baseline(),
        drift_interval_s=0.2,
        window_rows=2_000,
        influx=influx,
        **options,
    )
    return app


def export(vm, match: str) -> list[dict]:
    vm.flush()
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=5) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def test_feature_statistics_arrive_in_influxdb(victoria_metrics):
    registry = CollectorRegistry()
    bucket = f"b{time.time_ns()}"
    app = influx_app(registry, {"url": victoria_metrics.url, "bucket": bucket, "interval_s": 0.2})
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        rows = reference_rows(400, seed=11)
        for i in range(0, len(rows), 10):
            client.post("/predict", json={"instances": rows[i : i + 10]})
        deadline = time.monotonic() + 15
        series = []
        while time.monotonic() < deadline:
            series = export(victoria_metrics, 'mlwarden_feature_mean{feature="f3",model="m"}')
            if series:
                break
            time.sleep(0.2)
    assert series, "no mlwarden_feature_mean points arrived"
    (point,) = [s for s in series if s["metric"].get("version") == "1"][:1]
    assert point["metric"]["kind"] == "numeric"
    assert point["values"][-1] == pytest.approx(MEANS["f3"], abs=0.6)
    assert registry.get_sample_value("mlwarden_influx_points_written_total", MV) >= 6


def _latencies(client: httpx.Client, rows: list[dict], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        client.post("/predict", json={"instances": rows[i % len(rows) : i % len(rows) + 5]})
        out.append(time.perf_counter() - start)
    return out


def test_influxdb_down_does_not_move_latency_and_the_buffer_stays_bounded():
    registry_up, registry_down = CollectorRegistry(), CollectorRegistry()
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = influx_app(
        registry_down,
        {
            "url": nowhere,
            "bucket": "b",
            "interval_s": 0.05,
            "timeout_s": 0.5,
            "max_buffer_points": 60,
        },
    )
    reference = influx_app(registry_up, None)
    rows = reference_rows(500, seed=12)
    with (
        serve_app(down) as d,
        serve_app(reference) as r,
        httpx.Client(base_url=d.url) as cd,
        httpx.Client(base_url=r.url) as cr,
    ):
        # alternate rounds so both see the same machine noise
        lat_down, lat_ref = [], []
        for _ in range(4):
            lat_down += _latencies(cd, rows, 100)
            lat_ref += _latencies(cr, rows, 100)
        monitor = down.middleware_stack
        while not isinstance(monitor, InferenceMonitor):
            monitor = monitor.app
        for _ in range(20):  # 20 reports of 6 points each into a buffer of 60
            monitor.worker.evaluate_now()
        health = cd.get("/-/health").json()
    assert statistics.median(lat_down) < statistics.median(lat_ref) * 1.5 + 0.002
    assert health["influx"]["buffered_points"] <= 60
    assert registry_down.get_sample_value("mlwarden_influx_write_errors_total", MV) >= 1
    assert (
        registry_down.get_sample_value(
            "mlwarden_influx_points_dropped_total", {**MV, "reason": "buffer_full"}
        )
        > 0
    )
    assert registry_down.get_sample_value("mlwarden_influx_buffer_points", MV) <= 60
