"""Every Prometheus metric the middleware exports, in one place.

Metric objects are created once per registry and shared by every monitor that uses that
registry (several apps in one process, or tests), so that a registry never sees a duplicate.
Labels are bounded: model and version come from the options, routes from the app's routing
table, feature names from the baseline, reasons from fixed sets in the code.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from mlwarden.middleware.build_info import register_build_info
from mlwarden.middleware.fastmetrics import (
    FastCounter,
    FastGauge,
    FastHistogram,
    multiprocess_mode,
)

__all__ = [
    "CONFIDENCE_BUCKETS",
    "LATENCY_BUCKETS",
    "PREDICTION_BUCKETS",
    "STATUS_CLASSES",
    "MonitorMetrics",
    "status_class",
]

# Inference latencies: 1 ms to 10 s.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# From a prediction to its label: seconds (a click) to a week (a confirmed fraud).
LABEL_DELAY_BUCKETS = (
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    86_400.0,
    3 * 86_400.0,
    7 * 86_400.0,
)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Default for numeric predictions (scores, probabilities); regressions configure their own.
PREDICTION_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_MV = ("model", "version")

#: The ``status_class`` label values; a code out of range falls in the nearest class.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """``"2xx"`` for 204, ``"5xx"`` for 599 or 700: a bounded label for any status code."""
    return STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]


class MonitorMetrics:
    """The middleware's metric family objects for one registry."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, MonitorMetrics] = (
        weakref.WeakKeyDictionary()
    )
    _lock = threading.Lock()

    @classmethod
    def for_registry(
        cls,
        registry: CollectorRegistry | None = None,
        *,
        prediction_buckets: tuple[float, ...] = PREDICTION_BUCKETS,
    ) -> MonitorMetrics:
        """The shared instance for ``registry`` (the default registry when ``None``).

        ``prediction_buckets`` only applies when the registry gets its metrics for the first
        time; a histogram's buckets cannot change once it is registered.
        """
        registry = REGISTRY if registry is None else registry
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls(registry, prediction_buckets=prediction_buckets)
                cls._by_registry[registry] = metrics
            return metrics

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        prediction_buckets: tuple[float, ...] = PREDICTION_BUCKETS,
    ) -> None:
        self.registry = registry
        self.prediction_buckets = prediction_buckets
        r = registry
        route = (*_MV, "route", "method")
        # The metrics every request touches use the lean implementations, unless values must
        # be shared between processes (prometheus_client's multiprocess mode). Each is
        # registered where prometheus_client's would be: the exposition is the same, in order.
        fast = not multiprocess_mode()
        register_build_info(r)

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> Any:
            if not fast:
                return Histogram(name, doc, labels, buckets=buckets, registry=r)
            family = FastHistogram(name, doc, labels, buckets)
            r.register(family)
            return family

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            if not fast:
                return Counter(name, doc, labels, registry=r)
            family = FastCounter(name, doc, labels)
            r.register(family)
            return family

        # Requests: every request the app serves, model endpoint or not.
        self.request_duration = histogram(
            "mlwarden_request_duration_seconds",
            "Time from the request's arrival to the last byte of the response.",
            (*route, "status_class"),
            LATENCY_BUCKETS,
        )
        self.time_to_first_byte = histogram(
            "mlwarden_time_to_first_byte_seconds",
            "Time from the request's arrival to the start of the response.",
            (*route, "status_class"),
            LATENCY_BUCKETS,
        )
        if not fast:
            self.requests_in_flight: Any = Gauge(
                "mlwarden_requests_in_flight",
                "Requests being served right now.",
                _MV,
                registry=r,
                multiprocess_mode="livesum",
            )
        else:
            self.requests_in_flight = FastGauge(
                "mlwarden_requests_in_flight", "Requests being served right now.", _MV
            )
            r.register(self.requests_in_flight)
        self.request_exceptions = Counter(
            "mlwarden_request_exceptions_total",
            "Requests in which the app raised an exception.",
            route,
            registry=r,
        )

        self.internal_errors = Counter(
            "mlwarden_internal_errors_total",
            "Errors inside the middleware itself (logged; the request was not affected).",
            _MV,
            registry=r,
        )

        # Payloads and predictions of model endpoints.
        self.payload_errors = Counter(
            "mlwarden_payload_errors_total",
            "Model requests whose payload could not be read into feature rows, by reason.",
            (*_MV, "reason"),
            registry=r,
        )
        self.rows_scored = counter(
            "mlwarden_rows_scored_total",
            "Feature rows (instances) of model requests answered 2xx: the rows the model scored.",
            _MV,
        )
        self.rows_skipped = counter(
            "mlwarden_feature_rows_skipped_total",
            "Feature rows of model requests not answered 2xx, kept out of the drift window, by "
            "status class (none: no response was started).",
            (*_MV, "status_class"),
        )
        self.unknown_features = Counter(
            "mlwarden_unknown_features_total",
            "Feature values in payloads whose names the baseline does not know (ignored).",
            _MV,
            registry=r,
        )
        self.predictions = histogram(
            "mlwarden_prediction_value",
            "Numeric predictions read from model responses.",
            _MV,
            prediction_buckets,
        )
        self.predicted_classes = counter(
            "mlwarden_predicted_class_total",
            "Class predictions read from model responses (classes outside the configured set "
            "count as 'other').",
            (*_MV, "class"),
        )
        self.confidence = histogram(
            "mlwarden_prediction_confidence",
            "Confidence of each prediction (top-class probability or reported score).",
            _MV,
            CONFIDENCE_BUCKETS,
        )
        self.predictions_skipped = Counter(
            "mlwarden_predictions_skipped_total",
            "Model responses whose predictions were not read, by reason.",
            (*_MV, "reason"),
            registry=r,
        )

        # Features and drift, refreshed by the statistics worker.
        self.feature_mean = Gauge(
            "mlwarden_feature_mean",
            "Mean of a numeric feature over the drift window.",
            (*_MV, "feature"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_null_ratio = Gauge(
            "mlwarden_feature_null_ratio",
            "Share of missing values of a feature over the drift window.",
            (*_MV, "feature"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # The whole window's descriptive statistics, one name each (their scales differ: no
        # one threshold fits all three); the decision is feature_drift_ratio's.
        self.feature_psi = Gauge(
            "mlwarden_feature_psi",
            "Population stability index of a feature's whole window against the baseline; "
            "reported, not deciding.",
            (*_MV, "feature"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_ks_distance = Gauge(
            "mlwarden_feature_ks_distance",
            "Kolmogorov-Smirnov distance D (0 to 1) of a numeric feature's whole window from "
            "the baseline; reported, not deciding.",
            (*_MV, "feature"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_chi2_statistic = Gauge(
            "mlwarden_feature_chi2_statistic",
            "Chi-square statistic of a categorical feature's whole window against the "
            "baseline's category shares; reported, not deciding.",
            (*_MV, "feature"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_drift_pvalue = Gauge(
            "mlwarden_feature_drift_pvalue",
            "Textbook p-value of a feature's ks or chi2 statistic over the whole window; "
            "reported, not deciding.",
            (*_MV, "feature", "method"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_drift_ratio = Gauge(
            "mlwarden_feature_drift_ratio",
            "A feature's drift test statistic over its calibrated threshold, on the window "
            "scale closest to firing (location, spread, shape, chi2): the test fires at 1.",
            (*_MV, "feature", "test"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_drifted = Gauge(
            "mlwarden_feature_drifted",
            "1 when the feature drifted in the last evaluation, else 0.",
            (*_MV, "feature"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.drift_detected = Gauge(
            "mlwarden_drift_detected",
            "1 when any feature drifted in the last evaluation, else 0.",
            _MV,
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.window_rows = Gauge(
            "mlwarden_drift_window_rows",
            "Rows in the drift window at the last evaluation.",
            _MV,
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.drift_evaluations = Counter(
            "mlwarden_drift_evaluations_total",
            "Drift evaluations run.",
            _MV,
            registry=r,
        )
        self.drift_evaluation_duration = Histogram(
            "mlwarden_drift_evaluation_duration_seconds",
            "Time one drift evaluation of all features took.",
            _MV,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )

        # Shipping statistics to InfluxDB.
        self.influx_points_written = Counter(
            "mlwarden_influx_points_written_total",
            "Points written to InfluxDB.",
            _MV,
            registry=r,
        )
        self.influx_points_dropped = Counter(
            "mlwarden_influx_points_dropped_total",
            "Points never written to InfluxDB, by reason (buffer_full, rejected, shutdown).",
            (*_MV, "reason"),
            registry=r,
        )
        self.influx_write_errors = Counter(
            "mlwarden_influx_write_errors_total",
            "Failed write attempts to InfluxDB (the points stay buffered and are retried).",
            _MV,
            registry=r,
        )
        self.influx_buffer_points = Gauge(
            "mlwarden_influx_buffer_points",
            "Points waiting to be written to InfluxDB.",
            _MV,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.influx_write_duration = Histogram(
            "mlwarden_influx_write_duration_seconds",
            "Duration of one write to InfluxDB, failed or not.",
            _MV,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Ground truth: labels joined with remembered predictions, live quality.
        self.feedback_labels = Counter(
            "mlwarden_feedback_labels_total",
            "Labels received, by result: accepted, unknown, expired, duplicate, invalid.",
            (*_MV, "result"),
            registry=r,
        )
        self.label_delay = Histogram(
            "mlwarden_label_delay_seconds",
            "Time from a prediction to its label.",
            _MV,
            buckets=LABEL_DELAY_BUCKETS,
            registry=r,
        )
        self.model_quality = Gauge(
            "mlwarden_model_quality",
            "Live quality over the labelled window, by metric: accuracy, precision, recall, "
            "f1, calibration_error (classification); mae, rmse (regression).",
            (*_MV, "metric"),
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.model_quality_samples = Gauge(
            "mlwarden_model_quality_samples",
            "Labelled predictions in the quality window.",
            _MV,
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.predictions_remembered = Gauge(
            "mlwarden_predictions_remembered",
            "Predictions remembered, waiting for a label.",
            _MV,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.predictions_unlabelled = Counter(
            "mlwarden_predictions_unlabelled_total",
            "Remembered predictions evicted without ever getting a label (age or count bound).",
            _MV,
            registry=r,
        )
        self.predictions_unlabelled_ratio = Gauge(
            "mlwarden_predictions_unlabelled_ratio",
            "Share of remembered predictions, once decided, that never got a label.",
            _MV,
            registry=r,
            multiprocess_mode="mostrecent",
        )
