"""End to end over uvicorn: drift verdicts, feature gauges and the health report."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.middleware import InferenceMonitor
from tests.apps import FEATURES, starlette_app
from tests.servers import serve_app
from tests.support import MEANS, make_baseline, reference_rows

pytestmark = pytest.mark.floor

MV = {"model": "m", "version": "1"}


def drift_app(registry, **options):
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="1",
        registry=registry,
        baseline=make_baseline(),
        drift_interval_s=3600,
        window_rows=2_000,
        **options,
    )
    return app


def send(client: httpx.Client, rows: list[dict], batch: int = 10) -> None:
    for i in range(0, len(rows), batch):
        r = client.post("/v1/models/m:predict", json={"instances": rows[i : i + batch]})
        assert r.status_code == 200
    # The middleware records after the last byte is sent; one more request on the same
    # connection is served only once that recording is done.
    client.get("/-/health")


def monitor_of(app) -> InferenceMonitor:
    node = app.middleware_stack
    while not isinstance(node, InferenceMonitor):
        node = node.app
    return node


def test_traffic_like_the_baseline_raises_no_drift():
    registry = CollectorRegistry()
    app = drift_app(registry)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        send(client, reference_rows(1_500, seed=3))
        monitor_of(app).worker.evaluate_now()
        health = client.get("/-/health").json()
    assert health["status"] == "ok", health["reasons"]
    assert health["drift"]["detected"] is False
    assert registry.get_sample_value("mlwarden_drift_detected", MV) == 0
    assert registry.get_sample_value("mlwarden_drift_window_rows", MV) == 1_500
    for name in FEATURES:
        mean = registry.get_sample_value("mlwarden_feature_mean", {**MV, "feature": name})
        assert mean == pytest.approx(MEANS[name], abs=0.5)


def test_shifting_one_feature_flags_that_feature_only():
    registry = CollectorRegistry()
    app = drift_app(registry)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        send(client, reference_rows(1_500, seed=4, shift={"f2": 1.0}))
        monitor_of(app).worker.evaluate_now()
        health = client.get("/-/health").json()
    assert health["drift"]["drifted_features"] == ["f2"]
    assert health["status"] == "degraded"
    assert "drift in f2" in health["reasons"]
    for name in FEATURES:
        flagged = registry.get_sample_value("mlwarden_feature_drifted", {**MV, "feature": name})
        assert flagged == (1 if name == "f2" else 0), name
    assert registry.get_sample_value("mlwarden_feature_psi", {**MV, "feature": "f2"}) > 0.2
    ks = {
        name: registry.get_sample_value("mlwarden_feature_ks_distance", {**MV, "feature": name})
        for name in FEATURES
    }
    assert max(ks, key=lambda name: ks[name]) == "f2" and 0 < ks["f2"] <= 1


def test_drift_is_evaluated_in_the_background_every_n_rows():
    registry = CollectorRegistry()
    app = drift_app(registry, drift_every_rows=500)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        send(client, reference_rows(600, seed=5))
        # The worker wakes on the loop and evaluates in a thread: give it a bounded moment,
        # in time rather than in requests (100 quick requests were too short on a busy CI).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if registry.get_sample_value("mlwarden_drift_evaluations_total", MV):
                break
            client.get("/-/health")
            time.sleep(0.02)
    assert registry.get_sample_value("mlwarden_drift_evaluations_total", MV) >= 1


def test_health_report_has_the_contract_fields():
    with (
        serve_app(drift_app(CollectorRegistry())) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        send(client, reference_rows(50, seed=6))
        health = client.get("/-/health").json()
    assert health["status"] in ("ok", "degraded", "failing")
    assert health["model"] == {"name": "m", "version": "1"}
    window = health["window"]
    assert window["requests"] == 5 and window["errors"] == 0
    assert set(window["latency_seconds"]) == {"p50", "p90", "p99"}
    assert "drift" in health and "detected" in health["drift"]


def test_error_rate_turns_health_failing_with_503():
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        registry=CollectorRegistry(),
        health={"min_requests": 5, "error_rate_failing": 0.5},
    )
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        for _ in range(6):  # uvicorn closes a connection whose app raised: a fresh one each
            assert httpx.post(f"{served.url}/boom/predict").status_code == 500
        for _ in range(2):
            client.post("/predict", json={"f0": 1})
        r = client.get("/-/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "failing"
    assert body["window"]["error_rate"] == pytest.approx(0.75)
