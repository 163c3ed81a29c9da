"""The health report as a typed contract: the wire format, and reading other servers' answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlwarden.middleware.baseline import build_baseline
from mlwarden.middleware.drift import DriftThresholds, evaluate_drift
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.feedback import Feedback
from mlwarden.middleware.health import HealthThresholds, HealthWindow, health_report
from mlwarden.middleware.health_report import (
    MAX_FEATURES,
    MAX_REASONS,
    MAX_REPORT_BYTES,
    MAX_SCORES,
    MAX_TEXT,
    DriftVerdict,
    FeatureScores,
    HealthReport,
    InfluxStatus,
)
from mlwarden.middleware.memory import PredictionMemory
from mlwarden.middleware.payloads import FeatureBatch

pytestmark = pytest.mark.floor


def _report(*, drift: bool = True, quality: bool = True) -> HealthReport:
    """A report as the middleware makes it: a window of requests, drift in ``x``, labels."""
    rng = np.random.default_rng(3)
    baseline = build_baseline(
        {"x": rng.normal(size=2000), "c": rng.choice(["a", "b", "c"], 2000)}, source="t"
    )
    windows = FeatureWindows(baseline, max_rows=5000)
    columns = {"x": list(rng.normal(3, 1, 600)), "c": list(rng.choice(["a", "b", "c"], 600))}
    windows.add(FeatureBatch(600, columns, "records"))
    window = HealthWindow(max_requests=100, max_age_s=300, clock=lambda: 50.0)
    for i in range(40):
        window.record(0.001 * (i + 1), i % 7 == 0)
        window.record_confidence(0.9)
    feedback = Feedback(model="m", version="1", memory=PredictionMemory(), task="classification")
    for i in range(10):
        feedback.remember(b"r%d" % i, ["fraud" if i % 3 else "ok"], [], [0.7])
    feedback.record([{"request_id": f"r{i}", "label": "ok"} for i in range(10)])
    return health_report(
        model="m",
        version="1",
        window=window,
        drift=evaluate_drift(windows, DriftThresholds()) if drift else None,
        thresholds=HealthThresholds(min_requests=5),
        started_at=0.0,
        influx=InfluxStatus(buffered_points=0, max_buffer_points=10, write_in_flight=False),
        quality=feedback.report() if quality else None,
    )


def test_the_wire_format_has_the_documented_keys() -> None:
    data = json.loads(_report().to_json())
    assert list(data) == [
        "status",
        *("reasons", "model", "window", "drift", "uptime_s", "influx", "quality"),
    ]
    assert data["model"] == {"name": "m", "version": "1"}
    assert list(data["window"]) == [
        *("seconds", "requests", "errors", "error_rate", "latency_seconds", "mean_confidence"),
    ]
    assert list(data["drift"]) == [
        *("evaluated", "evaluated_at", "rows", "enough_data", "drift_detected"),
        *("drifted_features", "scales", "alpha_per_test", "expected_run_rows", "features"),
        "detected",
    ]
    assert list(data["drift"]["features"][0]) == [
        *("name", "kind", "rows", "mean", "null_ratio", "scores", "pvalues"),
        *("tests", "drifted", "flagged_by"),
    ]
    assert data["status"] == "degraded" and "drift in x" in data["reasons"]


def test_without_drift_or_extras_the_report_is_the_short_form() -> None:
    report = _report(drift=False, quality=False)
    data = json.loads(report.to_json())
    assert data["drift"] == {"evaluated": False, "detected": False, "drifted_features": []}
    assert "quality" not in data and report.drift_score is None


def test_a_middleware_report_reads_back_equal() -> None:
    report = _report()
    assert HealthReport.from_json(report.to_json()) == report


def test_the_drift_score_is_the_largest_psi_computed_when_the_verdict_is_made() -> None:
    report = _report()
    psis = [f.scores["psi"] for f in report.drift.features]
    assert report.drift_score == report.drift.score == max(psis)
    verdict = DriftVerdict(
        features=(FeatureScores(scores={"ks": 0.3}), FeatureScores(scores={"psi": None}))
    )
    assert verdict.score is None
    assert "score" not in json.loads(report.to_json())["drift"]  # not on the wire


def test_the_flat_figures_read_by_the_sidecar_come_from_the_blocks() -> None:
    report = _report()
    assert report.error_rate == report.window.error_rate
    assert report.p99_latency_seconds == report.window.latency_seconds.p99
    assert report.drift_detected is True and report.drifted_features == ("x",)
    assert report.quality is not None and report.accuracy == report.quality.accuracy
    assert report.labelled_samples == 10.0
    bare = HealthReport(status="ok")
    assert (bare.accuracy, bare.labelled_samples, bare.error_rate) == (None, None, None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"fine",
        b"\xff\xfe",
        b'{"status": "UP"}',
        b'["ok"]',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({"status": "ok", "pad": "x" * MAX_REPORT_BYTES}).encode(),
    ],
    ids=["empty", "text", "not-utf8", "other-format", "list", "too-deep", "too-large"],
)
def test_a_body_that_is_not_a_report_reads_as_none(body: bytes) -> None:
    assert HealthReport.from_json(body) is None


def test_reading_a_server_answer_bounds_what_is_kept() -> None:
    feature = {"name": "f" * 400, "scores": {f"m{i}": 0.1 for i in range(20)}}
    body = json.dumps(
        {
            "status": "degraded",
            "reasons": ["r" * 1000] * 50,
            "model": {"name": "n" * 1000},
            "drift": {"drifted_features": ["d"] * 500, "features": [feature] * 150},
            "quality": {"labels": {f"k{i}": 1 for i in range(100)}},
        }
    ).encode()
    assert len(body) < MAX_REPORT_BYTES
    report = HealthReport.from_json(body)
    assert report is not None
    assert len(report.reasons) == MAX_REASONS and {len(r) for r in report.reasons} == {MAX_TEXT}
    assert report.model.name is not None and len(report.model.name) == MAX_TEXT
    assert len(report.drift.drifted_features) == MAX_FEATURES
    assert len(report.drift.features) == MAX_FEATURES
    assert len(report.drift.features[0].scores) == MAX_SCORES
    assert report.quality is not None and len(report.quality.labels) == 20


def test_mistyped_fields_read_as_none_never_as_an_error() -> None:
    body = json.dumps(
        {
            "status": "ok",
            "reasons": "not a list",
            "model": ["m"],
            "window": {"requests": -3, "errors": True, "error_rate": "0.1", "seconds": 1e400},
            "drift": {"detected": "yes", "features": [{"scores": {"psi": True}}, "junk"]},
            "uptime_s": None,
            "quality": {"accuracy": float("nan"), "labelled_samples": 2.5},
        }
    ).encode()
    report = HealthReport.from_json(body)
    assert report is not None
    assert report.reasons == () and report.model.name is None
    assert (report.window.requests, report.window.errors, report.window.error_rate) == (
        None,
        None,
        None,
    )
    assert report.drift_detected is False and report.drift_score is None
    assert len(report.drift.features) == 1
    assert report.quality is not None and report.accuracy is None
    assert report.labelled_samples is None
