"""What a finished model exchange tells, read after its response has been sent.

:class:`ExchangeReader` turns one :class:`~mlwarden.middleware.exchange.Exchange` into
statistics: the request payload (:mod:`mlwarden.middleware.payloads`) into the rows-scored and
unknown-feature counters, the feature windows and the drift worker; the response's
predictions (:mod:`mlwarden.middleware.predictions`) into the prediction, class and confidence
metrics, the health window's mean confidence and the remembered predictions (timed by when the
response ended, not by when it is read). Why a payload or an answer could not be read is
counted by reason. The monitor calls it in batches off the
request path, or at once when a span wants the figures before it ends.

Only the rows of requests answered 2xx are scored and enter the windows: a request the app
rejected (a 422 for a malformed row), failed or never answered says nothing about the traffic
the model serves, and a burst of them would pass for drift. Their rows are counted by status
class instead; their payload errors and unknown features are counted as for any other.
"""

from __future__ import annotations

from typing import Any

from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.evaluation import DriftWorker
from mlwarden.middleware.exchange import Exchange, decode_body
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.feedback import Feedback
from mlwarden.middleware.health import HealthWindow
from mlwarden.middleware.metrics import STATUS_CLASSES, MonitorMetrics, status_class
from mlwarden.middleware.options import MonitorOptions
from mlwarden.middleware.payloads import PayloadParser
from mlwarden.middleware.predictions import PredictionReader

__all__ = ["ExchangeReader"]

# Status classes whose rows are skipped: every class but 2xx, and "none" (no response started:
# the app raised first, or the client left).
_SKIPPED_CLASSES = (*(c for c in STATUS_CLASSES if c != "2xx"), "none")


class ExchangeReader:
    """Reads finished model exchanges of one monitor into its metrics and windows."""

    __slots__ = (
        "_classes",
        "_confidence",
        "_feedback",
        "_health_window",
        "_max_response",
        "_metrics",
        "_mv",
        "_parser",
        "_prediction_values",
        "_reader",
        "_rows_scored",
        "_rows_skipped",
        "_unknown_features",
        "_windows",
        "_worker",
    )

    def __init__(
        self,
        options: MonitorOptions,
        metrics: MonitorMetrics,
        *,
        health_window: HealthWindow,
        windows: FeatureWindows | None,
        worker: DriftWorker | None,
        feedback: Feedback | None,
    ) -> None:
        o = options
        mv = self._mv = (o.model_name, o.model_version)
        self._metrics = metrics
        self._rows_scored = metrics.rows_scored.labels(*mv)
        # Every class up front: a fixed set of series, whatever the app answers.
        self._rows_skipped = {c: metrics.rows_skipped.labels(*mv, c) for c in _SKIPPED_CLASSES}
        self._unknown_features = metrics.unknown_features.labels(*mv)
        self._prediction_values = metrics.predictions.labels(*mv)
        self._confidence = metrics.confidence.labels(*mv)
        self._classes = {c: metrics.predicted_classes.labels(*mv, c) for c in o.prediction_classes}
        # Without a baseline the parser still counts rows and payload errors.
        self._parser = PayloadParser(
            features=o.feature_names, extractor=o.feature_extractor, max_rows=o.max_rows
        )
        self._reader = PredictionReader(
            prediction_path=o.prediction_path,
            confidence_path=o.confidence_path,
            max_items=o.max_rows,
        )
        self._max_response = o.max_response_bytes
        self._health_window = health_window
        self._windows = windows
        self._worker = worker
        self._feedback = feedback

    def read(self, ex: Exchange, attributes: dict[str, Any] | None) -> None:
        """Read one finished exchange; ``attributes`` (the span's, or None) get its figures."""
        answered = ex.status is not None and 200 <= ex.status < 300
        self._read_payload(ex, answered, attributes)
        if answered:
            self._read_predictions(ex, attributes)

    def _payload_error(self, reason: str) -> None:
        self._metrics.payload_errors.labels(*self._mv, reason).inc()

    def _read_payload(
        self, ex: Exchange, answered: bool, attributes: dict[str, Any] | None
    ) -> None:
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
                if batch.unknown_features:
                    self._unknown_features.inc(batch.unknown_features)
                if attributes is not None:
                    attributes["mlwarden.payload.rows"] = batch.rows
                    attributes["mlwarden.payload.format"] = batch.format
                if not answered:
                    if batch.rows:
                        kind = "none" if ex.status is None else status_class(ex.status)
                        self._rows_skipped[kind].inc(batch.rows)
                    return
                self._rows_scored.inc(batch.rows)
                if self._windows is not None and batch.rows:
                    self._windows.add(batch)
                    assert self._worker is not None
                    self._worker.rows_added(batch.rows)
                return
        self._payload_error(reason)
        if attributes is not None:
            attributes["mlwarden.payload.error"] = reason

    def _read_predictions(self, ex: Exchange, attributes: dict[str, Any] | None) -> None:
        reason = None
        body = b""
        if ex.response_overflow:
            reason = "too_large"
        elif not ex.response_json:
            reason = "not_json"
        else:
            body = b"".join(ex.response_chunks)
            if ex.response_encoding:
                body, reason = decode_body(body, ex.response_encoding, self._max_response)
        if reason is None:
            try:
                predictions = self._reader.read(body, "application/json")
            except PayloadError as exc:
                reason = exc.reason
        if reason is not None:
            self._metrics.predictions_skipped.labels(*self._mv, reason).inc()
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
                    other = other or self._metrics.predicted_classes.labels(*self._mv, "other")
                    child = other
                child.inc()
        if confidences:
            observe = self._confidence.observe
            for confidence in confidences:
                observe(confidence)
            mean_confidence = sum(confidences) / len(confidences)
            self._health_window.record_confidence(mean_confidence)
            if attributes is not None:
                attributes["mlwarden.prediction.mean_confidence"] = mean_confidence
        if attributes is not None:
            attributes["mlwarden.prediction.count"] = predictions.count
            if values:
                attributes["mlwarden.prediction.mean"] = sum(values) / len(values)
        if ex.request_id is not None and self._feedback is not None:
            self._feedback.remember(ex.request_id, classes, values, confidences, ended=ex.last_byte)
