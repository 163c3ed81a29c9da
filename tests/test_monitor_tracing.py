"""Server spans: one per request, model attributes, W3C context honoured."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from mlwarden.middleware import InferenceMonitor
from tests.apps import starlette_app
from tests.servers import serve_app
from tests.support import make_baseline

pytestmark = pytest.mark.floor

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traced_app(**options):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="7",
        registry=CollectorRegistry(),
        tracer_provider=provider,
        **options,
    )
    return app, exporter


def test_one_server_span_with_model_attributes_and_parent_from_traceparent():
    app, exporter = traced_app(baseline=make_baseline())
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        r = client.post(
            "/predict",
            json={"instances": [{"f0": 1.0}, {"f0": 2.0}]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
    assert r.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "POST /predict"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    attrs = span.attributes
    assert attrs["mlwarden.model.name"] == "m"
    assert attrs["mlwarden.model.version"] == "7"
    assert attrs["http.route"] == "/predict"
    assert attrs["http.response.status_code"] == 200
    assert attrs["mlwarden.payload.rows"] == 2
    assert attrs["mlwarden.prediction.count"] == 2
    assert 0.5 <= attrs["mlwarden.prediction.mean_confidence"] <= 1.0


def test_exception_is_recorded_on_the_span():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/boom/predict", json={})
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)


def test_span_ends_at_the_last_body_byte_of_a_stream():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/stream/predict")
    (span,) = exporter.get_finished_spans()
    # five chunks 5 ms apart: the span covers the whole stream
    assert (span.end_time - span.start_time) / 1e9 >= 0.02


def test_tracing_off_makes_no_spans():
    app, exporter = traced_app(tracing=False)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/predict", json={"f0": 1})
    assert exporter.get_finished_spans() == ()


def test_no_provider_means_no_op_and_requests_still_work():
    app = starlette_app()
    app.add_middleware(InferenceMonitor, model_name="m", registry=CollectorRegistry())
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.post("/predict", json={"f0": 1}).status_code == 200


def test_an_outer_server_span_is_enriched_not_duplicated():
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inner = starlette_app()
    inner.add_middleware(
        InferenceMonitor, model_name="m", registry=CollectorRegistry(), tracer_provider=provider
    )
    app = OpenTelemetryMiddleware(inner, tracer_provider=provider)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/predict", json={"f0": 1})
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 1
    assert servers[0].attributes["mlwarden.model.name"] == "m"


FASTAPI_NATIVE = """
import json, httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from mlwarden.middleware import InferenceMonitor
from tests.apps import fastapi_app
from tests.servers import serve_app

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # FastAPI instruments itself when it sees a global SDK
app = fastapi_app()
app.add_middleware(InferenceMonitor, model_name="m", registry=CollectorRegistry())
with serve_app(app) as served:
    httpx.post(served.url + "/predict", json={"f0": 1})
spans = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
print(json.dumps([dict(s.attributes) for s in spans]))
"""


def test_fastapi_native_telemetry_span_is_enriched_not_duplicated():
    import json
    import subprocess
    import sys
    from pathlib import Path

    fastapi = pytest.importorskip("fastapi")
    if not hasattr(fastapi, "telemetry"):
        pytest.skip("this FastAPI has no native telemetry")
    result = subprocess.run(
        [sys.executable, "-c", FASTAPI_NATIVE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    spans = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(spans) == 1
    assert spans[0]["mlwarden.model.name"] == "m"
