"""The server span of each request: W3C context in, model attributes on, exemplars out.

With no tracer provider given, the global one is used; until the app installs an SDK it is a
no-op and this module costs almost nothing (it imports the OpenTelemetry API only). When
another layer already opened a server span for the request (FastAPI's own telemetry, or an
outer OpenTelemetry ASGI middleware), that span is enriched instead of a second one being
started.

Spans follow the stable HTTP semantic conventions: named ``{method} {http.route}`` (``{method}``
without a route; ``HTTP`` for a method outside ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``,
which is then recorded as ``_OTHER`` with ``http.request.method_original``); ``server.*``,
``url.scheme`` and ``client.address`` from ``Forwarded``, then ``X-Forwarded-*``, then ``Host``
and the connection (as the conventions ask, although a client can send those headers too: the
connection's own peer is ``network.peer.address``); the status ERROR only for a 5xx or an
exception. ``error.type`` is the
status code for a 5xx, the exception's class (``module.Class``) when the app raised, or, on
the sidecar's spans, ``client_closed`` when the client left before its answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlwarden.middleware.routes import UNMATCHED, UNROUTED

__all__ = [
    "KNOWN_METHODS",
    "RequestSpan",
    "RequestTracer",
    "error_type",
    "known_methods",
    "method_attributes",
    "redact_query",
]

_INSTRUMENTATION = "mlwarden.middleware"

#: RFC 9110's methods and PATCH (RFC 5789): the conventions' default "known" methods.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_KNOWN_METHODS_VAR = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
# Query values the conventions redact by default (signed URLs of S3, Azure and GCS).
_SECRET_KEYS = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
_NOT_ROUTES = frozenset({UNMATCHED, UNROUTED})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Headers read besides the propagators' fields.
_READ = frozenset(
    {
        b"host",
        b"user-agent",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    }
)


def known_methods(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The methods recorded as they are: ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` (a
    comma-separated, case-sensitive list that replaces the default) or :data:`KNOWN_METHODS`."""
    raw = (os.environ if environ is None else environ).get(_KNOWN_METHODS_VAR, "")
    methods = frozenset(m.strip() for m in raw.split(",") if m.strip())
    return methods or KNOWN_METHODS


def method_attributes(method: str, known: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """The span name's ``{method}`` and the method attributes: an unknown method (any case
    but the exact one) is ``_OTHER``, so that a client cannot spread spans over names."""
    if method in known:
        return method, {"http.request.method": method}
    return "HTTP", {"http.request.method": "_OTHER", "http.request.method_original": method}


def error_type(error: BaseException) -> str:
    """An exception's ``error.type``: its fully qualified class name (builtins unprefixed).
    A group of one (how older Starlette's task groups re-raise) is named by its member."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def redact_query(query: str) -> str:
    """``query`` with the values of signing keys replaced by ``REDACTED`` (the keys kept)."""
    if not any(key in query for key in _SECRET_KEYS):
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        key, sep, _ = part.partition("=")
        if sep and key in _SECRET_KEYS:
            parts[i] = key + "=REDACTED"
    return "&".join(parts)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(host, port) of ``host[:port]``, ``[v6][:port]`` or a bare IPv6 address."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host:
        return None
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else None
    return host, port if port is not None and port <= 65535 else None


def _first(value: str) -> str:
    """The first entry of a comma-separated list: the one nearest the original client."""
    return value.split(",", 1)[0].strip()


def _forwarded(value: str) -> dict[str, str]:
    """The parameters of a ``Forwarded`` header's first element (RFC 7239)."""
    out = {}
    for pair in _first(value).split(";"):
        name, sep, item = pair.partition("=")
        if sep:
            out[name.strip().lower()] = item.strip().strip('"')
    return out


def _address_attributes(
    scope: Mapping[str, Any], headers: Mapping[str, list[str]]
) -> dict[str, Any]:
    """``url.scheme``, ``server.*``, ``client.address`` and ``network.peer.*``: the original
    request's as far as proxies said (as the conventions ask), else the connection's."""
    forwarded = _forwarded(headers["forwarded"][0]) if "forwarded" in headers else {}
    scheme = forwarded.get("proto") or (
        _first(headers["x-forwarded-proto"][0]) if "x-forwarded-proto" in headers else ""
    )
    scheme = scheme.lower() or scope.get("scheme", "http")
    attributes: dict[str, Any] = {"url.scheme": scheme}
    host = forwarded.get("host") or (
        _first(headers["x-forwarded-host"][0]) if "x-forwarded-host" in headers else ""
    )
    if not host and "host" in headers:
        host = headers["host"][0]
    server = _split_host(host) if host else None
    if server is not None:
        attributes["server.address"] = server[0]
        port = server[1] if server[1] is not None else _DEFAULT_PORTS.get(scheme)
        if port is not None:
            attributes["server.port"] = port
    elif scope.get("server"):
        address, port = scope["server"]
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    peer = scope.get("client")
    if peer:
        attributes["network.peer.address"] = peer[0]
        if peer[1] is not None:
            attributes["network.peer.port"] = peer[1]
    original = forwarded.get("for") or (
        _first(headers["x-forwarded-for"][0]) if "x-forwarded-for" in headers else ""
    )
    client = _split_host(original) if original and original != "unknown" else None
    if client is not None:
        attributes["client.address"] = client[0]
    elif peer:
        attributes["client.address"] = peer[0]
    return attributes


class _HeaderGetter(Getter[Mapping[str, list[str]]]):
    def get(self, carrier: Mapping[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: Mapping[str, list[str]]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


class RequestSpan:
    """A request's span and whether this middleware owns it (then it also names and ends it);
    ``method`` is the ``{method}`` of its name."""

    __slots__ = ("method", "owned", "span", "token")

    def __init__(
        self, span: trace.Span, token: object | None, owned: bool, method: str = ""
    ) -> None:
        self.span = span
        self.token = token
        self.owned = owned
        self.method = method

    @property
    def trace_id(self) -> str | None:
        """The trace id for an exemplar, when the span is sampled."""
        ctx = self.span.get_span_context()
        if not ctx.trace_flags.sampled:
            return None
        return format(ctx.trace_id, "032x")

    def detach(self) -> None:
        """Leave the span's context (the span may still be open)."""
        if self.token is not None:
            context.detach(self.token)  # type: ignore[arg-type]
            self.token = None

    def finish(
        self,
        *,
        route: str | None,
        status: int | None,
        error: BaseException | None,
        attributes: Mapping[str, Any],
        end_time_ns: int | None,
        failure: str | None = None,
    ) -> None:
        """Record the outcome and end an owned span. ``status`` is what was sent (None: nothing,
        and if ``error`` is set the server answers 500); ``route`` a template, or a label that
        says there was none; ``failure`` an ``error.type`` for a failure without exception."""
        span = self.span
        if attributes:
            span.set_attributes(attributes)
        if not self.owned:  # the owner names it and records the HTTP outcome
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR))
            return
        if route is not None and route not in _NOT_ROUTES:
            span.update_name(f"{self.method} {route}")
            span.set_attribute("http.route", route)
        if status is None and error is not None:
            status = 500  # the app raised before answering: the server sends a 500
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            failure = error_type(error)
            span.record_exception(error)
        elif failure is None and status is not None and status >= 500:
            failure = str(status)
        if failure is not None:  # a 4xx is the client's doing: not an error of the server
            span.set_attribute("error.type", failure)
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_time_ns)


