"""The server span of each request: W3C context in, model attributes on, exemplars out.

With no tracer provider given, the global one is used; until the app installs an SDK it is a
no-op and this module costs almost nothing. When another layer already opened a server span
for the request (FastAPI's own telemetry, or an outer OpenTelemetry ASGI middleware), that span
is enriched instead of a second one being started.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["RequestSpan", "RequestTracer"]

_INSTRUMENTATION = "mlwarden.middleware"


class _HeaderGetter(Getter[Mapping[str, list[str]]]):
    def get(self, carrier: Mapping[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: Mapping[str, list[str]]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


class RequestSpan:
    """A request's span and whether this middleware owns it (then it also ends it)."""

    __slots__ = ("owned", "span", "token")

    def __init__(self, span: trace.Span, token: object | None, owned: bool) -> None:
        self.span = span
        self.token = token
        self.owned = owned

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
        method: str,
        route: str | None,
        status: int | None,
        error: BaseException | None,
        attributes: Mapping[str, Any],
        end_time_ns: int | None,
    ) -> None:
        span = self.span
        if attributes:
            span.set_attributes(attributes)
        if self.owned:
            if route is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif self.owned and status is not None and status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        if self.owned:
            span.end(end_time=end_time_ns)


class RequestTracer:
    """Starts (or joins) the server span of an HTTP request."""

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._cached: tuple[trace.TracerProvider, trace.Tracer] | None = None
        self._textmap: object = None
        self._fields: frozenset[bytes] = frozenset()

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
            self._fields = frozenset(f.lower().encode("latin-1") for f in textmap.fields) | {
                b"user-agent"
            }
        fields = self._fields
        carrier: dict[str, list[str]] = {}
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name in fields:  # only what the propagators read: decoding every header costs
                carrier.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        parent = textmap.extract(carrier, getter=_GETTER)
        method = scope.get("method", "GET")
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            **model_attributes,
        }
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        if "user-agent" in carrier:
            attributes["user_agent.original"] = carrier["user-agent"][0]
        span = self._tracer().start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        if not span.is_recording():
            return None
        token = context.attach(trace.set_span_in_context(span, parent))
        return RequestSpan(span, token, owned=True)
