"""The sidecar's spans: a server span per request, a client span per attempt, context passed on,
both after the stable HTTP semantic conventions.

Real upstreams on loopback echo the headers they received; the proxy reports to an SDK
``TracerProvider`` with the in-memory exporter.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mlwarden.middleware.tracing import RequestSpan
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.exchange import Exchange
from mlwarden.sidecar.tracing import ProxyTracer
from mlwarden.sidecar.upstream import UpstreamPool
from tests.servers import LOOPBACK, serve_app
from tests.test_proxy import Upstream, dead_url, make_config, two_upstreams

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@contextlib.contextmanager
def traced(
    cfg: SidecarConfig, provider: TracerProvider | None, **server: Any
) -> Iterator[tuple[Sidecar, httpx.Client]]:
    proxy = Sidecar(cfg, health_checks=False, tracer_provider=provider)
    with (
        serve_app(proxy.proxy, proxy_headers=False, **server) as served,
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
    # One count for the client's request: the fallback is its second resend, not a first send.
    assert "http.request.resend_count" not in attempts[0].attributes
    assert attempts[1].attributes["http.request.resend_count"] == 1
    assert attempts[2].attributes["http.request.resend_count"] == 2
    assert [s.attributes.get("error.type") for s in attempts] == ["503", "503", None]
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


# -- the stable HTTP semantic conventions, point by point ---------------------------------------


def recorded() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


class Answer:
    """An upstream that answers every prediction with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"answer"})


def test_client_and_server_spans_carry_every_http_attribute() -> None:
    provider, exporter = recorded()
    with (
        two_upstreams() as (_, _, p_url, s_url),
        traced(make_config(p_url, s_url), provider) as (proxy, client),
    ):
        response = client.post(
            "/v1/models/m:predict?x=1", content=b"{}", headers={"user-agent": "probe/1.0"}
        )
        wait_for(proxy)
        sidecar_port = urlsplit(str(client.base_url)).port
    assert response.status_code == 200
    (attempt,) = by_kind(exporter, SpanKind.CLIENT)
    assert attempt.name == "POST"  # a client span has no route
    assert attempt.status.status_code is StatusCode.UNSET
    assert dict(attempt.attributes) == {
        "http.request.method": "POST",
        "server.address": LOOPBACK,
        "server.port": urlsplit(p_url).port,
        "url.full": f"{p_url}/v1/models/m:predict?x=1",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
        "mlwarden.upstream": "primary",
    }
    (server,) = by_kind(exporter, SpanKind.SERVER)
    assert server.name == "POST"  # the proxy has no routes
    assert server.status.status_code is StatusCode.UNSET
    attributes = dict(server.attributes)
    assert isinstance(attributes.pop("network.peer.port"), int)
    assert attributes == {
        "http.request.method": "POST",
        "url.path": "/v1/models/m:predict",
        "url.query": "x=1",
        "url.scheme": "http",
        "server.address": LOOPBACK,
        "server.port": sidecar_port,
        "network.protocol.version": "1.1",
        "network.peer.address": LOOPBACK,
        "client.address": LOOPBACK,
        "user_agent.original": "probe/1.0",
        "http.response.status_code": 200,
        "mlwarden.upstream": "primary",
    }


def test_a_refused_connection_is_an_error_without_status_and_the_fallback_a_resend() -> None:
    provider, exporter = recorded()
    with two_upstreams() as (_, _, _, s_url):
        cfg = make_config(dead_url(), s_url, retry={"num_retries": 0})
        with traced(cfg, provider) as (proxy, client):
            assert client.post("/predict", content=b"{}").status_code == 200
            wait_for(proxy)
    refused, answered = by_kind(exporter, SpanKind.CLIENT)
    assert refused.attributes["error.type"] == "connect_error"
    assert "http.response.status_code" not in refused.attributes
    assert refused.status.status_code is StatusCode.ERROR
    assert answered.attributes["mlwarden.upstream"] == "stable"
    assert answered.attributes["http.request.resend_count"] == 1
    assert answered.attributes["server.port"] == urlsplit(s_url).port


