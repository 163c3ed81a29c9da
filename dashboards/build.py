"""Builds the Grafana dashboards (JSON) from the panel lists below.

Run ``python3 -m dashboards.build`` (or ``python3 dashboards/build.py``) and commit the
output: ``mlwarden-inference.json``, ``mlwarden-sidecar.json`` (Prometheus) and
``mlwarden-influxdb.json`` (the feature statistics the middleware ships to InfluxDB, queried in
InfluxQL). Each panel is one :class:`Panel` (title, unit, description, queries), and each
group of panels starts with a :class:`Row`; :func:`dashboard` turns a list of them into
Grafana's JSON with the datasource's import input (``DS_PROMETHEUS`` or ``DS_INFLUXDB``), a
datasource variable first and chained variables (``label_values`` or ``SHOW TAG VALUES``),
``$__rate_interval`` in every ``rate()`` of a graph and ``$__range`` in a stat (a count over
the dashboard's time range), ``$timeFilter`` and ``$__interval`` in every InfluxQL query, and a
fixed ``uid``.

The Prometheus dashboards select one deployment at a time: every selector carries
``job="$job"`` and ``namespace=~"$namespace"`` (:data:`JN`), so a sum by upstream or by model
never adds up two deployments' "primary".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Panels follow the datasource variable; the variable starts on the datasource picked for the
# import input (``DS_PROMETHEUS`` / ``DS_INFLUXDB``), so one choice at import sets both.
DS = "${datasource}"
RI = "$__rate_interval"
# A stat's count over the dashboard's time range (an instant query at its end).
RANGE = "$__range"
# One deployment: a job (single choice), in a namespace or in all of them. All is ".*", which
# also matches series without a namespace label (a Prometheus outside Kubernetes).
JN = 'job="$job", namespace=~"$namespace"'
TAGS = ["mlwarden"]
WIDTH = {"timeseries": 12, "heatmap": 12, "state-timeline": 12, "stat": 6, "table": 24}


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    description: str
    queries: list[tuple[str, str]]  # (PromQL, legend) or (InfluxQL, alias)
    kind: str = "timeseries"
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    mappings: list[dict] = field(default_factory=list)
    # Draw the thresholds as lines (a timeseries whose threshold is a decision, e.g. 1).
    threshold_lines: bool = False


@dataclass(frozen=True)
class Row:
    """A row of the dashboard: the panels after it, up to the next row, are its group."""

    title: str


def rate(metric: str, sel: str) -> str:
    return f"rate({metric}{{{sel}}}[{RI}])"


def quantiles(metric: str, sel: str, by: str, qs=(0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) ({rate(metric + '_bucket', sel)}))",
            f"p{round(q * 100)} {legend}",
        )
        for q in qs
    ]


def build_panel(processes: str, own_series: str) -> Panel:
    """Processes per mlwarden build, counted over the processes that export ``own_series``
    (``mlwarden_build_info`` has no labels of its own to select by)."""
    return Panel(
        "mlwarden builds",
        "short",
        f"{processes} per mlwarden version and Python version (mlwarden_build_info): a "
        "rollout shows as two builds side by side.",
        [
            (
                f"count by (version, python_version) (mlwarden_build_info{{{JN}}}"
                f" and on (instance) {own_series})",
                "mlwarden {{version}} · Python {{python_version}}",
            )
        ],
        kind="stat",
    )


# -- the model server (the middleware) ---------------------------------------------------------

MV = JN + ', model=~"$model", version=~"$version"'
MVB = "model, version"
MVL = "{{model}} {{version}}"
MV_5XX = MV + ', status_class="5xx"'


def inference_panels() -> list[Panel | Row]:
    req = "mlwarden_request_duration_seconds"
    return [
        Row("Traffic and latency"),
        Panel(
            "Request rate",
            "reqps",
            "Requests per second by route and status class (every route, model endpoints "
            "and others).",
            [
                (
                    f"sum by ({MVB}, route, status_class) ({rate(req + '_count', MV)})",
                    MVL + " {{route}} {{status_class}}",
                )
            ],
        ),
        Panel(
            "Error rate (5xx)",
            "percentunit",
            "Share of requests answered with a 5xx; the health report calls it degraded "
            "at 5 % and failing at 25 %.",
            # "or 0 * all": a model without any 5xx shows 0, not "no data"
            [
                (
                    f"(sum by ({MVB}) ({rate(req + '_count', MV_5XX)})"
                    f" or 0 * sum by ({MVB}) ({rate(req + '_count', MV)}))"
                    f" / sum by ({MVB}) ({rate(req + '_count', MV)})",
                    MVL,
                )
            ],
            thresholds=[(None, "green"), (0.05, "orange"), (0.25, "red")],
        ),
        Panel(
            "Latency p50 / p95 / p99",
            "s",
            "Arrival to the last response byte, by model and version.",
            quantiles(req, MV, MVB),
            thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")],
        ),
        Panel(
            "Time to first byte p99",
            "s",
            "Arrival to the response start, p99.",
            quantiles("mlwarden_time_to_first_byte_seconds", MV, MVB, (0.99,)),
            thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")],
        ),
        Panel(
            "Requests in flight",
            "short",
            "Requests being served now.",
            [(f"sum by ({MVB}) (mlwarden_requests_in_flight{{{MV}}})", MVL)],
        ),
        Panel(
            "App exceptions",
            "reqps",
            "Requests during which the app raised, by route.",
            [
                (
                    f"sum by ({MVB}, route) ({rate('mlwarden_request_exceptions_total', MV)})",
                    MVL + " {{route}}",
                )
            ],
            thresholds=[(None, "green"), (0.01, "red")],
        ),
        Row("Predictions"),
        Panel(
            "Prediction values",
            "short",
            "Distribution of numeric predictions (buckets of mlwarden_prediction_value).",
            [(f"sum by (le) (increase(mlwarden_prediction_value_bucket{{{MV}}}[{RI}]))", "{{le}}")],
            kind="heatmap",
        ),
        Panel(
            "Prediction confidence p10 / p50 / p90",
            "percentunit",
            "Confidence of the predictions (the top class probability).",
            quantiles("mlwarden_prediction_confidence", MV, MVB, (0.1, 0.5, 0.9)),
            thresholds=[(None, "red"), (0.6, "orange"), (0.8, "green")],
        ),
        Panel(
            "Predicted classes",
            "short",
            "Class predictions per second, by class.",
            [
                (
                    f"sum by ({MVB}, class) ({rate('mlwarden_predicted_class_total', MV)})",
                    MVL + " {{class}}",
                )
            ],
        ),
        Panel(
            "Predictions not read",
            "short",
            "Responses whose predictions were not read, by reason.",
            [
                (
                    f"sum by ({MVB}, reason) ({rate('mlwarden_predictions_skipped_total', MV)})",
                    MVL + " {{reason}}",
                )
            ],
        ),
        Row("Drift"),
        Panel(
            "Drift ratio by test (statistic / calibrated threshold; fires at 1)",
            "none",
            "What the verdict decides on: per feature, each calibrated test (location, "
            "spread, shape for numeric features, chi2 for categorical ones) as its statistic "
            "over the threshold calibrated for its window size, on the scale (the last 250, "
            "1,000 or 4,000 rows) where it is closest to firing. A test fires at 1.",
            [
                (
                    f"max by (feature, test) (mlwarden_feature_drift_ratio{{{MV}}})",
                    "{{feature}} {{test}}",
                )
            ],
            thresholds=[(None, "green"), (1, "red")],
            threshold_lines=True,
        ),
        Panel(
            "Drifted features",
            "short",
            "1 while a feature drifts (one of its calibrated tests fired on one of the window "
            "scales); the model-level flag is mlwarden_drift_detected.",
            [
                (f"max by (feature) (mlwarden_feature_drifted{{{MV}}})", "{{feature}}"),
                (f"max by ({MVB}) (mlwarden_drift_detected{{{MV}}})", "any " + MVL),
            ],
            kind="state-timeline",
            thresholds=[(None, "green"), (1, "red")],
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "stable", "color": "green"},
                        "1": {"text": "drifted", "color": "red"},
                    },
                }
            ],
        ),
        Panel(
            "PSI per feature (whole window)",
            "short",
            "Population stability index of each feature's whole drift window against the "
            "baseline: reported, not deciding (the verdict comes from the calibrated tests). "
            "PSI bands as usual: 0.1 moderate, 0.2 large; the default drift-large policy "
            "acts on a drift verdict with drift_score (the largest PSI) above 0.25.",
            [(f"max by (feature) (mlwarden_feature_psi{{{MV}}})", "{{feature}}")],
            thresholds=[(None, "green"), (0.1, "orange"), (0.2, "red")],
        ),
        Panel(
            "KS distance per numeric feature (whole window)",
            "none",
            "Kolmogorov-Smirnov distance D (0 to 1) of each numeric feature's whole window "
            "from the baseline: reported, not deciding. No fixed line: what D means depends "
            "on the rows behind it; the shape test judges D per window scale against a "
            "bound for that many rows (its drift ratio).",
            [(f"max by (feature) (mlwarden_feature_ks_distance{{{MV}}})", "{{feature}}")],
        ),
        Panel(
            "Chi-square statistic per categorical feature (whole window)",
            "none",
            "Chi-square statistic of each categorical feature's whole window against the "
            "baseline's category shares: reported, not deciding. It grows with the rows and "
            "the categories, so no fixed line; the chi2 test judges it per window scale "
            "against a calibrated threshold (its drift ratio).",
            [(f"max by (feature) (mlwarden_feature_chi2_statistic{{{MV}}})", "{{feature}}")],
        ),
        Panel(
            "Drift p-values (whole window)",
            "short",
            "Textbook p-values of the whole window's KS and chi-square statistics: reported, "
            "not deciding (over thousands of rows they fall below 0.05 for shifts too small to "
            "matter, and over many features some do by chance).",
            [
                (
                    f"min by (feature, method) (mlwarden_feature_drift_pvalue{{{MV}}})",
                    "{{feature}} {{method}}",
                )
            ],
            thresholds=[(None, "red"), (0.05, "green")],
        ),
        Panel(
            "Drift window rows",
            "short",
            "Rows in the drift window: no verdict below min_rows (100); a window scale "
            "(the last 250, 1,000, 4,000 rows) is tested once the window holds that many.",
            [(f"sum by ({MVB}) (mlwarden_drift_window_rows{{{MV}}})", MVL)],
            thresholds=[(None, "orange"), (100, "green")],
        ),
        Row("Features and payloads"),
        Panel(
            "Feature means",
            "short",
            "Window mean of each numeric feature.",
            [(f"avg by (feature) (mlwarden_feature_mean{{{MV}}})", "{{feature}}")],
        ),
        Panel(
            "Feature null ratios",
            "percentunit",
            "Window share of missing values.",
            [(f"max by (feature) (mlwarden_feature_null_ratio{{{MV}}})", "{{feature}}")],
            thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")],
        ),
        Panel(
            "Payload errors",
            "reqps",
            "Payloads not read into rows, by reason.",
            [
                (
                    f"sum by ({MVB}, reason) ({rate('mlwarden_payload_errors_total', MV)})",
                    MVL + " {{reason}}",
                )
            ],
            thresholds=[(None, "green"), (0.01, "orange")],
        ),
        Panel(
            "Rows scored",
            "short",
            "Rows of model requests answered 2xx per second (the rows the drift window "
            "sees), rows of requests not answered 2xx (kept out of it) by status class, and "
            "payload values whose names the baseline does not know.",
            [
                (f"sum by ({MVB}) ({rate('mlwarden_rows_scored_total', MV)})", "rows " + MVL),
                (
                    f"sum by ({MVB}, status_class) "
                    f"({rate('mlwarden_feature_rows_skipped_total', MV)})",
                    "skipped " + MVL + " {{status_class}}",
                ),
                (
                    f"sum by ({MVB}) ({rate('mlwarden_unknown_features_total', MV)})",
                    "unknown features " + MVL,
                ),
            ],
        ),
        Row("Live quality and labels"),
        Panel(
            "Live quality",
            "short",
            "Accuracy, precision, recall, F1 and calibration error (classifiers) or MAE "
            "and RMSE (regressions) over the labelled window.",
            [(f"max by ({MVB}, metric) (mlwarden_model_quality{{{MV}}})", MVL + " {{metric}}")],
        ),
        Panel(
            "Labelled samples",
            "short",
            "Labelled predictions in the quality window, and predictions waiting for a label.",
            [
                (f"sum by ({MVB}) (mlwarden_model_quality_samples{{{MV}}})", "labelled " + MVL),
                (f"sum by ({MVB}) (mlwarden_predictions_remembered{{{MV}}})", "waiting " + MVL),
            ],
            thresholds=[(None, "orange"), (200, "green")],
        ),
        Panel(
            "Label delay p50 / p95",
            "s",
            "From a prediction to its label.",
            quantiles("mlwarden_label_delay_seconds", MV, MVB, (0.5, 0.95)),
        ),
        Panel(
            "Feedback labels",
            "short",
            "Labels posted, by result.",
            [
                (
                    f"sum by ({MVB}, result) ({rate('mlwarden_feedback_labels_total', MV)})",
                    MVL + " {{result}}",
                )
            ],
        ),
        Panel(
            "Unlabelled predictions",
            "percentunit",
            "Share of decided predictions that never got a label, and predictions evicted "
            "unlabelled per second.",
            [
                (f"max by ({MVB}) (mlwarden_predictions_unlabelled_ratio{{{MV}}})", "ratio " + MVL),
                (
                    f"sum by ({MVB}) ({rate('mlwarden_predictions_unlabelled_total', MV)})",
                    "evicted/s " + MVL,
                ),
            ],
            thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")],
        ),
        Row("InfluxDB shipping"),
        Panel(
            "InfluxDB points",
            "short",
            "Points written to InfluxDB per second, and points lost by reason.",
            [
                (
                    f"sum by ({MVB}) ({rate('mlwarden_influx_points_written_total', MV)})",
                    "written " + MVL,
                ),
                (
                    f"sum by ({MVB}, reason) ({rate('mlwarden_influx_points_dropped_total', MV)})",
                    "dropped {{reason}} " + MVL,
                ),
                (
                    f"sum by ({MVB}) ({rate('mlwarden_influx_write_errors_total', MV)})",
                    "write errors " + MVL,
                ),
            ],
        ),
        Panel(
            "InfluxDB buffer",
            "short",
            "Points waiting to be written.",
            [(f"sum by ({MVB}) (mlwarden_influx_buffer_points{{{MV}}})", MVL)],
            thresholds=[(None, "green"), (10000, "orange")],
        ),
        Panel(
            "InfluxDB write duration p99",
            "s",
            "Duration of one write to InfluxDB.",
            quantiles("mlwarden_influx_write_duration_seconds", MV, MVB, (0.99,)),
        ),
        Row("Middleware internals"),
        Panel(
            "Internal errors",
            "short",
            "Errors inside the middleware per second (logged; requests unaffected).",
            # the counter is created at the first error: "or 0 * ..." shows 0 until then
            [
                (
                    f"sum by ({MVB}) ({rate('mlwarden_internal_errors_total', MV)})"
                    f" or 0 * sum by ({MVB}) (mlwarden_requests_in_flight{{{MV}}})",
                    MVL,
                )
            ],
            thresholds=[(None, "green"), (0.001, "red")],
        ),
        Panel(
            "Drift evaluations",
            "short",
            "Drift evaluations per second, and the p99 time of one.",
            [
                (
                    f"sum by ({MVB}) ({rate('mlwarden_drift_evaluations_total', MV)})",
                    "evaluations/s " + MVL,
                ),
                *quantiles("mlwarden_drift_evaluation_duration_seconds", MV, MVB, (0.99,)),
            ],
        ),
        build_panel("Model servers", f"mlwarden_requests_in_flight{{{MV}}}"),
    ]


# -- the sidecar (its admin port) --------------------------------------------------------------

UP = JN + ', upstream=~"$upstream"'
# The sidecar's own answers carry upstream="none".
UP_NONE = JN + ', upstream=~"$upstream|none"'
TARGET = JN + ', target=~"$upstream"'


def sidecar_panels() -> list[Panel | Row]:
    breaker_states = [
        {
            "type": "value",
            "options": {
                "0": {"text": "closed", "color": "green"},
                "1": {"text": "half-open", "color": "orange"},
                "2": {"text": "open", "color": "red"},
            },
        }
    ]
    return [
        Row("Traffic"),
        Panel(
            "Traffic by upstream",
            "reqps",
            "Client requests by the upstream that answered ('none': the sidecar itself) "
            "and the status class sent.",
            [
                (
                    f"sum by (upstream, code) ({rate('mlwarden_proxy_requests_total', UP_NONE)})",
                    "{{upstream}} {{code}}",
                )
            ],
        ),
        Panel(
            "Client latency p50 / p95 / p99",
            "s",
            "Arrival to the last byte, retries and fallbacks included.",
            quantiles("mlwarden_proxy_request_duration_seconds", UP_NONE, "upstream"),
            thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")],
        ),
        Panel(
            "Upstream attempts by outcome",
            "reqps",
            "Every attempt sent to an upstream, by status class or connection failure.",
            [
                (
                    f"sum by (upstream, outcome) ({rate('mlwarden_upstream_requests_total', UP)})",
                    "{{upstream}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "Upstream latency p99",
            "s",
            "One attempt, p99 per upstream.",
            quantiles("mlwarden_upstream_request_duration_seconds", UP, "upstream", (0.99,)),
            thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")],
        ),
        Panel(
            "Requests in flight",
            "short",
            "Client requests the sidecar is serving now.",
            [(f"sum(mlwarden_proxy_requests_in_flight{{{JN}}})", "in flight")],
        ),
        Panel(
            "Operational paths refused",
            "reqps",
            "Client requests for the model's /metrics, /-/health, /-/feedback or other /-/ "
            "paths, answered 404 by the sidecar instead of forwarded (a client probing them, "
            "or one that should be configured in routing.forward_operational_paths).",
            [
                (
                    f"sum by (path) ({rate('mlwarden_proxy_paths_refused_total', JN)})",
                    "{{path}}",
                )
            ],
        ),
        Panel(
            "Clients refused at the edge",
            "cps",
            "Client connections refused before a request, by reason: a head above "
            "limits.max_header_bytes or with more than limits.max_headers headers (431), a "
            "head slower than timeouts.request_head_timeout_s (408), a connection that sent "
            "nothing, a malformed request (400), a connection beyond limits.max_connections "
            "(503). A steady rate is a misbehaving or hostile client.",
            [
                (
                    f"sum by (reason) ({rate('mlwarden_proxy_edge_refused_total', JN)})",
                    "{{reason}}",
                )
            ],
        ),
        Row("Canary"),
        Panel(
            "Canary weight",
            "percentunit",
            "Share of requests that try the canary candidate first.",
            [(f"max by (candidate) (mlwarden_canary_weight_ratio{{{JN}}})", "{{candidate}}")],
        ),
        Panel(
            "Canary state",
            "short",
            "The canary's current state (1 for analysing, promoted, done or rolled_back).",
            [
                (
                    f"max by (candidate, state) (mlwarden_canary_state{{{JN}}})",
                    "{{candidate}} {{state}}",
                )
            ],
            kind="state-timeline",
            thresholds=[(None, "transparent"), (1, "blue")],
        ),
        Panel(
            "Canary analyses",
            "short",
            "Canary analyses by verdict.",
            [
                (
                    "sum by (candidate, verdict) "
                    f"(increase(mlwarden_canary_analyses_total{{{JN}}}[{RI}]))",
                    "{{candidate}} {{verdict}}",
                )
            ],
        ),
        Row("Breakers, retries and fallbacks"),
        Panel(
            "Breaker states",
            "short",
            "0 closed, 1 half-open, 2 open, per upstream.",
            [(f"max by (upstream) (mlwarden_breaker_state{{{UP}}})", "{{upstream}}")],
            kind="state-timeline",
            thresholds=[(None, "green"), (1, "orange"), (2, "red")],
            mappings=breaker_states,
        ),
        Panel(
            "Breaker transitions",
            "short",
            "Breaker state changes, by the state entered.",
            [
                (
                    "sum by (upstream, to) "
                    f"(increase(mlwarden_breaker_transitions_total{{{UP}}}[{RI}]))",
                    "{{upstream}} → {{to}}",
                )
            ],
        ),
        Panel(
            "Breaker shared storage",
            "short",
            "Whether the breakers' shared state (Redis) answers, its failed accesses and "
            "the attempts admitted without it (fail open).",
            [
                (
                    f"min by (upstream) (mlwarden_breaker_storage_available{{{UP}}})",
                    "available {{upstream}}",
                ),
                (
                    f"sum by (upstream) ({rate('mlwarden_breaker_storage_errors_total', UP)})",
                    "errors/s {{upstream}}",
                ),
                (
                    f"sum by (upstream) ({rate('mlwarden_breaker_fail_open_total', UP)})",
                    "fail open/s {{upstream}}",
                ),
            ],
            thresholds=[(None, "red"), (1, "green")],
        ),
        Panel(
            "Retries by reason",
            "reqps",
            "Retries granted, by the retriable reason.",
            [
                (
                    f"sum by (upstream, reason) ({rate('mlwarden_retries_total', UP)})",
                    "{{upstream}} {{reason}}",
                )
            ],
        ),
        Panel(
            "Retry budget",
            "reqps",
            "Requests the retry budget counted, retries it granted and retries it refused.",
            [
                (f"sum({rate('mlwarden_retry_budget_requests_total', JN)})", "requests"),
                (f"sum({rate('mlwarden_retry_budget_retries_total', JN)})", "retries"),
                (f"sum({rate('mlwarden_retry_budget_exhausted_total', JN)})", "refused"),
            ],
            thresholds=[(None, "green"), (0.01, "red")],
        ),
        Panel(
            "Fallbacks",
            "reqps",
            "Requests moving on to the next upstream, by reason.",
            [
                (
                    "sum by (from, to, reason) "
                    f'(rate(mlwarden_fallbacks_total{{{JN}, from=~"$upstream"}}[{RI}]))',
                    "{{from}} → {{to}} {{reason}}",
                )
            ],
        ),
        Row("Health checks"),
        Panel(
            "Health checks by result",
            "short",
            "Health probes per second, by result.",
            [
                (
                    f"sum by (upstream, result) ({rate('mlwarden_health_checks_total', UP)})",
                    "{{upstream}} {{result}}",
                )
            ],
        ),
        Panel(
            "Health-check duration p99",
            "s",
            "One probe, p99 per upstream.",
            quantiles("mlwarden_health_check_duration_seconds", UP, "upstream", (0.99,)),
            thresholds=[(None, "green"), (0.5, "orange"), (1.0, "red")],
        ),
        Panel(
            "Upstream in rotation",
            "short",
            "1 while health checks keep it in rotation.",
            [(f"min by (upstream) (mlwarden_upstream_healthy{{{UP}}})", "{{upstream}}")],
            kind="state-timeline",
            thresholds=[(None, "red"), (1, "green")],
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "out", "color": "red"},
                        "1": {"text": "in", "color": "green"},
                    },
                }
            ],
        ),
        Panel(
            "Health transitions",
            "short",
            "Upstreams moving in and out of rotation.",
            [
                (
                    "sum by (upstream, to) "
                    f"(increase(mlwarden_health_transitions_total{{{UP}}}[{RI}]))",
                    "{{upstream}} → {{to}}",
                )
            ],
        ),
        Row("Shadow traffic"),
        Panel(
            "Shadow copies",
            "reqps",
            "Shadow copies by outcome.",
            [
                (
                    f"sum by (target, outcome) ({rate('mlwarden_shadow_requests_total', TARGET)})",
                    "{{target}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "Shadow comparisons",
            "reqps",
            "Compared copies by result, and copies not compared by reason.",
            [
                (
                    "sum by (target, result) "
                    f"({rate('mlwarden_shadow_comparisons_total', TARGET)})",
                    "{{target}} {{result}}",
                ),
                (
                    f"sum by (target, reason) ({rate('mlwarden_shadow_uncompared_total', TARGET)})",
                    "{{target}} uncompared {{reason}}",
                ),
            ],
        ),
        Panel(
            "Shadow agreement",
            "percentunit",
            "Agreement of the shadow with the primary over the recent comparisons.",
            [
                (
                    f"min by (target) (mlwarden_shadow_agreement_ratio{{{TARGET}}})",
                    "{{target}}",
                )
            ],
            thresholds=[(None, "red"), (0.9, "orange"), (0.98, "green")],
        ),
        Panel(
            "Shadow duration p99",
            "s",
            "One shadow exchange, p99.",
            quantiles("mlwarden_shadow_duration_seconds", TARGET, "target", (0.99,)),
        ),
        Panel(
            "Shadow queue",
            "short",
            "Shadow copies waiting to be sent.",
            [(f"max by (target) (mlwarden_shadow_queue_depth{{{TARGET}}})", "{{target}}")],
            thresholds=[(None, "green"), (50, "orange")],
        ),
        Row("Healing"),
        Panel(
            "Healing actions",
            "short",
            "Healing-ledger records, by action and outcome.",
            [
                (
                    "sum by (action, outcome) "
                    f"(increase(mlwarden_healing_actions_total{{{JN}}}[{RI}]))",
                    "{{action}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "Escalations",
            "short",
            'Healing actions that escalated to people (action="escalation") over the '
            "dashboard's time range.",
            [
                (
                    "sum(increase(mlwarden_healing_actions_total"
                    f'{{{JN}, action="escalation"}}[{RANGE}]))',
                    "escalations",
                )
            ],
            kind="stat",
            thresholds=[(None, "green"), (1, "red")],
        ),
        Panel(
            "Ledger writer",
            "short",
            "The healing ledger's writer thread: lines waiting (ledger.max_queued bounds them), "
            "lines dropped with the queue full or not written (I/O errors) and group commits, "
            "per interval. Drops and errors mean records are missing from the file (/-/events "
            "still has them).",
            [
                (f"max(mlwarden_ledger_queued{{{JN}}})", "queued"),
                (f"sum(increase(mlwarden_ledger_dropped_total{{{JN}}}[{RI}]))", "dropped"),
                (
                    f"sum(increase(mlwarden_ledger_write_errors_total{{{JN}}}[{RI}]))",
                    "write errors",
                ),
                (f"sum(increase(mlwarden_ledger_fsyncs_total{{{JN}}}[{RI}]))", "fsyncs"),
            ],
        ),
        Row("Fleet"),
        Panel(
            "Fleet leader",
            "short",
            "Which sidecar holds the fleet's lease (fleet:) and takes the canary's decisions: "
            "exactly one at a time; none while Redis is down (every replica then decides "
            "alone).",
            [(f"max by (instance) (mlwarden_fleet_leader{{{JN}}})", "{{instance}}")],
            kind="state-timeline",
            thresholds=[(None, "transparent"), (1, "green")],
        ),
        Panel(
            "Fleet's Redis",
            "short",
            "Sidecars that reach the fleet's Redis (1) or decide alone (0); takeovers (new "
            "terms) and ledger records lost for the fleet's stream, per interval.",
            [
                (f"min by (instance) (mlwarden_fleet_redis_available{{{JN}}})", "{{instance}}"),
                (f"sum(increase(mlwarden_fleet_terms_won_total{{{JN}}}[{RI}]))", "new terms"),
                (
                    f"sum(increase(mlwarden_fleet_records_dropped_total{{{JN}}}[{RI}]))",
                    "records dropped",
                ),
            ],
        ),
        Panel(
            "Fleet drift",
            "short",
            "Drift judged on the sum of every replica's drift counts (fleet.drift): the "
            "largest statistic over its threshold (1 or more: flagged), the replicas "
            "summed and the rows judged. Each replica's own verdict is on the inference dashboard.",
            [
                (
                    f"max by (upstream) (mlwarden_fleet_drift_ratio{{{JN}}})",
                    "{{upstream}} ratio",
                ),
                (
                    f"max by (upstream) (mlwarden_fleet_drift_detected{{{JN}}})",
                    "{{upstream}} flagged",
                ),
                (
                    f"max by (upstream) (mlwarden_fleet_drift_replicas{{{JN}}})",
                    "{{upstream}} replicas",
                ),
                (
                    f"max by (upstream) (mlwarden_fleet_drift_rows{{{JN}}}) / 1000",
                    "{{upstream}} rows judged (thousands)",
                ),
                (
                    f"sum(increase(mlwarden_fleet_drift_fetch_errors_total{{{JN}}}[{RI}]))",
                    "counts not read",
                ),
            ],
        ),
        Row("Sidecar processes"),
        build_panel("Sidecars", f"mlwarden_proxy_requests_in_flight{{{JN}}}"),
    ]


# -- feature statistics in InfluxDB (InfluxQL) ------------------------------------------------

# The default measurement names of middleware/influx/lines.py (influx.measurement renames both).
FEATURE = '"mlwarden_feature"'
SUMMARY = '"mlwarden_feature_summary"'
MV_IQL = '"model" =~ /^$model$/ AND "version" =~ /^$version$/'
MVF_IQL = MV_IQL + ' AND "feature" =~ /^$feature$/'
BY_TIME = "GROUP BY time($__interval)"
NULL = "fill(null)"


def per_feature(select: str) -> str:
    """``select`` (one aggregate of a field) per feature and interval."""
    return (
        f"SELECT {select} FROM {FEATURE} WHERE {MVF_IQL} AND $timeFilter "
        f'{BY_TIME}, "feature" {NULL}'
    )


def per_model(select: str) -> str:
    """``select`` (one aggregate of a summary field) per model, version and interval."""
    return (
        f"SELECT {select} FROM {SUMMARY} WHERE {MV_IQL} AND $timeFilter "
        f'{BY_TIME}, "model", "version" {NULL}'
    )


FEATURE_ALIAS = "$tag_feature"
MODEL_ALIAS = "$tag_model $tag_version"
DRIFT_STATES = [
    {
        "type": "value",
        "options": {
            "0": {"text": "stable", "color": "green"},
            "1": {"text": "drifted", "color": "red"},
        },
    }
]


def influx_panels() -> list[Panel | Row]:
    return [
        Row("Drift verdicts"),
        Panel(
            "Drift verdict",
            "short",
            "1 while the latest drift report flags any feature (field drift_detected of "
            "mlwarden_feature_summary), per model and version.",
            [(per_model('max("drift_detected")'), MODEL_ALIAS)],
            kind="state-timeline",
            thresholds=[(None, "green"), (1, "red")],
            mappings=DRIFT_STATES,
        ),
        Panel(
            "Feature drift state",
            "short",
            "1 while a feature drifts (field drifted): one of its calibrated tests fired "
            "(its *_ratio field reached 1) on one of the window scales.",
            [(per_feature('max("drifted")'), FEATURE_ALIAS)],
            kind="state-timeline",
            thresholds=[(None, "green"), (1, "red")],
            mappings=DRIFT_STATES,
        ),
        Panel(
            "Features that drifted in the time range",
            "short",
            "Per feature over the whole time range: drifted is 1 if the feature drifted at "
            "any report, with the highest ratio of each calibrated test (statistic over "
            "threshold: 1 or more fired), the highest whole-window PSI, KS and chi-square "
            "statistics (reported, not deciding) and the highest null ratio.",
            [
                (
                    f'SELECT max("drifted") AS "drifted", '
                    f'max("location_ratio") AS "max location ratio", '
                    f'max("spread_ratio") AS "max spread ratio", '
                    f'max("shape_ratio") AS "max shape ratio", '
                    f'max("chi2_ratio") AS "max chi2 ratio", max("psi") AS "max PSI", '
                    f'max("ks") AS "max KS", max("chi2") AS "max chi-square", '
                    f'max("null_ratio") AS "max null ratio" '
                    f'FROM {FEATURE} WHERE {MVF_IQL} AND $timeFilter GROUP BY "feature", "kind"',
                    "",
                )
            ],
            kind="table",
            thresholds=[(None, "green"), (1, "red")],
        ),
        Row("Drift statistics"),
        Panel(
            "Drift ratio by test (statistic / calibrated threshold; fires at 1)",
            "none",
            "What the verdict decides on (fields location_ratio, spread_ratio, shape_ratio "
            "of numeric features, chi2_ratio of categorical ones): each test's statistic "
            "over the threshold calibrated for its window size, on the scale (the last 250, "
            "1,000 or 4,000 rows) where it is closest to firing. A test fires at 1.",
            [
                (per_feature(f'max("{test}_ratio")'), f"{test} " + FEATURE_ALIAS)
                for test in ("location", "spread", "shape", "chi2")
            ],
            thresholds=[(None, "green"), (1, "red")],
            threshold_lines=True,
        ),
        Panel(
            "Drift score (PSI) per feature",
            "short",
            "Population stability index of each feature's whole window against the baseline "
            "(field psi): reported, not deciding. 0.1 is a moderate shift, 0.2 a large one "
            "by the usual rule; the default drift-large policy acts on a drift verdict with "
            "drift_score (the largest PSI) above 0.25.",
            [(per_feature('max("psi")'), FEATURE_ALIAS)],
            thresholds=[(None, "green"), (0.1, "orange"), (0.2, "red")],
        ),
        Panel(
            "KS statistic per numeric feature",
            "short",
            "Kolmogorov-Smirnov distance of each numeric feature's whole window from the "
            "baseline (field ks): reported, not deciding; the shape test judges the KS "
            "distance of each window scale against a bound for that many rows (shape_ratio).",
            [(per_feature('max("ks")'), FEATURE_ALIAS)],
        ),
        Panel(
            "Chi-square statistic per categorical feature",
            "short",
            "Chi-square statistic of each categorical feature's window against the baseline "
            "frequencies over the whole window (field chi2): reported, not deciding; it "
            "grows with the window's rows, so read chi2_ratio (the calibrated test) for the "
            "verdict.",
            [(per_feature('max("chi2")'), FEATURE_ALIAS)],
        ),
        Panel(
            "Drift p-values (whole window)",
            "short",
            "Textbook p-values of the whole window's KS and chi-square statistics (fields "
            "ks_pvalue and chi2_pvalue): reported, not deciding (over thousands of rows they "
            "fall below 0.05 for shifts too small to matter, and over many features some do "
            "by chance).",
            [
                (per_feature('min("ks_pvalue")'), "KS " + FEATURE_ALIAS),
                (per_feature('min("chi2_pvalue")'), "chi-square " + FEATURE_ALIAS),
            ],
            thresholds=[(None, "red"), (0.05, "green")],
        ),
        Row("Features"),
        Panel(
            "Feature means",
            "short",
            "Window mean of each numeric feature (field mean).",
            [(per_feature('mean("mean")'), FEATURE_ALIAS)],
        ),
        Panel(
            "Feature null ratios",
            "percentunit",
            "Window share of missing values per feature (field null_ratio).",
            [(per_feature('max("null_ratio")'), FEATURE_ALIAS)],
            thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")],
        ),
        Panel(
            "Rows per feature",
            "short",
            "Rows in each feature's drift window (field rows); nothing is flagged below "
            "min_rows (100).",
            [(per_feature('last("rows")'), FEATURE_ALIAS)],
            thresholds=[(None, "orange"), (100, "green")],
        ),
        Row("Per model"),
        Panel(
            "Drifted features per model",
            "short",
            "Features flagged in the latest report (field drifted_features) and features "
            "evaluated (field features), per model and version.",
            [
                (per_model('max("drifted_features")'), "drifted " + MODEL_ALIAS),
                (per_model('last("features")'), "evaluated " + MODEL_ALIAS),
            ],
            thresholds=[(None, "green"), (1, "red")],
        ),
        Panel(
            "Drift window rows",
            "short",
            "Rows in the model's drift window (field rows of mlwarden_feature_summary); "
            "nothing is flagged below min_rows (100).",
            [(per_model('last("rows")'), MODEL_ALIAS)],
            thresholds=[(None, "orange"), (100, "green")],
        ),
        Panel(
            "Enough data for a verdict",
            "short",
            "1 when the window held enough rows to judge drift (field enough_data); 0 "
            "means the verdict is 'no drift' for want of data, not for lack of drift.",
            [(per_model('min("enough_data")'), MODEL_ALIAS)],
            kind="state-timeline",
            thresholds=[(None, "orange"), (1, "green")],
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "too few rows", "color": "orange"},
                        "1": {"text": "enough", "color": "green"},
                    },
                }
            ],
        ),
    ]


# -- Grafana JSON ------------------------------------------------------------------------------


def prometheus_target(panel: Panel, i: int, expr: str, legend: str) -> dict:
    return {
        "datasource": {"type": "prometheus", "uid": DS},
        "expr": expr,
        "legendFormat": legend,
        "refId": chr(ord("A") + i),
        **({"format": "heatmap"} if panel.kind == "heatmap" else {}),
        # A stat shows one number: its query over $__range, evaluated once at the range's end.
        **({"instant": True, "range": False} if panel.kind == "stat" else {}),
    }


def influx_target(panel: Panel, i: int, query: str, alias: str) -> dict:
    return {
        "datasource": {"type": "influxdb", "uid": DS},
        "query": query,
        "rawQuery": True,
        "resultFormat": "table" if panel.kind == "table" else "time_series",
        "alias": alias,
        "refId": chr(ord("A") + i),
    }


@dataclass(frozen=True)
class Source:
    """A datasource plugin: its import input and the shape of its panel targets."""

    plugin: str  # Grafana's plugin id: "prometheus", "influxdb"
    name: str
    input: str  # the __inputs name, replaced on import
    input_description: str
    target: Callable[[Panel, int, str, str], dict]

    @property
    def ref(self) -> dict:
        return {"type": self.plugin, "uid": DS}


PROMETHEUS = Source(
    "prometheus",
    "Prometheus",
    "DS_PROMETHEUS",
    "The Prometheus that scrapes mlwarden",
    prometheus_target,
)
INFLUXDB = Source(
    "influxdb",
    "InfluxDB",
    "DS_INFLUXDB",
    "The InfluxDB the middleware writes feature statistics to, queried in "
    "InfluxQL (1.x; 2.x through its v1 API with a DBRP mapping)",
    influx_target,
)


def panel_json(panel: Panel, panel_id: int, x: int, y: int, source: Source = PROMETHEUS) -> dict:
    width = WIDTH[panel.kind]
    steps = [{"color": color, "value": value} for value, color in panel.thresholds]
    targets = [
        source.target(panel, i, query, legend) for i, (query, legend) in enumerate(panel.queries)
    ]
    out: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": source.ref,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "mappings": panel.mappings,
                "thresholds": {"mode": "absolute", "steps": steps},
                **(
                    {"custom": {"thresholdsStyle": {"mode": "line"}}}
                    if panel.threshold_lines
                    else {}
                ),
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    }
    if panel.kind == "heatmap":
        out["options"] = {"calculate": False, "yAxis": {"unit": panel.unit}}
    if panel.kind == "stat":
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        }
    if panel.kind == "table":
        out["options"] = {"showHeader": True, "cellHeight": "sm"}
        # red cells: where a feature drifted, and where a test's ratio reached 1 (it fired)
        out["fieldConfig"]["defaults"]["custom"] = {"cellOptions": {"type": "auto"}}
        out["fieldConfig"]["overrides"] = [
            {
                "matcher": {"id": "byName", "options": "drifted"},
                "properties": [
                    {"id": "mappings", "value": DRIFT_STATES},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ],
            },
            {
                "matcher": {
                    "id": "byRegexp",
                    "options": "^max (location|spread|shape|chi2) ratio$",
                },
                "properties": [
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                ],
            },
        ]
    return out


def row_json(row: Row, panel_id: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": "row",
        "title": row.title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        "panels": [],
    }


def layout(panels: list[Panel | Row], source: Source = PROMETHEUS) -> list[dict]:
    # (x, y) is where the next panel goes; a panel row is 8 high, a dashboard row 1.
    out, x, y = [], 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if isinstance(panel, Row):
            if x:
                x, y = 0, y + 8
            out.append(row_json(panel, panel_id, y))
            y += 1
            continue
        width = WIDTH[panel.kind]
        if x + width > 24:
            x, y = 0, y + 8
        out.append(panel_json(panel, panel_id, x, y, source))
        x += width
    return out


def query_variable(
    name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True
) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": DS},
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": include_all,
        **({"allValue": ".*"} if include_all else {}),
        "current": {},
        "options": [],
        "sort": 1,
    }


def deployment_variables(metric: str) -> list[dict]:
    """``namespace`` then ``job``, read from ``metric``, a series every deployment exports.

    One namespace or All (".*": it also matches series without the label, as in a Prometheus
    outside Kubernetes, where the list is empty and All is what remains), then one job in it.
    """
    return [
        query_variable("namespace", "Namespace", f"label_values({metric}, namespace)", multi=False),
        query_variable(
            "job",
            "Job",
            f'label_values({metric}{{namespace=~"$namespace"}}, job)',
            multi=False,
            include_all=False,
        ),
    ]


def influx_variable(name: str, label: str, query: str) -> dict:
    # InfluxQL variables take the query as a string; Grafana interpolates a multi-value or
    # All selection into /^$name$/ as a regex alternation, and All as allValue.
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "influxdb", "uid": DS},
        "query": query,
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "options": [],
        "sort": 1,
    }


def dashboard(
    uid: str,
    title: str,
    panels: list[Panel | Row],
    variables: list[dict],
    source: Source = PROMETHEUS,
    description: str | None = None,
) -> dict:
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": source.plugin,
        "options": [],
        "refresh": 1,
        "current": {
            "selected": False,
            "text": "${" + source.input + "}",
            "value": "${" + source.input + "}",
        },
    }
    return {
        "__inputs": [
            {
                "name": source.input,
                "label": source.name,
                "description": source.input_description,
                "type": "datasource",
                "pluginId": source.plugin,
                "pluginName": source.name,
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": source.plugin, "name": source.name, "version": "1.0.0"},
        ],
        "uid": uid,
        "title": title,
        **({"description": description} if description else {}),
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "links": [
            {
                "type": "dashboards",
                "tags": TAGS,
                "asDropdown": True,
                "title": "mlwarden",
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "templating": {"list": [datasource, *variables]},
        "annotations": {"list": []},
        "panels": layout(panels, source),
    }


def dashboards() -> dict[str, dict]:
    """File name → dashboard JSON."""
    return {
        "mlwarden-inference.json": dashboard(
            "mlwarden-inference",
            "mlwarden / inference",
            inference_panels(),
            [
                *deployment_variables("mlwarden_requests_in_flight"),
                query_variable(
                    "model", "Model", f"label_values(mlwarden_requests_in_flight{{{JN}}}, model)"
                ),
                query_variable(
                    "version",
                    "Version",
                    f'label_values(mlwarden_requests_in_flight{{{JN}, model=~"$model"}}, version)',
                ),
            ],
        ),
        "mlwarden-sidecar.json": dashboard(
            "mlwarden-sidecar",
            "mlwarden / sidecar",
            sidecar_panels(),
            [
                *deployment_variables("mlwarden_upstream_healthy"),
                query_variable(
                    "upstream",
                    "Upstream",
                    f"label_values(mlwarden_upstream_healthy{{{JN}}}, upstream)",
                ),
            ],
        ),
        "mlwarden-influxdb.json": dashboard(
            "mlwarden-influxdb",
            "mlwarden / feature statistics (InfluxDB)",
            influx_panels(),
            [
                influx_variable(
                    "model", "Model", f'SHOW TAG VALUES FROM {SUMMARY} WITH KEY = "model"'
                ),
                influx_variable(
                    "version",
                    "Version",
                    f'SHOW TAG VALUES FROM {SUMMARY} WITH KEY = "version" '
                    'WHERE "model" =~ /^$model$/',
                ),
                influx_variable(
                    "feature",
                    "Feature",
                    f'SHOW TAG VALUES FROM {FEATURE} WITH KEY = "feature" WHERE {MV_IQL}',
                ),
            ],
            INFLUXDB,
            "Drift and feature statistics the mlwarden middleware writes to InfluxDB "
            "(measurements mlwarden_feature and mlwarden_feature_summary, the default "
            "influx.measurement). InfluxQL: a Grafana InfluxDB data source in InfluxQL mode, "
            "on InfluxDB 1.x (database = the bucket) or 2.x through its v1 compatibility API "
            "(a DBRP mapping from a database name to the bucket).",
        ),
    }


def render(board: dict) -> str:
    # Grafana replaces ${DS_PROMETHEUS} / ${DS_INFLUXDB} (the variable's start value) on import.
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main(out_dir: Path = HERE) -> list[Path]:
    written = []
    for name, board in dashboards().items():
        path = out_dir / name
        path.write_text(render(board), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
