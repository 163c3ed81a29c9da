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

from mlwarden.middleware.endpoints import FeedbackEndpoint, HealthEndpoint, MetricsEndpoint, header
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.evaluation import DriftWorker
from mlwarden.middleware.exchange import Exchange
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.feedback import Feedback
from mlwarden.middleware.health import HealthWindow, health_report
from mlwarden.middleware.health_report import HealthReport
from mlwarden.middleware.influx import InfluxShipper
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.middleware.metrics import status_class as class_of
from mlwarden.middleware.options import MonitorOptions
from mlwarden.middleware.reading import ExchangeReader
from mlwarden.middleware.request_ids import RequestIds
from mlwarden.middleware.routes import RouteLabels
from mlwarden.middleware.throttle import Throttle
from mlwarden.middleware.tracing import RequestSpan, RequestTracer

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
        m, mv = self.metrics, (o.model_name, o.model_version)
        self._in_flight = m.requests_in_flight.labels(*mv)
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

        self._is_suffix = tuple(o.endpoint_suffixes)
        self._endpoint_paths = frozenset(o.endpoint_paths)
        self._endpoint_methods = frozenset(x.upper() for x in o.endpoint_methods)
        self._routes = RouteLabels(app)
        self._tracer = RequestTracer(tracer_provider=o.tracer_provider) if o.tracing else None
        self.health_window = HealthWindow(
            max_requests=o.health.max_requests, max_age_s=o.health.window_s
        )
        self.windows: FeatureWindows | None = None
        self.worker: DriftWorker | None = None
        self.shipper: InfluxShipper | None = None
        if o.baseline is not None:
            self.windows = FeatureWindows(
                o.baseline, max_rows=o.window_rows, max_age_s=o.window_seconds
            )
            if o.influx is not None:
                self.shipper = InfluxShipper(
                    o.influx, model=o.model_name, version=o.model_version, metrics=m
                )
            self.worker = DriftWorker(
                self.windows,
                o.drift,
                metrics=m,
                model=o.model_name,
                version=o.model_version,
                interval_s=o.drift_interval_s,
                every_rows=o.drift_every_rows,
                min_interval_s=o.drift_min_interval_s,
                shipper=self.shipper,
                before=self.drain,
            )
        # Our endpoints never shadow what the app answers at the same path (see _may_serve).
        self._own: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {}
        self._feedback_path: str | None = None
        for path, option, endpoint in (
            (o.health_path, "health_path", HealthEndpoint(self.health_report)),
            (o.metrics_path, "metrics_path", MetricsEndpoint(self.registry, before=self._refresh)),
        ):
            if path and self._may_serve(path, option):
                self._own[path] = endpoint
        # Ground truth: ids on scored requests, their predictions remembered, labels joined.
        self._request_ids: RequestIds | None = None
        self.feedback: Feedback | None = None
        self._serve_feedback: FeedbackEndpoint | None = None
        if o.request_id_header is not None:
            self._request_ids = RequestIds(o.request_id_header)
            self.feedback = Feedback.from_options(o, metrics=m)
            if o.feedback_path and self._may_serve(o.feedback_path, "feedback_path"):
                self._feedback_path = o.feedback_path
                self._serve_feedback = FeedbackEndpoint(
                    self.feedback, path=o.feedback_path, before=self.drain
                )
        # Bound once: the request path and drain() call it without a lookup on the reader.
        self._read_exchange = ExchangeReader(
            o,
            m,
            health_window=self.health_window,
            windows=self.windows,
            worker=self.worker,
            feedback=self.feedback,
        ).read
        self._internal_errors = m.internal_errors
        self._pending: list[Exchange] = []
        self._pending_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()
        self._internal_log = Throttle(time.monotonic, 60.0)

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
            if not self._tasks and self.worker is not None:
                self._start_background()
            path = scope["path"]
            own = self._own.get(path)
            if own is not None and scope["method"] in ("GET", "HEAD"):
                await own(scope, receive, send)
                return
            if path == self._feedback_path and scope["method"] == "POST":
                assert self._serve_feedback is not None
                await self._serve_feedback(scope, receive, send)
                return
            model = scope["method"] in self._endpoint_methods and (
                path.endswith(self._is_suffix) or path in self._endpoint_paths
            )
            await self._observe(scope, receive, send, model)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _observe(self, scope: Scope, receive: Receive, send: Send, model: bool) -> None:
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
                span = self._tracer.start(scope, o.model_name, o.model_version)
            except Exception:
                self._internal_error("starting the span")
        self._in_flight.inc()
        error: BaseException | None = None
        try:
            await self.app(scope, exchange.receive if model else receive, exchange.send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._in_flight.dec()
            end = time.perf_counter()
            if span is not None:
                span.detach()
            try:
                self._record(scope, root_path, exchange, span, model, error, end)
            except Exception:
                self._internal_error("recording the request")

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
    ) -> None:
        status = int(ex.status) if ex.status is not None else None
        # No status: the app raised before answering, and the server sends a 500.
        status_class = "5xx" if status is None else class_of(status)
        route = self._routes.label(scope, root_path, status)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        duration_child, ttfb_child, exceptions_child = self._children_for(
            route, method, status_class
        )
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
            self.health_window.record(end - ex.start, failed)
            ex.request_type = header(scope, b"content-type")
            ex.status = status
            if span is None:
                self._defer(ex)
            else:  # the span wants the payload's figures before it ends
                self._read_exchange(ex, attributes)
        if span is not None:
            span.finish(
                route=route,
                status=status,
                error=error,
                attributes=attributes,
                end_time_ns=time.time_ns() - int((time.perf_counter() - end) * 1e9),
            )

    def _children_for(self, route: str, method: str, status_class: str) -> tuple[Any, Any, Any]:
        key = (route, method, status_class)
        children = self._children.get(key)
        if children is None:
            m, o = self.metrics, self.options
            labels = (o.model_name, o.model_version, route, method)
            children = (
                m.request_duration.labels(*labels, status_class),
                m.time_to_first_byte.labels(*labels, status_class),
                m.request_exceptions.labels(*labels),
            )
            self._children[key] = children
        return children

    def _defer(self, ex: Exchange) -> None:
        """Queue a model exchange; read queued ones together once enough have gathered.

        Reading a few dozen payloads in one go keeps the parser's code and data warm in the
        CPU caches instead of interleaving it with the app's (measured: the same reading costs
        about twice as much per request when interleaved). Bounded by count and by bytes.
        """
        ex.release()
        self._pending.append(ex)
        self._pending_bytes += ex.request_size + ex.response_size
        if len(self._pending) >= _READ_BATCH or self._pending_bytes >= _READ_BATCH_BYTES:
            self.drain()

    def drain(self) -> None:
        """Read every queued exchange now (before statistics are evaluated or served)."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for ex in pending:
            try:
                self._read_exchange(ex, None)
            except Exception:
                self._internal_error("reading a payload")

    def _internal_error(self, what: str) -> None:
        o = self.options
        self._internal_errors.labels(o.model_name, o.model_version).inc()
        if self._internal_log.ready():
            log.exception("mlwarden: internal error while %s (the request was not affected)", what)

    # -- what our own endpoints serve --------------------------------------------------------

    def _refresh(self) -> None:
        """Before metrics are served: queued exchanges read, quality gauges set."""
        self.drain()
        if self.feedback is not None:
            self.feedback.publish()

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

    def health_report(self) -> HealthReport:
        """The health report as served at ``/-/health`` (:meth:`HealthReport.to_json`)."""
        self.drain()
        o = self.options
        return health_report(
            model=o.model_name,
            version=o.model_version,
            window=self.health_window,
            drift=self.worker.latest if self.worker is not None else None,
            thresholds=o.health,
            started_at=self._started_at,
            influx=self.shipper.status() if self.shipper is not None else None,
            quality=self.feedback.report() if self.feedback is not None else None,
        )

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
        if self._tasks or self.worker is None:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.worker.run(), name="mlwarden-drift"))
        if self.shipper is not None:
            self._tasks.append(loop.create_task(self.shipper.run(), name="mlwarden-influx"))

    async def aclose(self) -> None:
        """Stop the background tasks; a last bounded attempt to ship buffered statistics."""
        self.drain()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.worker is not None and self.shipper is not None:
            self.worker.evaluate_now()
        if self.shipper is not None:
            await self.shipper.aclose()