def test_a_4xx_is_an_error_of_the_client_span_but_not_of_the_server_span() -> None:
    provider, exporter = recorded()
    with (
        serve_app(Answer(404)) as primary,
        serve_app(Answer(200)) as stable,
        traced(make_config(primary.url, stable.url), provider) as (proxy, client),
    ):
        assert client.post("/predict", content=b"{}").status_code == 404
        wait_for(proxy)
    (attempt,) = by_kind(exporter, SpanKind.CLIENT)
    assert attempt.attributes["http.response.status_code"] == 404
    assert attempt.attributes["error.type"] == "404"
    assert attempt.status.status_code is StatusCode.ERROR
    (server,) = by_kind(exporter, SpanKind.SERVER)
    assert server.attributes["http.response.status_code"] == 404
    assert "error.type" not in server.attributes
    assert server.status.status_code is StatusCode.UNSET


def test_an_unknown_method_is_other_on_both_spans() -> None:
    provider, exporter = recorded()
    # uvicorn's httptools parser refuses methods it does not know; h11 passes them on.
    with (
        serve_app(Upstream(), http="h11") as primary,
        serve_app(Upstream(), http="h11") as stable,
        traced(make_config(primary.url, stable.url), provider, http="h11") as (proxy, client),
    ):
        response = client.request("FOO", "/predict", content=b"{}")
        wait_for(proxy)
    assert response.headers["x-method"] == "FOO"  # forwarded as sent
    for span in exporter.get_finished_spans():
        assert span.name == "HTTP"
        assert span.attributes["http.request.method"] == "_OTHER"
        assert span.attributes["http.request.method_original"] == "FOO"


def test_a_shed_request_still_ends_its_server_span_as_a_503() -> None:
    provider, exporter = recorded()
    with two_upstreams("hang") as (_, _, p_url, s_url):
        cfg = make_config(
            p_url,
            s_url,
            limits={"max_concurrent_requests": 1},
            timeouts={"per_try_timeout_s": 1.0, "total_timeout_s": 1.0},
        )
        with (
            traced(cfg, provider) as (proxy, client),
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            hanging = pool.submit(client.post, "/predict", content=b"{}")
            for _ in range(200):  # at most 2 s
                if proxy.in_flight == 1:
                    break
                time.sleep(0.01)
            assert client.post("/predict", content=b"{}").status_code == 503
            hanging.result()
            wait_for(proxy)
    shed = [
        s
        for s in by_kind(exporter, SpanKind.SERVER)
        if s.attributes["mlwarden.upstream"] == "none"
        and s.attributes["http.response.status_code"] == 503
    ]
    assert len(shed) >= 1
    assert shed[0].attributes["error.type"] == "503"
    assert shed[0].status.status_code is StatusCode.ERROR


def test_url_full_has_no_credentials_and_no_signature_values() -> None:
    provider, exporter = recorded()
    parent = provider.get_tracer("test").start_span("request")
    ex = Exchange(
        send=None, span=RequestSpan(parent, None, owned=True, method="GET"), trailers_ok=False
    )  # type: ignore[arg-type]
    ex.method = "GET"
    ex.target = b"/models/m?color=blue&sig=s3cr3t&X-Goog-Signature=abc"
    tracer = ProxyTracer(tracer_provider=provider)
    span, _ = tracer.attempt(ex, "primary", UpstreamPool("https://user:pw@models.example:8443/v1"))
    tracer.end_attempt(span, 200, None)
    (attempt,) = by_kind(exporter, SpanKind.CLIENT)
    assert attempt.attributes["url.full"] == (
        "https://REDACTED:REDACTED@models.example:8443/v1/models/m"
        "?color=blue&sig=REDACTED&X-Goog-Signature=REDACTED"
    )
    assert attempt.attributes["server.address"] == "models.example"
    assert attempt.attributes["server.port"] == 8443
