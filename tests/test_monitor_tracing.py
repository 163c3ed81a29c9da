"""Server spans: one per request, model attributes, W3C context honoured, and the stable HTTP
semantic conventions point by point (name, attributes, status, error.type)."""

from __future__ import annotations

import ast
import socket
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from tests.apps import starlette_app
from tests.servers import LOOPBACK, serve_app
from tests.support import make_baseline

pytestmark = pytest.mark.floor

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traced_app(app=None, sampler=None, **options):
    exporter = InMemorySpanExporter()
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = starlette_app() if app is None else app
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
    asgi = pytest.importorskip("opentelemetry.instrumentation.asgi")
    OpenTelemetryMiddleware = asgi.OpenTelemetryMiddleware

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


# -- the stable HTTP semantic conventions, point by point ---------------------------------------


def _http_attributes(span) -> dict:
    """The span's attributes but the product's own (``mlwarden.*``)."""
    return {k: v for k, v in span.attributes.items() if not k.startswith("mlwarden.")}


def _raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is (a client library would add a Host header or fix the
    method's case) and read the answer until the server closes."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def _unavailable(request):
    return PlainTextResponse("warming up", status_code=503)


def status_app() -> Starlette:
    return Starlette(routes=[Route("/unavailable/predict", _unavailable, methods=["POST"])])


class _SeenAtStart(Sampler):
    """Samples everything and keeps the attributes each span had when it started."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, *_, **__):
        self.seen.append(dict(attributes or {}))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "SeenAtStart"


def test_a_server_span_carries_every_http_attribute_and_no_error():
    app, exporter = traced_app()
    with (
        serve_app(app) as served,
        httpx.Client(base_url=served.url, headers={"user-agent": "probe/1.0"}) as client,
    ):
        response = client.post("/predict?a=1&b=two", json={"f0": 1.0})
    assert response.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "POST /predict"
    assert span.status.status_code is StatusCode.UNSET
    attributes = _http_attributes(span)
    peer_port = attributes.pop("network.peer.port")
    assert isinstance(peer_port, int)
    assert peer_port > 0
    assert peer_port != served.port
    assert attributes == {
        "http.request.method": "POST",
        "url.path": "/predict",
        "url.query": "a=1&b=two",
        "url.scheme": "http",
        "server.address": LOOPBACK,
        "server.port": served.port,
        "network.protocol.version": "1.1",
        "network.peer.address": LOOPBACK,
        "client.address": LOOPBACK,
        "user_agent.original": "probe/1.0",
        "http.route": "/predict",
        "http.response.status_code": 200,
    }


def test_the_attributes_samplers_use_are_there_when_the_span_starts():
    sampler = _SeenAtStart()
    app, _ = traced_app(sampler=sampler)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/predict?a=1", json={"f0": 1.0})
    (seen,) = sampler.seen
    for key in (
        "http.request.method",
        "url.path",
        "url.query",
        "url.scheme",
        "server.address",
        "server.port",
        "client.address",
        "user_agent.original",
    ):
        assert key in seen, key


def test_without_a_query_there_is_no_url_query_and_signatures_in_one_are_redacted():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.post("/predict", json={"f0": 1.0})
        client.post("/predict?x=1&sig=s3cr3t&Signature=abc&AWSAccessKeyId=k", json={"f0": 1.0})
    plain, signed = exporter.get_finished_spans()
    assert "url.query" not in plain.attributes
    assert signed.attributes["url.query"] == (
        "x=1&sig=REDACTED&Signature=REDACTED&AWSAccessKeyId=REDACTED"
    )


def test_an_unknown_method_is_other_with_the_original_and_names_the_span_http():
    app, exporter = traced_app()
    # uvicorn's httptools parser refuses methods it does not know; h11 passes them on.
    with serve_app(app, http="h11") as served, httpx.Client(base_url=served.url) as client:
        response = client.request("FOO", "/items/3")
    assert response.status_code == 405
    (span,) = exporter.get_finished_spans()
    assert span.name == "HTTP /items/{item_id}"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "FOO"
    assert span.status.status_code is StatusCode.UNSET


def test_methods_are_case_sensitive_a_lowercase_get_is_other():
    app, exporter = traced_app()
    with serve_app(app, http="h11") as served:
        answer = _raw_request(
            served.port, b"get /items/1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 405")
    (span,) = exporter.get_finished_spans()
    assert span.name == "HTTP /items/{item_id}"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "get"


def test_a_known_method_has_no_method_original():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        client.get("/items/3")
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{item_id}"
    assert span.attributes["http.request.method"] == "GET"
    assert "http.request.method_original" not in span.attributes


def test_the_known_methods_can_be_replaced_by_the_standard_variable(monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "POST, FOO")
    app, exporter = traced_app()
    with serve_app(app, http="h11") as served, httpx.Client(base_url=served.url) as client:
        client.request("FOO", "/items/3")
        client.get("/items/3")  # GET is no longer in the list
    foo, get = exporter.get_finished_spans()
    assert foo.name == "FOO /items/{item_id}"
    assert foo.attributes["http.request.method"] == "FOO"
    assert "http.request.method_original" not in foo.attributes
    assert get.name == "HTTP /items/{item_id}"
    assert get.attributes["http.request.method"] == "_OTHER"
    assert get.attributes["http.request.method_original"] == "GET"


def test_an_exception_before_the_answer_is_a_500_with_the_class_as_error_type():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        response = client.post("/boom/predict", json={})
    assert response.status_code == 500
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /boom/predict"
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["error.type"] == "tests.apps.Boom"
    assert span.status.status_code is StatusCode.ERROR
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.message"] == "model exploded"


def test_an_exception_mid_stream_keeps_the_status_sent_and_names_the_class():
    app, exporter = traced_app()
    with (
        serve_app(app) as served,
        httpx.Client(base_url=served.url) as client,
        pytest.raises(httpx.HTTPError),
    ):
        client.post("/stream-fail/predict").read()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["error.type"] == "RuntimeError"  # a builtin: no module prefix
    assert span.status.status_code is StatusCode.ERROR


def test_a_5xx_answer_is_an_error_with_the_status_code_as_error_type():
    app, exporter = traced_app(status_app())
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.post("/unavailable/predict", json={}).status_code == 503
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 503
    assert span.attributes["error.type"] == "503"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None  # the status code says it


def test_a_4xx_answer_is_not_an_error_of_the_server():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.post("/predict", content=b"not json").status_code == 400
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 400
    assert "error.type" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


def test_without_a_matched_route_the_span_is_named_by_the_method_alone():
    app, exporter = traced_app()
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.get("/no/such/path").status_code == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET"  # never the raw path, never the metrics' placeholder
    assert "http.route" not in span.attributes
    assert span.attributes["url.path"] == "/no/such/path"
    assert span.status.status_code is StatusCode.UNSET


def test_server_and_client_are_the_originals_told_by_x_forwarded_headers():
    app, exporter = traced_app()
    # uvicorn's proxy_headers would rewrite the scope's client and scheme from them itself.
    with (
        serve_app(app, proxy_headers=False) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        client.post(
            "/predict",
            json={"f0": 1.0},
            headers={
                "x-forwarded-host": "models.example:8443, sidecar.local",
                "x-forwarded-proto": "https, http",
                "x-forwarded-for": "203.0.113.7, 10.0.0.1",
            },
        )
    (span,) = exporter.get_finished_spans()
    attributes = span.attributes
    assert attributes["server.address"] == "models.example"
    assert attributes["server.port"] == 8443
    assert attributes["url.scheme"] == "https"
    assert attributes["client.address"] == "203.0.113.7"
    assert attributes["network.peer.address"] == LOOPBACK  # the connection's own


def test_a_forwarded_header_comes_first_and_a_host_without_port_has_the_schemes():
    app, exporter = traced_app()
    with (
        serve_app(app, proxy_headers=False) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        client.post(
            "/predict",
            json={"f0": 1.0},
            headers={
                "forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https;host=models.example, '
                "for=10.0.0.1",
                "x-forwarded-host": "ignored.example",
                "x-forwarded-for": "198.51.100.1",
            },
        )
        client.post("/predict", json={"f0": 1.0}, headers={"host": "plain.example"})
    forwarded, plain = exporter.get_finished_spans()
    assert forwarded.attributes["server.address"] == "models.example"
    assert forwarded.attributes["server.port"] == 443
    assert forwarded.attributes["url.scheme"] == "https"
    assert forwarded.attributes["client.address"] == "2001:db8:cafe::17"
    assert plain.attributes["server.address"] == "plain.example"
    assert plain.attributes["server.port"] == 80


def test_without_a_host_header_the_server_is_the_listening_socket_and_the_version_1_0():
    app, exporter = traced_app()
    with serve_app(app, http="h11") as served:
        answer = _raw_request(served.port, b"GET /items/1 HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    (span,) = exporter.get_finished_spans()
    assert span.attributes["server.address"] == LOOPBACK
    assert span.attributes["server.port"] == served.port
    assert span.attributes["network.protocol.version"] == "1.0"


# -- the default export: the host app's SDK, nothing of ours --------------------------------------

ROOT = Path(__file__).resolve().parents[1]

HOST_APP_SDK = """
import json, sys, httpx
from prometheus_client import CollectorRegistry
from mlwarden.middleware import InferenceMonitor
from tests.apps import starlette_app
from tests.servers import serve_app

app = starlette_app()
app.add_middleware(InferenceMonitor, model_name="m", registry=CollectorRegistry())
with serve_app(app) as served:
    httpx.post(served.url + "/predict", json={"f0": 1})  # no SDK yet: the API's no-op
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
    # The host app installs its SDK (as `opentelemetry-instrument` or its own code would).
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    httpx.post(served.url + "/predict", json={"f0": 1})
spans = [(s.name, s.instrumentation_scope.name) for s in exporter.get_finished_spans()]
print(json.dumps({"loaded": loaded, "spans": spans}))
"""


def test_the_middleware_exports_through_the_host_apps_sdk_and_never_loads_one_itself():
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", HOST_APP_SDK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["spans"] == [["POST /predict", "mlwarden.middleware"]]


def test_no_middleware_module_imports_the_opentelemetry_sdk():
    offenders = []
    for path in sorted((ROOT / "middleware").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if n.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))
            ]
    assert offenders == []
