"""A real Prometheus server scrapes a model server wrapped by the middleware."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mlwarden.middleware import InferenceMonitor
from tests.apps import starlette_app
from tests.servers import serve_app, start_prometheus, temp_workdir
from tests.support import make_baseline, reference_rows

pytestmark = pytest.mark.servers


def query(prom_url: str, path: str, **params: str) -> dict:
    url = f"{prom_url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def poll(prom_url: str, promql: str, *, timeout: float = 30.0) -> list[dict]:
    """Wait until ``promql`` returns data (the first scrape lands ~6 s after start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(prom_url, "/api/v1/query", query=promql)["data"]["result"]
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"no data for {promql} within {timeout}s")


def test_prometheus_scrapes_latency_drift_and_exemplars():
    registry = CollectorRegistry()
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="1",
        registry=registry,
        baseline=make_baseline(),
        tracer_provider=TracerProvider(),
        drift_interval_s=0.5,
    )
    workdir = temp_workdir("prom")
    with serve_app(app) as served:
        prom = start_prometheus(workdir, [f"127.0.0.1:{served.port}"])
        try:
            rows = reference_rows(300, seed=21)
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=served.url) as client:
                sent = 0
                # keep traffic flowing until two scrapes have seen it (rate needs two)
                while time.monotonic() < deadline:
                    client.post("/predict", json={"instances": rows[sent % 290 : sent % 290 + 10]})
                    sent += 1
                    if (
                        sent % 50 == 0
                        and query(
                            prom.url,
                            "/api/v1/query",
                            query="rate(mlwarden_request_duration_seconds_count[10s]) > 0",
                        )["data"]["result"]
                    ):
                        break
                    time.sleep(0.01)
            up = poll(prom.url, 'up{job="mlwarden"}')
            assert up[0]["value"][1] == "1"
            rate = poll(
                prom.url,
                "sum(rate(mlwarden_request_duration_seconds_count"
                '{route="/predict",status_class="2xx"}[10s]))',
            )
            assert float(rate[0]["value"][1]) > 0
            p99 = poll(
                prom.url,
                "histogram_quantile(0.99, sum by (le) (rate("
                "mlwarden_request_duration_seconds_bucket[10s])))",
            )
            assert 0 < float(p99[0]["value"][1]) <= 10
            drift = poll(prom.url, 'mlwarden_feature_psi{feature="f0"}')
            assert float(drift[0]["value"][1]) < 0.2
            now = time.time()
            exemplars = query(
                prom.url,
                "/api/v1/query_exemplars",
                query="mlwarden_request_duration_seconds_bucket",
                start=str(now - 120),
                end=str(now + 5),
            )["data"]
            trace_ids = [e["labels"].get("trace_id") for s in exemplars for e in s["exemplars"]]
            assert trace_ids and all(len(t) == 32 for t in trace_ids)
        finally:
            prom.process.stop()
            shutil.rmtree(workdir, ignore_errors=True)
