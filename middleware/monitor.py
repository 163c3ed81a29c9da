"""``InferenceMonitor``: the pure ASGI middleware that watches a model server.

Each HTTP request runs the same order: guard (own endpoints, which requests are model
endpoints), wrap ``receive``/``send`` in a per-request :class:`_Exchange`, delegate to the app,
record in ``finally``. Nothing request-scoped is kept on the middleware. The request body is
teed as the app reads it (never read ahead), so the app sees exactly the messages it would
see without us; payloads and predictions are parsed after the response's last byte is sent.
Anything that goes wrong in here is counted and logged, never raised into the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from mlwarden.middleware.errors import ConfigError, PayloadError
from mlwarden.middleware.evaluation import DriftWorker
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.feedback import Feedback, RequestIds
from mlwarden.middleware.health import FAILING, HealthWindow, health_report
from mlwarden.middleware.health_report import HealthReport
from mlwarden.middleware.influx import InfluxShipper
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.middleware.options import MonitorOptions
from mlwarden.middleware.payloads import PayloadParser
from mlwarden.middleware.predictions import PredictionReader
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
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_JSON_TYPES = (b"application/json", b"text/json")
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
        self._rows_scored = m.rows_scored.labels(*mv)
        self._unknown_features = m.unknown_features.labels(*mv)
        self._prediction_values = m.predictions.labels(*mv)
        self._confidence = m.confidence.labels(*mv)
        self._classes = {c: m.predicted_classes.labels(*mv, c) for c in o.prediction_classes}
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

        self._is_suffix = tuple(o.endpoint_suffixes)
        self._endpoint_paths = frozenset(o.endpoint_paths)
        self._endpoint_methods = frozenset(x.upper() for x in o.endpoint_methods)
        self._routes = RouteLabels(app)
        self._tracer = RequestTracer(tracer_provider=o.tracer_provider) if o.tracing else None
        # Without a baseline the parser still counts rows and payload errors.
        self._parser = PayloadParser(
            features=o.feature_names, extractor=o.feature_extractor, max_rows=o.max_rows
        )
        self._reader = PredictionReader(
            prediction_path=o.prediction_path,
            confidence_path=o.confidence_path,
            max_items=o.max_rows,
        )
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
                shipper=self.shipper,
                before=self.drain,
            )
        # Our endpoints never shadow a route the app has at the same path.
        self._own: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {}
        self._feedback_path: str | None = None
        for path, endpoint in (
            (o.health_path, self._serve_health),
            (o.metrics_path, self._serve_metrics),
        ):
            if not path:
                continue
            if self._routes.serves(path):
                log.warning("mlwarden: the app serves %s itself; not mounting a second one", path)
            else:
                self._own[path] = endpoint
        # Ground truth: ids on scored requests, their predictions remembered, labels joined.
        self._request_ids: RequestIds | None = None
        self.feedback: Feedback | None = None
        if o.request_id_header is not None:
            self._request_ids = RequestIds(o.request_id_header)
            self.feedback = Feedback.from_options(o, metrics=m)
            if o.feedback_path:
                if self._routes.serves(o.feedback_path):
                    log.warning(
                        "mlwarden: the app serves %s itself; not mounting feedback", o.feedback_path
                    )
                else:
                    self._feedback_path = o.feedback_path
        self._internal_errors = m.internal_errors
        self._pending: list[_Exchange] = []
        self._pending_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()
        self._internal_log = Throttle(time.monotonic, 60.0)

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
        exchange = _Exchange(
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
        ex: _Exchange,
        span: RequestSpan | None,
        model: bool,
        error: BaseException | None,
        end: float,
    ) -> None:
        status = int(ex.status) if ex.status is not None else None
        if status is None:
            status_class = "5xx"  # the app raised before answering: the server sends a 500
        else:
            status_class = _STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
        route = self._routes.label(scope, root_path, status)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        duration_child, ttfb_child, exceptions_child = self._children_for(
            route, method, status_class
        )
        end = ex.last_byte or end
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
            ex.request_type = _header(scope, b"content-type")
            ex.status = status
            if span is None:
                self._defer(ex)
            else:  # the span wants the payload's figures before it ends
                self._read_exchange(ex, attributes)
        if span is not None:
            span.finish(
                method=method,
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

    def _defer(self, ex: _Exchange) -> None:
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

    def _read_exchange(self, ex: _Exchange, attributes: dict[str, Any] | None) -> None:
        self._read_payload(ex, attributes)
        if ex.status is not None and 200 <= ex.status < 300:
            self._read_predictions(ex, attributes)

    def _payload_error(self, reason: str) -> None:
        o = self.options
        self.metrics.payload_errors.labels(o.model_name, o.model_version, reason).inc()

    def _read_payload(self, ex: _Exchange, attributes: dict[str, Any] | None) -> None:
        if ex.request_overflow:
            reason = "too_large"
        elif not ex.request_complete:
            reason = "body_not_read"
        else:
            body = b"".join(ex.request_chunks)
            try:
                batch = self._parser.parse(body, ex.request_type)
            except PayloadError as exc:
                reason = exc.reason
            else:
                self._rows_scored.inc(batch.rows)
                if batch.unknown_features:
                    self._unknown_features.inc(batch.unknown_features)
                if attributes is not None:
                    attributes["mlwarden.payload.rows"] = batch.rows
                    attributes["mlwarden.payload.format"] = batch.format
                if self.windows is not None and batch.rows:
                    self.windows.add(batch)
                    assert self.worker is not None
                    self.worker.rows_added(batch.rows)
                return
        self._payload_error(reason)
        if attributes is not None:
            attributes["mlwarden.payload.error"] = reason

    def _read_predictions(self, ex: _Exchange, attributes: dict[str, Any] | None) -> None:
        o = self.options
        reason = None
        body = b""
        if ex.response_overflow:
            reason = "too_large"
        elif not ex.response_json:
            reason = "not_json"
        else:
            body = b"".join(ex.response_chunks)
            if ex.response_encoding:
                body, reason = _decode(body, ex.response_encoding, o.max_response_bytes)
        if reason is None:
            try:
                predictions = self._reader.read(body, "application/json")
            except PayloadError as exc:
                reason = exc.reason
        if reason is not None:
            self.metrics.predictions_skipped.labels(o.model_name, o.model_version, reason).inc()
            if attributes is not None:
                attributes["mlwarden.prediction.skipped"] = reason
            return
        values, classes, confidences = (
            predictions.values,
            predictions.classes,
            predictions.confidences,
        )
        observe = self._prediction_values.observe
        for value in values:
            observe(value)
        if classes:
            other = None
            for cls in classes:
                child = self._classes.get(cls)
                if child is None:
                    other = other or self.metrics.predicted_classes.labels(
                        o.model_name, o.model_version, "other"
                    )
                    child = other
                child.inc()
        if confidences:
            observe = self._confidence.observe
            for confidence in confidences:
                observe(confidence)
            mean_confidence = sum(confidences) / len(confidences)
            self.health_window.record_confidence(mean_confidence)
            if attributes is not None:
                attributes["mlwarden.prediction.mean_confidence"] = mean_confidence
        if attributes is not None:
            attributes["mlwarden.prediction.count"] = predictions.count
            if values:
                attributes["mlwarden.prediction.mean"] = sum(values) / len(values)
        if ex.request_id is not None and self.feedback is not None:
            self.feedback.remember(ex.request_id, classes, values, confidences)

    def _internal_error(self, what: str) -> None:
        o = self.options
        self._internal_errors.labels(o.model_name, o.model_version).inc()
        if self._internal_log.ready():
            log.exception("mlwarden: internal error while %s (the request was not affected)", what)

    # -- our own endpoints --------------------------------------------------------------------

    async def _serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.drain()
        if self.feedback is not None:
            self.feedback.publish()
        encoder, content_type = choose_encoder(_header(scope, b"accept") or "")
        body = encoder(self.registry)
        await _respond(send, 200, body, content_type.encode("latin-1"), scope["method"])

    async def _serve_health(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = self.health_report()
        status = 503 if report.status == FAILING else 200
        await _respond(send, status, report.to_json(), b"application/json", scope["method"])

    async def _serve_feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        feedback = self.feedback
        assert feedback is not None
        if not feedback.authorized(_header(scope, b"authorization")):
            await _respond(
                send, 401, b'{"error":"missing or wrong bearer token"}', b"application/json", "POST"
            )
            return
        body, too_large = await _read_body(receive, feedback.max_body_bytes)
        if too_large:
            await _respond(
                send,
                413,
                json.dumps({"error": f"body above {feedback.max_body_bytes} bytes"}).encode(),
                b"application/json",
                "POST",
            )
            return
        try:
            entries = feedback.parse(body)
        except ValueError as exc:
            await _respond(
                send, 400, json.dumps({"error": str(exc)}).encode(), b"application/json", "POST"
            )
            return
        self.drain()  # predictions answered a moment ago may still be queued
        result = feedback.record(entries)
        await _respond(send, 200, json.dumps(result).encode(), b"application/json", "POST")

    def record_labels(self, entries: Any) -> dict[str, int]:
        """Labels from Python (a batch job joining them): ``[{"request_id", "label"}, ...]``;
        counts of accepted, unknown, expired, duplicate and invalid, as the endpoint answers."""
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


class _Exchange:
    """One request/response pair: timings, status and bounded copies of the bodies."""

    __slots__ = (
        "_max_request",
        "_max_response",
        "_model",
        "_receive",
        "_send",
        "first_byte",
        "last_byte",
        "request_chunks",
        "request_complete",
        "request_id",
        "request_id_header",
        "request_overflow",
        "request_size",
        "request_type",
        "response_chunks",
        "response_encoding",
        "response_json",
        "response_overflow",
        "response_size",
        "start",
        "status",
    )

    def __init__(
        self, receive: Receive, send: Send, *, model: bool, max_request: int, max_response: int
    ) -> None:
        self.start = time.perf_counter()
        self._receive, self._send, self._model = receive, send, model
        self._max_request, self._max_response = max_request, max_response
        self.status: int | None = None
        self.first_byte: float | None = None
        self.last_byte: float | None = None
        self.request_chunks: list[bytes] = []
        self.request_size = 0
        self.request_complete = False
        self.request_overflow = False
        self.response_chunks: list[bytes] = []
        self.response_size = 0
        self.response_json = False
        self.response_encoding: bytes | None = None
        self.response_overflow = False
        self.request_type: str | None = None
        self.request_id: bytes | None = None
        self.request_id_header = b""

    def release(self) -> None:
        """Drop the server's callables: a queued exchange keeps only what is to be read."""
        self._receive = self._send = None  # type: ignore[assignment]

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.request_complete:
            body = message.get("body", b"")
            if body and not self.request_overflow:
                self.request_size += len(body)
                if self.request_size > self._max_request:
                    self.request_overflow = True
                    self.request_chunks = []
                else:
                    self.request_chunks.append(body)
            if not message.get("more_body", False):
                self.request_complete = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._model and self.response_json and not self.response_overflow:
                body = message.get("body", b"")
                if body:
                    self.response_size += len(body)
                    if self.response_size > self._max_response:
                        self.response_overflow = True
                        self.response_chunks = []
                    else:
                        self.response_chunks.append(body)
            if not message.get("more_body", False):
                await self._send(message)
                self.last_byte = time.perf_counter()
                return
        elif kind == "http.response.start":
            self.first_byte = time.perf_counter()
            self.status = message["status"]
            if self.request_id is not None:
                message = self._with_request_id(message)
            if self._model:
                for name, value in message.get("headers", ()):
                    name = name.lower()
                    if name == b"content-type":
                        self.response_json = value.lower().startswith(_JSON_TYPES) or (
                            b"+json" in value.lower()
                        )
                    elif name == b"content-encoding":
                        encoding = value.strip().lower()
                        self.response_encoding = None if encoding == b"identity" else encoding
        await self._send(message)

    def _with_request_id(self, message: Message) -> Message:
        """The start message with the request id; an id the app set itself is adopted.

        ASGI requires lower-case header names in responses, so names are compared as sent.
        The app's message and header list are copied, never changed: an app may reuse them.
        """
        wanted = self.request_id_header
        headers = message.get("headers", ())
        for name, value in headers:
            if name == wanted:
                self.request_id = value if 0 < len(value) <= 128 else None
                return message
        copy = dict(message)
        copy["headers"] = [*headers, (wanted, self.request_id)]
        return copy


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole request body, or (b"", True) once it is above ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts), False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _decode(body: bytes, encoding: bytes, limit: int) -> tuple[bytes, str | None]:
    """Undo gzip/deflate within ``limit`` bytes; other encodings are not read."""
    if encoding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        return b"", "encoded"
    try:
        decoder = zlib.decompressobj(wbits)
        out = decoder.decompress(body, limit)
    except zlib.error:
        return b"", "encoded"
    if decoder.unconsumed_tail:
        return b"", "too_large"
    return out, None


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, method: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
