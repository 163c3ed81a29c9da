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

Client spans follow the stable HTTP semantic conventions: named ``{method}`` (``HTTP`` for an
unknown method, recorded as ``_OTHER``), with the upstream's ``server.address``/``server.port``,
``url.full`` (credentials and signing query values redacted), ``network.protocol.version``
``1.1`` and, from the second send of a client's request on, ``http.request.resend_count``:
retries and fallbacks count alike, as both send the same request again. The status is ERROR
for a 4xx or 5xx answer (``error.type`` the status code) and for an attempt that failed:
``error.type`` then ``connect_error``, ``timeout``, ``reset`` (the connection broke, or the
answer could not be relayed whole), ``refused`` (the request cannot be sent), ``client_gone``,
or the class of an unexpected exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.tracing import (
    RequestSpan,
    RequestTracer,
    known_methods,
    method_attributes,
    redact_query,
)
from mlwarden.sidecar.config import TracingConfig

if TYPE_CHECKING:  # annotations only: `mlwarden sidecar --check` stays light
    from mlwarden.sidecar.exchange import Exchange
    from mlwarden.sidecar.upstream import UpstreamPool

__all__ = ["ProxyTracer", "configure_tracing", "otlp_traces_url"]

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_INSTRUMENTATION = "mlwarden.sidecar"
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
Headers = list[tuple[bytes, bytes]]


class ProxyTracer:
    """Starts the spans of the proxy; see the module docstring."""

    __slots__ = ("_cached", "_known", "_off", "_provider", "_server", "_upstreams")

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._server = RequestTracer(tracer_provider=tracer_provider)
        self._cached: tuple[trace.TracerProvider, trace.Tracer] | None = None
        self._off = isinstance(tracer_provider, _NO_SDK)
        self._known = known_methods()
        # Per upstream base URL (a handful, fixed by the configuration): its span attributes.
        self._upstreams: dict[str, tuple[str, dict[str, Any]]] = {}

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

    def _upstream(self, pool: UpstreamPool) -> tuple[str, dict[str, Any]]:
        """The base of ``url.full`` (credentials redacted) and the ``server.*`` attributes."""
        found = self._upstreams.get(pool.base_url)
        if found is None:
            parts = urlsplit(pool.base_url)
            if parts.username is not None or parts.password is not None:
                netloc = "REDACTED:REDACTED@" + parts.netloc.rpartition("@")[2]
                parts = parts._replace(netloc=netloc)
            found = (
                urlunsplit(parts).rstrip("/"),
                {"server.address": pool.host, "server.port": pool.port},
            )
            self._upstreams[pool.base_url] = found
        return found

    def attempt(
        self, ex: Exchange, upstream: str, pool: UpstreamPool
    ) -> tuple[trace.Span, Headers]:
        """A client span for sending ``ex`` to ``upstream`` once more, and the request's
        headers carrying its context instead of the client's."""
        assert ex.span is not None
        provider = self._provider or trace.get_tracer_provider()
        context = trace.set_span_in_context(ex.span.span)
        base, server = self._upstream(pool)
        path, mark, query = ex.target.decode("latin-1").partition("?")
        name, attributes = method_attributes(ex.method, self._known)
        attributes.update(server)
        attributes["url.full"] = base + path + mark + redact_query(query)
        attributes["network.protocol.version"] = "1.1"
        attributes["mlwarden.upstream"] = upstream
        if ex.sent:
            attributes["http.request.resend_count"] = ex.sent
        span = self._tracer(provider).start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        textmap = propagate.get_global_textmap()
        textmap.inject(carrier, context=trace.set_span_in_context(span, context))
        replaced = {f.lower().encode("latin-1") for f in textmap.fields} | {
            k.encode("latin-1") for k in carrier
        }
        out = [(n, v) for n, v in ex.headers if n not in replaced]
        out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]
        return span, out

    @staticmethod
    def end_attempt(span: trace.Span, status: int | None, failure: str | None) -> None:
        """End an attempt's span: ``status`` the upstream's answer (None: none came),
        ``failure`` the ``error.type`` of an attempt that failed (see the module docstring)."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if failure is None and status >= 400:
                failure = str(status)
        if failure is not None:
            span.set_attribute("error.type", failure)
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
