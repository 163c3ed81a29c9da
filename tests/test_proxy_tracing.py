"""The sidecar's spans: a server span per request, a client span per attempt, context passed on.

Real upstreams on loopback echo the headers they received; the proxy reports to an SDK
``TracerProvider`` with the in-memory exporter.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from tests.servers import serve_app
from tests.test_proxy import make_config, two_upstreams

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@contextlib.contextmanager
def traced(
    cfg: SidecarConfig, provider: TracerProvider | None
) -> Iterator[tuple[Sidecar, httpx.Client]]:
    proxy = Sidecar(cfg, health_checks=False, tracer_provider=provider)
    with (
        serve_app(proxy.proxy, proxy_headers=False) as served,
        httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
    ):
        yield proxy, client


def echoed(response: httpx.Response) -> dict[str, str]:
    return dict(json.loads(response.headers["x-echo-headers"]))


def wait_for(proxy: Sidecar) -> None:
    """Spans end just after the client has its answer."""
    for _ in range(200):
        if proxy.in_flight == 0:
            return
        time.sleep(0.01)


def test_the_upstream_gets_the_attempt_span_as_parent_within_the_clients_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with (
        two_upstreams() as (_, _, p_url, s_url),
        traced(make_config(p_url, s_url), provider) as (proxy, client),
    ):
        response = client.post("/predict?x=1", content=b"{}", headers={"traceparent": TRACEPARENT})
        wait_for(proxy)
    assert response.status_code == 200
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    server, attempt = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE
    assert format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert attempt.parent.span_id == server.context.span_id
    assert attempt.attributes["mlwarden.upstream"] == "primary"
    assert attempt.attributes["url.full"].endswith("/predict?x=1")
    assert attempt.attributes["http.response.status_code"] == 200
    assert server.attributes["mlwarden.upstream"] == "primary"
    assert server.attributes["http.response.status_code"] == 200
    # What the upstream received: the attempt's context, in the client's trace.
    sent = echoed(response)["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{format(attempt.context.span_id, '016x')}-01"


def test_each_retry_and_fallback_is_its_own_attempt_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with two_upstreams("503") as (_, _, p_url, s_url):
        cfg = make_config(p_url, s_url, breaker={"consecutive_5xx": 50})
        with traced(cfg, provider) as (proxy, client):
            response = client.post("/predict", content=b"{}")
            wait_for(proxy)
    assert response.headers["x-mlwarden-upstream"] == "stable"
    attempts = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [
        (s.attributes["mlwarden.upstream"], s.attributes["http.response.status_code"])
        for s in attempts
    ] == [("primary", 503), ("primary", 503), ("stable", 200)]
    assert attempts[1].attributes["http.request.resend_count"] == 1
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[2].status.status_code is StatusCode.UNSET
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert {s.parent.span_id for s in attempts} == {server.context.span_id}


def test_without_an_sdk_the_clients_trace_headers_pass_unchanged() -> None:
    with (
        two_upstreams() as (_, _, p_url, s_url),
        traced(make_config(p_url, s_url), None) as (proxy, client),
    ):
        assert proxy.tracer.start({"type": "http", "headers": []}) is None
        response = client.post(
            "/predict", content=b"{}", headers={"traceparent": TRACEPARENT, "tracestate": "k=v"}
        )
    headers = echoed(response)
    assert headers["traceparent"] == TRACEPARENT
    assert headers["tracestate"] == "k=v"
