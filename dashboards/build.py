"""Builds the Grafana dashboards (JSON) from the panel lists below.

Run ``python3 -m dashboards.build`` (or ``python3 dashboards/build.py``) and commit the
output: ``mlwarden-inference.json`` and ``mlwarden-sidecar.json``. Each panel is one
:class:`Panel` (title, unit, description, queries); :func:`dashboard` turns a list of them into
Grafana's JSON with a ``DS_PROMETHEUS`` input, a datasource variable first and chained
``label_values`` variables, ``$__rate_interval`` in every ``rate()`` and a fixed ``uid``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = "${DS_PROMETHEUS}"
RI = "$__rate_interval"
TAGS = ["mlwarden"]
WIDTH = {"timeseries": 12, "heatmap": 12, "state-timeline": 12, "stat": 6}


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    description: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"
    thresholds: list[tuple[float | None, str]] = field(
        default_factory=lambda: [(None, "green")])
    mappings: list[dict] = field(default_factory=list)


def rate(metric: str, sel: str) -> str:
    return f"rate({metric}{{{sel}}}[{RI}])"


def quantiles(metric: str, sel: str, by: str, qs=(0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return [(f"histogram_quantile({q}, sum by (le, {by}) ({rate(metric + '_bucket', sel)}))",
             f"p{round(q * 100)} {legend}") for q in qs]


# -- the model server (the middleware) ---------------------------------------------------------

MV = 'model=~"$model", version=~"$version"'
MVB = "model, version"
MVL = "{{model}} {{version}}"
MV_5XX = MV + ', status_class="5xx"'


def inference_panels() -> list[Panel]:
    req = "mlwarden_request_duration_seconds"
    return [
        Panel("Request rate", "reqps",
              "Requests per second by route and status class (every route, model endpoints "
              "and others).",
              [(f"sum by ({MVB}, route, status_class) ({rate(req + '_count', MV)})",
                MVL + " {{route}} {{status_class}}")]),
        Panel("Error rate (5xx)", "percentunit",
              "Share of requests answered with a 5xx; the health report calls it degraded "
              "at 5 % and failing at 25 %.",
              # "or 0 * all": a model without any 5xx shows 0, not "no data"
              [(f"(sum by ({MVB}) ({rate(req + '_count', MV_5XX)})"
                f" or 0 * sum by ({MVB}) ({rate(req + '_count', MV)}))"
                f" / sum by ({MVB}) ({rate(req + '_count', MV)})", MVL)],
              thresholds=[(None, "green"), (0.05, "orange"), (0.25, "red")]),
        Panel("Latency p50 / p95 / p99", "s",
              "Arrival to the last response byte, by model and version.",
              quantiles(req, MV, MVB),
              thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")]),
        Panel("Time to first byte p99", "s", "Arrival to the response start, p99.",
              quantiles("mlwarden_time_to_first_byte_seconds", MV, MVB, (0.99,)),
              thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")]),
        Panel("Requests in flight", "short", "Requests being served now.",
              [(f"sum by ({MVB}) (mlwarden_requests_in_flight{{{MV}}})", MVL)]),
        Panel("App exceptions", "reqps", "Requests during which the app raised, by route.",
              [(f"sum by ({MVB}, route) ({rate('mlwarden_request_exceptions_total', MV)})",
                MVL + " {{route}}")],
              thresholds=[(None, "green"), (0.01, "red")]),
        Panel("Prediction values", "short",
              "Distribution of numeric predictions (buckets of mlwarden_prediction_value).",
              [(f"sum by (le) (increase(mlwarden_prediction_value_bucket{{{MV}}}[{RI}]))",
                "{{le}}")], kind="heatmap"),
        Panel("Prediction confidence p10 / p50 / p90", "percentunit",
              "Confidence of the predictions (the top class probability).",
              quantiles("mlwarden_prediction_confidence", MV, MVB, (0.1, 0.5, 0.9)),
              thresholds=[(None, "red"), (0.6, "orange"), (0.8, "green")]),
        Panel("Predicted classes", "short", "Class predictions per second, by class.",
              [(f"sum by ({MVB}, class) ({rate('mlwarden_predicted_class_total', MV)})",
                MVL + " {{class}}")]),
        Panel("Predictions not read", "short",
              "Responses whose predictions were not read, by reason.",
              [(f"sum by ({MVB}, reason) ({rate('mlwarden_predictions_skipped_total', MV)})",
                MVL + " {{reason}}")]),
        Panel("Drift score per feature", "short",
              "PSI, KS statistic and chi-square statistic per feature over the drift window; "
              "PSI above 0.2 is drift by default.",
              [(f"max by (feature, method) (mlwarden_feature_drift_score{{{MV}}})",
                "{{feature}} {{method}}")],
              thresholds=[(None, "green"), (0.1, "orange"), (0.2, "red")]),
        Panel("Drift p-values", "short",
              "Raw p-values of the KS and chi-square tests (before the multiple-testing "
              "correction).",
              [(f"min by (feature, method) (mlwarden_feature_drift_pvalue{{{MV}}})",
                "{{feature}} {{method}}")],
              thresholds=[(None, "red"), (0.05, "green")]),
        Panel("Drifted features", "short",
              "1 while a feature drifts; the model-level flag is mlwarden_drift_detected.",
              [(f"max by (feature) (mlwarden_feature_drifted{{{MV}}})", "{{feature}}"),
               (f"max by ({MVB}) (mlwarden_drift_detected{{{MV}}})", "any " + MVL)],
              kind="state-timeline",
              thresholds=[(None, "green"), (1, "red")],
              mappings=[{"type": "value", "options": {
                  "0": {"text": "stable", "color": "green"},
                  "1": {"text": "drifted", "color": "red"}}}]),
        Panel("Drift window rows", "short",
              "Rows in the drift window; nothing is flagged below min_rows (100).",
              [(f"sum by ({MVB}) (mlwarden_drift_window_rows{{{MV}}})", MVL)],
              thresholds=[(None, "orange"), (100, "green")]),
        Panel("Feature means", "short", "Window mean of each numeric feature.",
              [(f"avg by (feature) (mlwarden_feature_mean{{{MV}}})", "{{feature}}")]),
        Panel("Feature null ratios", "percentunit", "Window share of missing values.",
              [(f"max by (feature) (mlwarden_feature_null_ratio{{{MV}}})", "{{feature}}")],
              thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")]),
        Panel("Payload errors", "reqps", "Payloads not read into rows, by reason.",
              [(f"sum by ({MVB}, reason) ({rate('mlwarden_payload_errors_total', MV)})",
                MVL + " {{reason}}")],
              thresholds=[(None, "green"), (0.01, "orange")]),
        Panel("Rows scored", "short",
              "Rows received by model endpoints per second, and payload values whose names "
              "the baseline does not know.",
              [(f"sum by ({MVB}) ({rate('mlwarden_rows_scored_total', MV)})", "rows " + MVL),
               (f"sum by ({MVB}) ({rate('mlwarden_unknown_features_total', MV)})",
                "unknown features " + MVL)]),
        Panel("Live quality", "short",
              "Accuracy, precision, recall, F1 and calibration error (classifiers) or MAE "
              "and RMSE (regressions) over the labelled window.",
              [(f"max by ({MVB}, metric) (mlwarden_model_quality{{{MV}}})",
                MVL + " {{metric}}")]),
        Panel("Labelled samples", "short",
              "Labelled predictions in the quality window, and predictions waiting for a "
              "label.",
              [(f"sum by ({MVB}) (mlwarden_model_quality_samples{{{MV}}})", "labelled " + MVL),
               (f"sum by ({MVB}) (mlwarden_predictions_remembered{{{MV}}})",
                "waiting " + MVL)],
              thresholds=[(None, "orange"), (200, "green")]),
        Panel("Label delay p50 / p95", "s", "From a prediction to its label.",
              quantiles("mlwarden_label_delay_seconds", MV, MVB, (0.5, 0.95))),
        Panel("Feedback labels", "short", "Labels posted, by result.",
              [(f"sum by ({MVB}, result) ({rate('mlwarden_feedback_labels_total', MV)})",
                MVL + " {{result}}")]),
        Panel("Unlabelled predictions", "percentunit",
              "Share of decided predictions that never got a label, and predictions evicted "
              "unlabelled per second.",
              [(f"max by ({MVB}) (mlwarden_predictions_unlabelled_ratio{{{MV}}})",
                "ratio " + MVL),
               (f"sum by ({MVB}) ({rate('mlwarden_predictions_unlabelled_total', MV)})",
                "evicted/s " + MVL)],
              thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")]),
        Panel("InfluxDB points", "short",
              "Points written to InfluxDB per second, and points lost by reason.",
              [(f"sum by ({MVB}) ({rate('mlwarden_influx_points_written_total', MV)})",
                "written " + MVL),
               (f"sum by ({MVB}, reason) "
                f"({rate('mlwarden_influx_points_dropped_total', MV)})",
                "dropped {{reason}} " + MVL),
               (f"sum by ({MVB}) ({rate('mlwarden_influx_write_errors_total', MV)})",
                "write errors " + MVL)]),
        Panel("InfluxDB buffer", "short", "Points waiting to be written.",
              [(f"sum by ({MVB}) (mlwarden_influx_buffer_points{{{MV}}})", MVL)],
              thresholds=[(None, "green"), (10000, "orange")]),
        Panel("InfluxDB write duration p99", "s", "Duration of one write to InfluxDB.",
              quantiles("mlwarden_influx_write_duration_seconds", MV, MVB, (0.99,))),
        Panel("Internal errors", "short",
              "Errors inside the middleware per second (logged; requests unaffected).",
              # the counter is created at the first error: "or 0 * ..." shows 0 until then
              [(f"sum by ({MVB}) ({rate('mlwarden_internal_errors_total', MV)})"
                f" or 0 * sum by ({MVB}) (mlwarden_requests_in_flight{{{MV}}})", MVL)],
              thresholds=[(None, "green"), (0.001, "red")]),
        Panel("Drift evaluations", "short",
              "Drift evaluations per second, and the p99 time of one.",
              [(f"sum by ({MVB}) ({rate('mlwarden_drift_evaluations_total', MV)})",
                "evaluations/s " + MVL),
               *quantiles("mlwarden_drift_evaluation_duration_seconds", MV, MVB, (0.99,))]),
    ]


# -- the sidecar (its admin port) --------------------------------------------------------------

UP = 'upstream=~"$upstream"'


def sidecar_panels() -> list[Panel]:
    breaker_states = [{"type": "value", "options": {
        "0": {"text": "closed", "color": "green"},
        "1": {"text": "half-open", "color": "orange"},
        "2": {"text": "open", "color": "red"}}}]
    return [
        Panel("Traffic by upstream", "reqps",
              "Client requests by the upstream that answered ('none': the sidecar itself) "
              "and the status class sent.",
              [("sum by (upstream, code) ("
                f"rate(mlwarden_proxy_requests_total{{upstream=~\"$upstream|none\"}}[{RI}]))",
                "{{upstream}} {{code}}")]),
        Panel("Client latency p50 / p95 / p99", "s",
              "Arrival to the last byte, retries and fallbacks included.",
              quantiles("mlwarden_proxy_request_duration_seconds", 'upstream=~"$upstream|none"',
                        "upstream"),
              thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")]),
        Panel("Upstream attempts by outcome", "reqps",
              "Every attempt sent to an upstream, by status class or connection failure.",
              [(f"sum by (upstream, outcome) ({rate('mlwarden_upstream_requests_total', UP)})",
                "{{upstream}} {{outcome}}")]),
        Panel("Upstream latency p99", "s", "One attempt, p99 per upstream.",
              quantiles("mlwarden_upstream_request_duration_seconds", UP, "upstream", (0.99,)),
              thresholds=[(None, "green"), (1.0, "orange"), (5.0, "red")]),
        Panel("Requests in flight", "short", "Client requests the sidecar is serving now.",
              [("sum(mlwarden_proxy_requests_in_flight)", "in flight")]),
        Panel("Canary weight", "percent",
              "Share of requests that try the canary candidate first.",
              [("max by (candidate) (mlwarden_canary_weight_percent)", "{{candidate}}")]),
        Panel("Canary state", "short",
              "The canary's current state (1 for analysing, promoted, done or rolled_back).",
              [("max by (candidate, state) (mlwarden_canary_state)",
                "{{candidate}} {{state}}")],
              kind="state-timeline", thresholds=[(None, "transparent"), (1, "blue")]),
        Panel("Canary analyses", "short", "Canary analyses by verdict.",
              [("sum by (candidate, verdict) "
                f"(increase(mlwarden_canary_analyses_total[{RI}]))",
                "{{candidate}} {{verdict}}")]),
        Panel("Breaker states", "short", "0 closed, 1 half-open, 2 open, per upstream.",
              [(f"max by (upstream) (mlwarden_breaker_state{{{UP}}})", "{{upstream}}")],
              kind="state-timeline",
              thresholds=[(None, "green"), (1, "orange"), (2, "red")],
              mappings=breaker_states),
        Panel("Breaker transitions", "short", "Breaker state changes, by the state entered.",
              [("sum by (upstream, to) "
                f"(increase(mlwarden_breaker_transitions_total{{{UP}}}[{RI}]))",
                "{{upstream}} → {{to}}")]),
        Panel("Retries by reason", "reqps", "Retries granted, by the retriable reason.",
              [(f"sum by (upstream, reason) ({rate('mlwarden_retries_total', UP)})",
                "{{upstream}} {{reason}}")]),
        Panel("Retry budget", "reqps",
              "Requests the retry budget counted, retries it granted and retries it refused.",
              [(f"sum(rate(mlwarden_retry_budget_requests_total[{RI}]))", "requests"),
               (f"sum(rate(mlwarden_retry_budget_retries_total[{RI}]))", "retries"),
               (f"sum(rate(mlwarden_retry_budget_exhausted_total[{RI}]))", "refused")],
              thresholds=[(None, "green"), (0.01, "red")]),
        Panel("Fallbacks", "reqps", "Requests moving on to the next upstream, by reason.",
              [("sum by (from, to, reason) "
                f"(rate(mlwarden_fallbacks_total{{from=~\"$upstream\"}}[{RI}]))",
                "{{from}} → {{to}} {{reason}}")]),
        Panel("Health checks by result", "short", "Health probes per second, by result.",
              [(f"sum by (upstream, result) ({rate('mlwarden_health_checks_total', UP)})",
                "{{upstream}} {{result}}")]),
        Panel("Health-check duration p99", "s", "One probe, p99 per upstream.",
              quantiles("mlwarden_health_check_duration_seconds", UP, "upstream", (0.99,)),
              thresholds=[(None, "green"), (0.5, "orange"), (1.0, "red")]),
        Panel("Upstream in rotation", "short", "1 while health checks keep it in rotation.",
              [(f"min by (upstream) (mlwarden_upstream_healthy{{{UP}}})", "{{upstream}}")],
              kind="state-timeline", thresholds=[(None, "red"), (1, "green")],
              mappings=[{"type": "value", "options": {
                  "0": {"text": "out", "color": "red"},
                  "1": {"text": "in", "color": "green"}}}]),
        Panel("Health transitions", "short", "Upstreams moving in and out of rotation.",
              [("sum by (upstream, to) "
                f"(increase(mlwarden_health_transitions_total{{{UP}}}[{RI}]))",
                "{{upstream}} → {{to}}")]),
        Panel("Shadow copies", "reqps", "Shadow copies by outcome.",
              [("sum by (target, outcome) "
                f"(rate(mlwarden_shadow_requests_total{{target=~\"$upstream\"}}[{RI}]))",
                "{{target}} {{outcome}}")]),
        Panel("Shadow comparisons", "reqps",
              "Compared copies by result, and copies not compared by reason.",
              [("sum by (target, result) "
                f"(rate(mlwarden_shadow_comparisons_total{{target=~\"$upstream\"}}[{RI}]))",
                "{{target}} {{result}}"),
               ("sum by (target, reason) "
                f"(rate(mlwarden_shadow_uncompared_total{{target=~\"$upstream\"}}[{RI}]))",
                "{{target}} uncompared {{reason}}")]),
        Panel("Shadow agreement", "percentunit",
              "Agreement of the shadow with the primary over the recent comparisons.",
              [('min by (target) (mlwarden_shadow_agreement_ratio{target=~"$upstream"})',
                "{{target}}")],
              thresholds=[(None, "red"), (0.9, "orange"), (0.98, "green")]),
        Panel("Shadow duration p99", "s", "One shadow exchange, p99.",
              quantiles("mlwarden_shadow_duration_seconds", 'target=~"$upstream"', "target",
                        (0.99,))),
        Panel("Shadow queue", "short", "Shadow copies waiting to be sent.",
              [('max by (target) (mlwarden_shadow_queue_depth{target=~"$upstream"})',
                "{{target}}")],
              thresholds=[(None, "green"), (50, "orange")]),
        Panel("Healing actions", "short", "Healing-ledger records, by action and outcome.",
              [("sum by (action, outcome) "
                f"(increase(mlwarden_healing_actions_total[{RI}]))",
                "{{action}} {{outcome}}")]),
        Panel("Escalations", "short",
              "Healing actions that escalated to people (action=\"escalation\").",
              [("sum(increase(mlwarden_healing_actions_total{action=\"escalation\"}"
                f"[{RI}]))", "escalations")],
              kind="stat", thresholds=[(None, "green"), (1, "red")]),
        Panel("Breaker shared storage", "short",
              "Whether the breakers' shared state (Redis) answers, its failed accesses and "
              "the attempts admitted without it (fail open).",
              [(f"min by (upstream) (mlwarden_breaker_storage_available{{{UP}}})",
                "available {{upstream}}"),
               (f"sum by (upstream) ({rate('mlwarden_breaker_storage_errors_total', UP)})",
                "errors/s {{upstream}}"),
               (f"sum by (upstream) ({rate('mlwarden_breaker_fail_open_total', UP)})",
                "fail open/s {{upstream}}")],
              thresholds=[(None, "red"), (1, "green")]),
    ]


# -- Grafana JSON ------------------------------------------------------------------------------


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    width = WIDTH[panel.kind]
    steps = [{"color": color, "value": value} for value, color in panel.thresholds]
    targets = [
        {"datasource": {"type": "prometheus", "uid": DS}, "expr": expr,
         "legendFormat": legend, "refId": chr(ord("A") + i),
         **({"format": "heatmap"} if panel.kind == "heatmap" else {})}
        for i, (expr, legend) in enumerate(panel.queries)
    ]
    out: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": DS},
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "mappings": panel.mappings,
                         "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    }
    if panel.kind == "heatmap":
        out["options"] = {"calculate": False, "yAxis": {"unit": panel.unit}}
    return out


def layout(panels: list[Panel]) -> list[dict]:
    out, x, y = [], 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        width = WIDTH[panel.kind]
        if x + width > 24:
            x, y = 0, y + 8
        out.append(panel_json(panel, panel_id, x, y))
        x += width
    return out


def query_variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name, "label": label, "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query, "refresh": 2, "multi": True, "includeAll": True,
        "allValue": ".*", "current": {}, "options": [], "sort": 1,
    }


def dashboard(uid: str, title: str, panels: list[Panel], variables: list[dict]) -> dict:
    datasource = {
        "name": "datasource", "label": "Data source", "type": "datasource",
        "query": "prometheus", "current": {}, "options": [], "refresh": 1,
    }
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                      "description": "The Prometheus that scrapes mlwarden",
                      "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "uid": uid,
        "title": title,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True,
                   "title": "mlwarden", "includeVars": False, "keepTime": True}],
        "templating": {"list": [datasource, *variables]},
        "annotations": {"list": []},
        "panels": layout(panels),
    }


def dashboards() -> dict[str, dict]:
    """File name → dashboard JSON."""
    return {
        "mlwarden-inference.json": dashboard(
            "mlwarden-inference", "mlwarden / inference", inference_panels(),
            [query_variable("model", "Model", "label_values(mlwarden_requests_in_flight, model)"),
             query_variable("version", "Version",
                            'label_values(mlwarden_requests_in_flight{model=~"$model"}, version)')],
        ),
        "mlwarden-sidecar.json": dashboard(
            "mlwarden-sidecar", "mlwarden / sidecar", sidecar_panels(),
            [query_variable("upstream", "Upstream",
                            "label_values(mlwarden_upstream_healthy, upstream)")],
        ),
    }


def render(board: dict) -> str:
    # Grafana's ${DS_PROMETHEUS} input is replaced on import; panels refer to it directly.
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
