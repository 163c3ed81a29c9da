"""What the middleware records: latency histograms, labels, payload counts, predictions."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.middleware import InferenceMonitor
from tests.apps import FEATURES, fastapi_app, starlette_app
from tests.servers import serve_app
from tests.support import make_baseline, settled_series

pytestmark = pytest.mark.floor

MV = {"model": "m", "version": "1"}


def monitored(factory=starlette_app, registry=None, **options):
    app = factory()
    app.add_middleware(
        InferenceMonitor, model_name="m", model_version="1", registry=registry, **options
    )
    return app


def duration_count(registry, route, method="POST", status_class="2xx"):
    return registry.get_sample_value(
        "mlwarden_request_duration_seconds_count",
        {**MV, "route": route, "method": method, "status_class": status_class},
    )


@pytest.mark.parametrize("factory", [starlette_app, fastapi_app])
def test_latency_is_labelled_with_the_route_template_not_the_path(factory):
    registry = CollectorRegistry()
    with (
        serve_app(monitored(factory, registry)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        for i in range(3):
            client.get(f"/items/{i}")
        client.get("/no/such/path")
    assert duration_count(registry, "/items/{item_id}", "GET") == 3
    assert duration_count(registry, "__unmatched__", "GET", "4xx") == 1
    assert (
        registry.get_sample_value(
            "mlwarden_time_to_first_byte_seconds_count",
            {**MV, "route": "/items/{item_id}", "method": "GET", "status_class": "2xx"},
        )
        == 3
    )


def test_exceptions_are_counted_as_5xx_and_reraised():
    registry = CollectorRegistry()
    with (
        serve_app(monitored(starlette_app, registry)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert client.post("/boom/predict", json={"f0": 1}).status_code == 500
    labels = {**MV, "route": "/boom/predict", "method": "POST"}
    assert registry.get_sample_value("mlwarden_request_exceptions_total", labels) == 1
    assert duration_count(registry, "/boom/predict", status_class="5xx") == 1


def test_in_flight_returns_to_zero():
    registry = CollectorRegistry()
    with (
        serve_app(monitored(starlette_app, registry)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        client.post("/stream/predict")
        client.post("/boom/predict")
    assert registry.get_sample_value("mlwarden_requests_in_flight", MV) == 0


def test_rows_and_predictions_are_counted_from_a_kserve_batch():
    registry = CollectorRegistry()
    rows = [{name: float(i) for name in FEATURES} for i in range(7)]
    with (
        serve_app(
            monitored(
                starlette_app, registry, baseline=make_baseline(), prediction_classes=["yes", "no"]
            )
        ) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        r = client.post("/v1/models/m:predict", json={"instances": rows})
    assert r.status_code == 200
    assert registry.get_sample_value("mlwarden_rows_scored_total", MV) == 7
    yes = registry.get_sample_value("mlwarden_predicted_class_total", {**MV, "class": "yes"})
    no = registry.get_sample_value("mlwarden_predicted_class_total", {**MV, "class": "no"}) or 0
    assert yes + no == 7
    assert registry.get_sample_value("mlwarden_prediction_confidence_count", MV) == 7


def test_kserve_rows_as_lists_and_columns_inside_an_instance_are_scored():
    registry = CollectorRegistry()
    as_lists = {"instances": [[0.5, -0.7, 1.0, 2.0, 3.0], [0.1, 0.2, 0.3, 0.4, 0.5]]}
    columns = {"instances": [{name: [0.5, -0.7, 1.5] for name in FEATURES}]}
    ragged = {"instances": [{"f0": [0.5, -0.7], "f1": [1.0]}]}
    with (
        serve_app(monitored(starlette_app, registry, baseline=make_baseline())) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        for payload in [as_lists] * 10 + [columns] * 10 + [ragged]:
            assert client.post("/v1/models/m:predict", json=payload).status_code == 200
    assert registry.get_sample_value("mlwarden_rows_scored_total", MV) == 10 * 2 + 10 * 3
    errors = {
        s.labels["reason"]: s.value
        for metric in registry.collect()
        if metric.name == "mlwarden_payload_errors"
        for s in metric.samples
        if s.name == "mlwarden_payload_errors_total"
    }
    assert errors == {"shape_mismatch": 1}  # the ragged one, counted, not read as Nones


def test_app_that_never_reads_the_body_is_counted_not_broken():
    registry = CollectorRegistry()
    with (
        serve_app(monitored(starlette_app, registry)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert client.post("/ignore/predict", json={"f0": 1}).status_code == 200
    assert (
        registry.get_sample_value(
            "mlwarden_payload_errors_total", {**MV, "reason": "body_not_read"}
        )
        == 1
    )


def test_metrics_endpoint_serves_the_registry_and_openmetrics_with_exemplars():
    from opentelemetry.sdk.trace import TracerProvider

    registry = CollectorRegistry()
    provider = TracerProvider()
    with (
        serve_app(monitored(starlette_app, registry, tracer_provider=provider)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        client.post("/predict", json={"f0": 1})
        text = client.get("/metrics").text
        om = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert "mlwarden_request_duration_seconds_bucket" in text
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert '# {trace_id="' in om.text


def test_app_with_its_own_metrics_route_keeps_it():
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = starlette_app()
    app.router.routes.append(Route("/metrics", lambda r: PlainTextResponse("theirs")))
    app.add_middleware(InferenceMonitor, model_name="m", registry=CollectorRegistry())
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.get("/metrics").text == "theirs"


def test_metrics_path_can_be_switched_off():
    with (
        serve_app(monitored(starlette_app, CollectorRegistry(), metrics_path=None)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert client.get("/metrics").status_code == 404


def test_hostile_payloads_leave_the_series_fixed():
    registry = CollectorRegistry()
    hostile = [
        (b'{"f0": 1,,,', "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (b'{"f0": NaN, "f1": Infinity, "f2": -Infinity}', "application/json"),
        (
            ("{" + ",".join(f'"u{i}": {i}' for i in range(10_000)) + "}").encode(),
            "application/json",
        ),
        (b"\xff\xfe garbage", "application/json"),
        (b'{"instances": [[1, 2]]}', "application/json"),
    ]
    big = b"x" * (50 * 1024 * 1024)
    inputs = [*hostile, (big, "application/json")]

    def answer(base: str, body: bytes, ctype: str) -> tuple[int, bytes]:
        # a fresh connection each: an app that fails may close the connection
        r = httpx.post(f"{base}/predict", content=body, headers={"content-type": ctype}, timeout=30)
        return r.status_code, r.content

    with (
        serve_app(monitored(starlette_app, registry, baseline=make_baseline())) as served,
        serve_app(starlette_app()) as bare,
    ):
        for body, ctype in inputs:  # every label set hostile input can reach now exists
            assert answer(served.url, body, ctype) == answer(bare.url, body, ctype)
        httpx.get(f"{served.url}/random/path")
        before = settled_series(registry)
        for round_ in range(3):
            for body, ctype in inputs:
                answer(served.url, body, ctype)
            for i in range(20):
                httpx.get(f"{served.url}/random/{round_}/path/{i}")
        after = settled_series(registry)
    assert after - before == set()
    assert (
        registry.get_sample_value("mlwarden_payload_errors_total", {**MV, "reason": "too_large"})
        == 4
    )
    assert (
        registry.get_sample_value(
            "mlwarden_payload_errors_total", {**MV, "reason": "no_known_features"}
        )
        == 4
    )


def test_queued_reads_are_counted_before_a_scrape():
    registry = CollectorRegistry()
    with (
        serve_app(monitored(starlette_app, registry, baseline=make_baseline())) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        for _ in range(3):  # fewer than a read batch: they wait in the queue
            client.post("/predict", json={"instances": [{"f0": 1.0}, {"f0": 2.0}]})
        text = client.get("/metrics").text
    assert 'mlwarden_rows_scored_total{model="m",version="1"} 6.0' in text


def test_queued_reads_are_bounded_by_bytes():
    registry = CollectorRegistry()
    app = monitored(starlette_app, registry, baseline=make_baseline())
    big = {"instances": [{"f0": float(i), "pad": "x" * 300} for i in range(2_000)]}
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/predict", json=big)  # ~0.7 MB with its response
        client.post("/predict", json=big)  # the queue passes 1 MiB: read at once
        client.get("/items/1")  # served after the previous request's recording
        rows = registry.get_sample_value("mlwarden_rows_scored_total", MV)
    assert rows == 4_000


def test_app_health_route_is_not_shadowed():
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = starlette_app()
    app.router.routes.append(Route("/-/health", lambda r: PlainTextResponse("app says ok")))
    app.add_middleware(InferenceMonitor, model_name="m", registry=CollectorRegistry())
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.get("/-/health").text == "app says ok"
        assert "mlwarden_request_duration_seconds" in client.get("/metrics").text


def test_a_fault_inside_the_middleware_is_counted_logged_and_the_request_unaffected(
    caplog, monkeypatch
):
    # As on a machine booted 5 s ago: the monotonic clock counts from boot (shifted by a
    # constant, so every reader, the event loop's included, still agrees).
    real = time.monotonic
    offset = real() - 5.0
    monkeypatch.setattr(time, "monotonic", lambda: real() - offset)
    registry = CollectorRegistry()
    app = monitored(starlette_app, registry)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        monitor = app.middleware_stack
        while not isinstance(monitor, InferenceMonitor):
            monitor = monitor.app

        class Broken:
            def record(self, *args):
                raise RuntimeError("a bug of ours")

        monitor.tracker.health_window = Broken()
        r = client.post("/predict", json={"f0": 1.0})
    assert r.status_code == 200 and r.json()["predictions"]
    assert registry.get_sample_value("mlwarden_internal_errors_total", MV) == 1
    # Logged the first time whatever the monotonic clock reads (it counts from boot).
    assert "internal error while recording the request" in caplog.text
