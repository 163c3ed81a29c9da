"""``InferenceMonitor``: the pure ASGI middleware that watches a model server.

Each HTTP request runs the same order: guard (own endpoints, which requests are model
endpoints), wrap ``receive``/``send`` in a per-request
:class:`~mlwarden.middleware.exchange.Exchange`, delegate to the app, record in ``finally``.
Nothing request-scoped is kept on the middleware. The request body is teed as the app reads
it (never read ahead), so the app sees exactly the messages it would see without us; payloads
and predictions are read after the response's last byte is sent, in batches, by the
:class:`~mlwarden.middleware.reading.ExchangeReader`. Anything that goes wrong in here is
counted and logged, never raised into the request. This module owns the request path and the
lifecycle (lifespan, background drift evaluation and shipping); the endpoints it mounts are
:mod:`mlwarden.middleware.endpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import REGISTRY

from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.drift_export import DriftExportEndpoint
from mlwarden.middleware.endpoints import (
    FeedbackEndpoint,
    HealthEndpoint,
    MetricsEndpoint,
    ModelsHealthEndpoint,
    header,
)
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.exchange import Exchange
from mlwarden.middleware.health_report import HealthReport
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.middleware.metrics import status_class as class_of
from mlwarden.middleware.models import ModelPaths, ModelRegistry
from mlwarden.middleware.models_health import ModelsHealth
from mlwarden.middleware.options import MonitorOptions
from mlwarden.middleware.request_ids import RequestIds
from mlwarden.middleware.routes import RouteLabels
from mlwarden.middleware.throttle import Throttle
from mlwarden.middleware.tracing import RequestSpan, RequestTracer
from mlwarden.middleware.tracker import FeedbackRouter, ModelTracker

__all__ = ["InferenceMonitor"]

log = logging.getLogger("mlwarden.middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Model exchanges are read in batches of this many, or sooner once their bodies add up to this
# many bytes (the memory bound of the queue), and always before statistics are used.
_READ_BATCH = 64
_READ_BATCH_BYTES = 1024 * 1024


class InferenceMonitor:
    """Watches a model server: traces, latency, payload features, drift, predictions, health.

    Add it with ``app.add_middleware(InferenceMonitor, model_name="churn", model_version="3",
    baseline="baseline.json")``; every option is keyword-only and described in the README.
    Invalid options never raise here (Starlette builds middleware lazily, inside the server's
    lifespan, where an exception would be mistaken for "lifespan unsupported"): they fail the
    lifespan start-up with a message naming each problem, and are raised on any request.
    Once the app has started, the instance is ``app.state.mlwarden_monitor`` and
    :func:`~mlwarden.middleware.lookup.find_monitor` finds it.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.startup_error: ConfigError | None = None
        try:
            self.options = MonitorOptions.from_kwargs(options)
        except ConfigError as exc:
            self.startup_error = exc
            log.error("mlwarden: %s", exc)
            return
        o = self.options
        self.registry = o.registry if o.registry is not None else REGISTRY
        self.metrics = MonitorMetrics.for_registry(
            self.registry, prediction_buckets=o.prediction_buckets
        )
        self._is_suffix = tuple(o.endpoint_suffixes)
        self._endpoint_paths = frozenset(o.endpoint_paths)
        self._endpoint_methods = frozenset(x.upper() for x in o.endpoint_methods)
        self._routes = RouteLabels(app)
        self._tracer = RequestTracer(tracer_provider=o.tracer_provider) if o.tracing else None
        self._started_at = time.monotonic()
        self._running = False
        # One tracker per model (models/tracker): with model_paths, each request's model is
        # read from its path; else every request is the one model's.
        self._paths: ModelPaths | None = None
        self.models: ModelRegistry | None = None
        self._single: ModelTracker | None = None
        if o.model_paths is not None:
            self._paths = ModelPaths(o.model_paths)
            self.models = ModelRegistry(
                make=self._make_tracker,
                default_version=o.model_version,
                baselines=o.baselines,
                max_models=o.max_models,
            )
            self.models.on_new = self._tracker_added
        else:
            self._single = self._make_tracker(o.model_name, o.model_version, o.baseline)
        # Our endpoints never shadow what the app answers at the same path (see _may_serve).
        self._own: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {}
        # With several models, /-/health/{model} too: the prefix and its endpoint.
        self._model_health: tuple[str, ASGIApp] | None = None
        health_endpoint: ASGIApp
        if self.models is not None:
            self.models_health = ModelsHealth(
                self.models, before=self.drain, started_at=self._started_at
            )
            health_endpoint = ModelsHealthEndpoint(self.models_health, path=o.health_path or "")
        else:
            health_endpoint = HealthEndpoint(self.health_report)
        for path, option, endpoint in (
            (o.health_path, "health_path", health_endpoint),
            (o.metrics_path, "metrics_path", MetricsEndpoint(self.registry, before=self._refresh)),
        ):
            if path and self._may_serve(path, option):
                self._own[path] = endpoint
                if option == "health_path" and self.models is not None:
                    self._model_health = (path.rstrip("/") + "/", endpoint)
        if o.drift_path:
            export = DriftExportEndpoint(self._drift_tracker, path=o.drift_path, before=self.drain)
            for path in export.paths:
                if self._may_serve(path, "drift_path"):
                    self._own[path] = export
        # Ground truth: ids on scored requests, their predictions remembered, labels joined.
        self._request_ids: RequestIds | None = None
        self.feedback: Any = None
        self._feedback_path: str | None = None
        self._serve_feedback: FeedbackEndpoint | None = None
        if o.request_id_header is not None:
            self._request_ids = RequestIds(o.request_id_header)
            if self._single is not None:
                self.feedback = self._single.feedback
            else:
                models = self.models
                assert models is not None and models.other.feedback is not None
                self.feedback = FeedbackRouter(
                    lambda: [*models, models.other], models.other.feedback
                )
            if o.feedback_path and self._may_serve(o.feedback_path, "feedback_path"):
                self._feedback_path = o.feedback_path
                self._serve_feedback = FeedbackEndpoint(
                    self.feedback, path=o.feedback_path, before=self.drain
                )
        self._pending: list[tuple[ModelTracker, Exchange]] = []
        self._pending_bytes = 0
        self._internal_log = Throttle(time.monotonic, 60.0)

    def _make_tracker(
        self, name: str, version: str, baseline: BaselineProfile | None
    ) -> ModelTracker:
        return ModelTracker(
            self.options,
            self.metrics,
            name=name,
            version=version,
            baseline=baseline,
            drain=self.drain,
        )

    def _tracker_added(self, tracker: ModelTracker) -> None:
        """A model seen for the first time while serving: its drift worker starts now."""
        if self._running:
            with contextlib.suppress(RuntimeError):  # no running loop (made from a thread)
                tracker.start()

    def _drift_tracker(self, model: str | None) -> ModelTracker | None:
        """The tracker whose drift counts ``{drift_path}/counts?model=`` asks for."""
        if self._single is not None:
            return self._single if model in (None, self._single.name) else None
        assert self.models is not None
        return self.models.get(model) if model else None

    def trackers(self) -> list[ModelTracker]:
        """Every model's tracker (and ``other``'s, with several models)."""
        if self._single is not None:
            return [self._single]
        assert self.models is not None
        return [*self.models, self.models.other]

    # The one model's parts (a single-model monitor): what they were before trackers.
    @property
    def tracker(self) -> ModelTracker:
        if self._single is None:
            raise AttributeError("a multi-model monitor has one tracker per model (.models)")
        return self._single

    @property
    def health_window(self) -> Any:
        return self.tracker.health_window

    @property
    def windows(self) -> Any:
        return self.tracker.windows if self._single is not None else None

    @property
    def worker(self) -> Any:
        return self.tracker.worker if self._single is not None else None

    @property
    def shipper(self) -> Any:
        return self.tracker.shipper if self._single is not None else None

    def _may_serve(self, path: str, option: str) -> bool:
        """Whether our endpoint may answer ``path``: never over one the app has (or may have).

        The rule is :mod:`~mlwarden.middleware.route_table`'s: a route at the path, a mounted
        app or a route object we cannot read is left alone; a template with parameters that
        merely matches, or an app without a readable routing table, is answered in front of.
        Whatever the app has there is named in a warning.
        """
        claim = self._routes.claim(path)
        if claim is None:
            return True
        if claim.owns:
            log.warning(
                "mlwarden: %s answers %s; mlwarden does not serve its own there (%s)",
                claim.describe(),
                path,
                option,
            )
            return False
        log.warning(
            "mlwarden: mlwarden answers %s in front of %s (set %s to another path, or None, "
            "to leave it to the app)",
            path,
            claim.describe(),
            option,
        )
        return True

    # -- ASGI entry point -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.startup_error is not None:
                raise self.startup_error
            if not self._running:
                self._start_background()
            path = scope["path"]
            own = self._own.get(path)
            if own is None and self._model_health is not None:
                prefix, endpoint = self._model_health
                if path.startswith(prefix):
                    own = endpoint
            if own is not None and scope["method"] in ("GET", "HEAD"):
                await own(scope, receive, send)
                return
            if path == self._feedback_path and scope["method"] == "POST":
                assert self._serve_feedback is not None
                await self._serve_feedback(scope, receive, send)
                return
            if self._paths is not None:
                await self._observe_models(scope, receive, send, path)
                return
            model = scope["method"] in self._endpoint_methods and (
                path.endswith(self._is_suffix) or path in self._endpoint_paths
            )
            assert self._single is not None
            await self._observe(scope, receive, send, model, self._single, None)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _observe_models(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """A multi-model request: its model from its path (the app's root path left out)."""
        assert self._paths is not None and self.models is not None
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        found = self._paths.match(path)
        if found is None:
            await self._observe(scope, receive, send, False, self.models.other, None)
            return
        tracker = self.models.existing(found[0])
        model = scope["method"] in self._endpoint_methods
        await self._observe(scope, receive, send, model, tracker, found)

    async def _observe(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: bool,
        tracker: ModelTracker,
        found: tuple[str, str | None] | None,
    ) -> None:
        o = self.options
        exchange = Exchange(
            receive,
            send,
            model=model,
            max_request=o.max_body_bytes,
            max_response=o.max_response_bytes,
        )
        if model and self._request_ids is not None:
            exchange.request_id = self._request_ids.for_request(scope["headers"])
            exchange.request_id_header = self._request_ids.header
        root_path = scope.get("root_path", "")
        span = None
        if self._tracer is not None:
            try:
                name, version = found if found is not None else (tracker.name, None)
                span = self._tracer.start(scope, name, version or tracker.version)
            except Exception:
                self._internal_error("starting the span", tracker)
        in_flight = tracker.in_flight
        in_flight.inc()
        error: BaseException | None = None
        try:
            await self.app(scope, exchange.receive if model else receive, exchange.send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            in_flight.dec()
            end = time.perf_counter()
            if span is not None:
                span.detach()
            try:
                if found is not None and self.models is not None:
                    # The tracker this request counts under: made now for a model that has
                    # none yet (its baseline exists, or it answered 2xx); one without a
                    # baseline looks for it again.
                    status = exchange.status
                    answered = status is not None and 200 <= int(status) < 300
                    tracker = self.models.resolve(found[0], found[1], answered)
                self._record(scope, root_path, exchange, span, model, error, end, tracker)
            except Exception:
                self._internal_error("recording the request", tracker)

    # -- recording, after the response --------------------------------------------------------

    def _record(
        self,
        scope: Scope,
        root_path: str,
        ex: Exchange,
        span: RequestSpan | None,
        model: bool,
        error: BaseException | None,
        end: float,
        tracker: ModelTracker,
    ) -> None:
        status = int(ex.status) if ex.status is not None else None
        # No status: the app raised before answering, and the server sends a 500.
        status_class = "5xx" if status is None else class_of(status)
        route = self._routes.label(scope, root_path, status)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        duration_child, ttfb_child, exceptions_child = tracker.children(route, method, status_class)
        if ex.last_byte is None:  # no last body message: the response ended when the app did
            ex.last_byte = end
        end = ex.last_byte
        trace_id = span.trace_id if span is not None else None
        exemplar = {"trace_id": trace_id} if trace_id else None
        duration_child.observe(end - ex.start, exemplar)
        if ex.first_byte is not None:
            ttfb_child.observe(ex.first_byte - ex.start, exemplar)
        if error is not None:
            exceptions_child.inc()
        attributes: dict[str, Any] = {}
        if model:
            failed = error is not None or status is None or status >= 500
            tracker.health_window.record(end - ex.start, failed)
            ex.request_type = header(scope, b"content-type")
            ex.status = status
            if span is None:
                self._defer(tracker, ex)
            else:  # the span wants the payload's figures before it ends
                tracker.read(ex, attributes)
        if span is not None:
            span.finish(
                route=route,
                status=status,
                error=error,
                attributes=attributes,
                end_time_ns=time.time_ns() - int((time.perf_counter() - end) * 1e9),
            )

    def _defer(self, tracker: ModelTracker, ex: Exchange) -> None:
        """Queue a model exchange; read queued ones together once enough have gathered.

        Reading a few dozen payloads in one go keeps the parser's code and data warm in the
        CPU caches instead of interleaving it with the app's (measured: the same reading costs
        about twice as much per request when interleaved). Bounded by count and by bytes.
        """
        ex.release()
        self._pending.append((tracker, ex))
        self._pending_bytes += ex.request_size + ex.response_size
        if len(self._pending) >= _READ_BATCH or self._pending_bytes >= _READ_BATCH_BYTES:
            self.drain()

    def drain(self) -> None:
        """Read every queued exchange now (before statistics are evaluated or served)."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for tracker, ex in pending:
            try:
                tracker.read(ex, None)
            except Exception:
                self._internal_error("reading a payload", tracker)

    def _internal_error(self, what: str, tracker: ModelTracker | None = None) -> None:
        tracker = tracker or self._single or (self.models.other if self.models else None)
        if tracker is not None:
            tracker.internal_errors.inc()
        if self._internal_log.ready():
            log.exception("mlwarden: internal error while %s (the request was not affected)", what)

    # -- what our own endpoints serve --------------------------------------------------------

    def _refresh(self) -> None:
        """Before metrics are served: queued exchanges read, quality gauges set."""
        self.drain()
        for tracker in self.trackers():
            tracker.publish_quality()

    def record_labels(self, entries: Any) -> dict[str, int]:
        """Labels from Python (a batch job joining them): ``[{"request_id", "label"}, ...]``;
        counts of accepted, unknown, expired, duplicate and invalid, as the endpoint answers."""
        if self.startup_error is not None:
            raise self.startup_error
        if self.feedback is None:
            raise RuntimeError(
                "request ids are off (request_id_header=None): no predictions "
                "are remembered to join labels with"
            )
        self.drain()
        return dict(self.feedback.record(entries))

    def health_report(self, model: str | None = None) -> HealthReport:
        """The health report as served at ``/-/health`` (:meth:`HealthReport.to_json`); with
        several models, ``model``'s (KeyError for one not tracked)."""
        self.drain()
        if self._single is not None and model is None:
            return self._single.health_report(self._started_at)
        if self.models is None:
            raise KeyError(f"model {model!r}: this monitor watches {self.options.model_name!r}")
        if model is None:
            raise KeyError("model: required with several models (or see models_health)")
        tracker = self.models.get(model)
        if tracker is None:
            raise KeyError(f"model {model!r} is not tracked")
        return tracker.health_report(self._started_at)

    # -- lifespan and background tasks ----------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A handle for the app's code, set before its start-up runs (the outermost monitor's).
        state = getattr(scope.get("app"), "state", None)
        if state is not None and not hasattr(state, "mlwarden_monitor"):
            state.mlwarden_monitor = self
        if self.startup_error is not None:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send(
                    {
                        "type": "lifespan.startup.failed",
                        "message": f"mlwarden: {self.startup_error}",
                    }
                )
            return

        async def wrapped_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._start_background()
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        await self.app(scope, receive, wrapped_send)

    def _start_background(self) -> None:
        if self._running:
            return
        asyncio.get_running_loop()  # raises outside a loop: nothing is marked running
        self._running = True
        for tracker in self.trackers():
            tracker.start()

    async def aclose(self) -> None:
        """Stop the background tasks; a last bounded attempt to ship buffered statistics."""
        self.drain()
        self._running = False
        for tracker in self.trackers():
            await tracker.aclose()
