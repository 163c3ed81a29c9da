"""The sidecar's traces: a server span per proxied request, a client span per upstream attempt.

The server span is the middleware's (:class:`~mlwarden.middleware.tracing.RequestTracer`): the
client's W3C ``traceparent`` is its parent. Each attempt on an upstream (retries and fallbacks
included) is a client span under it, and the upstream receives *that* span's context in
``traceparent``/``tracestate``, so a trace reads client → sidecar → attempt → model server
(whose middleware continues it).

Without an OpenTelemetry SDK (a global provider that is still the API's proxy or no-op, and no
provider given) nothing is started, the client's own trace headers are forwarded unchanged, and
a request costs one ``isinstance`` check. :func:`configure_tracing` builds the SDK provider of
the ``mlwarden sidecar`` process from its configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.tracing import RequestSpan, RequestTracer
from mlwarden.sidecar.config import TracingConfig

__all__ = ["ProxyTracer", "configure_tracing", "otlp_traces_url"]

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_INSTRUMENTATION = "mlwarden.sidecar"
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
Headers = list[tuple[bytes, bytes]]


class ProxyTracer:
    """Starts the spans of the proxy; see the module docstring."""

    __slots__ = ("_cached", "_off", "_provider", "_server")

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._server = RequestTracer(tracer_provider=tracer_provider)
        self._cached: tuple[trace.TracerProvider, trace.Tracer] | None = None
        self._off = isinstance(tracer_provider, _NO_SDK)

    def pin(self) -> None:
        """Resolve the global provider now (the proxy's start-up), not on every request: a
        lookup costs an environment read. An SDK installed later is then not seen."""
        if self._provider is None:
            self._provider = trace.get_tracer_provider()
            self._server = RequestTracer(tracer_provider=self._provider)
            self._off = isinstance(self._provider, _NO_SDK)

    def start(self, scope: Mapping[str, Any]) -> RequestSpan | None:
        """The request's server span, or None when no SDK records anything."""
        if self._off:
            return None
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, _NO_SDK):
            return None
        return self._server.start(scope, None, None)

    def _tracer(self, provider: trace.TracerProvider) -> trace.Tracer:
        cached = self._cached
        if cached is None or cached[0] is not provider:
            cached = self._cached = (provider, provider.get_tracer(_INSTRUMENTATION))
        return cached[1]

    def attempt(
        self,
        parent: RequestSpan,
        upstream: str,
        method: str,
        url: str,
        resend_count: int,
        headers: Headers,
    ) -> tuple[trace.Span, Headers]:
        """A client span for one attempt, and ``headers`` carrying its context instead of the
        client's."""
        provider = self._provider or trace.get_tracer_provider()
        context = trace.set_span_in_context(parent.span)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.full": url,
            "mlwarden.upstream": upstream,
        }
        if resend_count:
            attributes["http.request.resend_count"] = resend_count
        span = self._tracer(provider).start_span(
            method, context=context, kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        textmap = propagate.get_global_textmap()
        textmap.inject(carrier, context=trace.set_span_in_context(span, context))
        replaced = {f.lower().encode("latin-1") for f in textmap.fields} | {
            k.encode("latin-1") for k in carrier
        }
        out = [(n, v) for n, v in headers if n not in replaced]
        out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]
        return span, out

    @staticmethod
    def end_attempt(span: trace.Span, outcome: str, status: int | None) -> None:
        """End an attempt's span: ``outcome`` a status class or an error word."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if status is None or status >= 500:
            span.set_attribute("error.type", str(status) if status is not None else outcome)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def __repr__(self) -> str:
        return f"ProxyTracer(tracer_provider={self._provider!r})"


def otlp_traces_url(config: TracingConfig, environ: Mapping[str, str]) -> str | None:
    """Where traces go: ``tracing.otlp_endpoint``, else the standard OTLP variables (the
    traces one is a full URL; the general one a base URL, as the OTLP specification says)."""
    if config.otlp_endpoint is not None:
        base = config.otlp_endpoint
    elif environ.get(_ENDPOINT_VARS[0]):
        return environ[_ENDPOINT_VARS[0]]
    elif environ.get(_ENDPOINT_VARS[1]):
        base = environ[_ENDPOINT_VARS[1]]
    else:
        return None
    if urlsplit(base).path.rstrip("/").endswith("/v1/traces"):
        return base
    return base.rstrip("/") + "/v1/traces"


def configure_tracing(config: TracingConfig, environ: Mapping[str, str]) -> Any | None:
    """An SDK ``TracerProvider`` exporting to the configured OTLP endpoint in batches, or None
    when tracing is off. The caller passes it to the proxy and shuts it down on exit (which
    flushes the last batch). Raises ConfigError when the exporter is not installed."""
    url = otlp_traces_url(config, environ)
    if url is None:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            [
                "tracing.otlp_endpoint: exporting traces needs the OTLP exporter: "
                "pip install 'mlwarden[otlp]'"
            ]
        ) from None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    # Bounded: the batch processor's queue (2048 spans by default) drops what it cannot send.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5)))
    return provider