class RequestTracer:
    """Starts (or joins) the server span of an HTTP request."""

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._cached: tuple[trace.TracerProvider, trace.Tracer] | None = None
        self._textmap: object = None
        self._fields: frozenset[bytes] = _READ
        self._known = known_methods()

    def _tracer(self) -> trace.Tracer:
        # The global provider is looked up per request, so that an SDK installed after
        # start-up is picked up; the tracer is cached per provider, as the SDK builds a new
        # one on every get_tracer call (about 10 µs).
        provider = self._provider or trace.get_tracer_provider()
        cached = self._cached
        if cached is None or cached[0] is not provider:
            cached = self._cached = (provider, provider.get_tracer(_INSTRUMENTATION))
        return cached[1]

    def start(
        self, scope: Mapping[str, Any], model: str | None, version: str | None
    ) -> RequestSpan | None:
        """The request's span, or None when nothing records it. ``model``/``version`` become
        the ``mlwarden.model.*`` attributes (left out when None: the sidecar serves several)."""
        model_attributes = (
            {}
            if model is None
            else {"mlwarden.model.name": model, "mlwarden.model.version": version or ""}
        )
        current = trace.get_current_span()
        if current.is_recording() and (
            getattr(current, "kind", None) is SpanKind.SERVER or "fastapi.telemetry" in scope
        ):
            if model_attributes:
                current.set_attributes(model_attributes)
            return RequestSpan(current, None, owned=False)
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._textmap = textmap
            self._fields = frozenset(f.lower().encode("latin-1") for f in textmap.fields) | _READ
        fields = self._fields
        carrier: dict[str, list[str]] = {}
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name in fields:  # only what is read: decoding every header costs
                carrier.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        parent = textmap.extract(carrier, getter=_GETTER)
        name, attributes = method_attributes(scope.get("method", "GET"), self._known)
        attributes["url.path"] = scope.get("path", "")
        query = scope.get("query_string", b"")
        if query:
            attributes["url.query"] = redact_query(query.decode("latin-1"))
        attributes.update(_address_attributes(scope, carrier))
        http_version = scope.get("http_version")
        if http_version:
            attributes["network.protocol.version"] = http_version
        if "user-agent" in carrier:
            attributes["user_agent.original"] = carrier["user-agent"][0]
        attributes.update(model_attributes)
        span = self._tracer().start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        if not span.is_recording():
            return None
        token = context.attach(trace.set_span_in_context(span, parent))
        return RequestSpan(span, token, owned=True, method=name)
