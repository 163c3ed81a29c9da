"""Ground truth through the middleware: request ids, ``POST /-/feedback``, live quality.

Real Starlette model servers under uvicorn, wrapped by the middleware; labels sent back over
HTTP or through ``record_labels``; figures compared with a direct computation on the pairs.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from tests.servers import serve_app

pytestmark = pytest.mark.floor

TOKEN = "feedback-token-0123456789"
#: What a labelling client sends with its labels.
AUTH = {"authorization": f"Bearer {TOKEN}"}


def classifier(answers: dict[int, tuple[str, float]]) -> Starlette:
    """Answers the class stored for the request's ``i`` (the test decides the truth)."""

    async def predict(request: Request) -> JSONResponse:
        i = (await request.json())["i"]
        cls, confidence = answers[i]
        return JSONResponse({"predictions": [{"label": cls, "confidence": confidence}]})

    async def set_id(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": [1.5]}, headers={"x-request-id": "app-made-id"})

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/own-id/predict", set_id, methods=["POST"]),
            Route("/other", predict, methods=["POST"]),
        ]
    )


def monitored(
    app: Starlette, version: str, registry: CollectorRegistry, **options: Any
) -> Starlette:
    options = {"positive_class": "fraud", "feedback_token": TOKEN, **options}
    app.add_middleware(
        InferenceMonitor, model_name="fraud", model_version=version, registry=registry, **options
    )
    return app


def monitor_of(app: Starlette) -> InferenceMonitor:
    node = app.middleware_stack
    while not isinstance(node, InferenceMonitor):
        node = node.app
    return node


@contextlib.contextmanager
def served(app: Starlette) -> Iterator[httpx.Client]:
    with serve_app(app) as s, httpx.Client(base_url=s.url, trust_env=False, timeout=10) as c:
        yield c


def stream(
    n: int, accuracy: float, seed: int
) -> tuple[dict[int, tuple[str, float]], dict[int, str]]:
    """Predictions and truths with exactly ``accuracy`` of them right."""
    rng = random.Random(seed)
    answers, truths = {}, {}
    wrong = set(rng.sample(range(n), round(n * (1 - accuracy))))
    for i in range(n):
        truth = rng.choice(["fraud", "ok", "ok"])
        predicted = ("ok" if truth == "fraud" else "fraud") if i in wrong else truth
        answers[i] = (predicted, round(rng.uniform(0.5, 1.0), 3))
        truths[i] = truth
    return answers, truths


def by_formula(pairs: list[tuple[str, str]], positive: str) -> dict[str, float]:
    tp = sum(p == positive and t == positive for p, t in pairs)
    fp = sum(p == positive and t != positive for p, t in pairs)
    fn = sum(p != positive and t == positive for p, t in pairs)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "accuracy": sum(p == t for p, t in pairs) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
    }


def test_two_versions_live_accuracy_and_f1_match_a_direct_computation() -> None:
    registry = CollectorRegistry()
    expected = {}
    for version, accuracy, seed in (("1", 0.95, 1), ("2", 0.80, 2)):
        answers, truths = stream(400, accuracy, seed)
        app = monitored(classifier(answers), version, registry)
        with served(app) as client:
            ids = {}
            for i in answers:
                r = client.post("/predict", json={"i": i})
                ids[i] = r.headers["x-request-id"]
            labels = [{"request_id": ids[i], "label": truths[i]} for i in reversed(answers)]
            result = client.post("/-/feedback", json=labels, headers=AUTH).json()
            health = client.get("/-/health").json()
            client.get("/metrics")
        assert result == {"accepted": 400, "unknown": 0, "expired": 0, "duplicate": 0, "invalid": 0}
        pairs = [(answers[i][0], truths[i]) for i in answers]
        expected[version] = by_formula(pairs, "fraud")
        quality = health["quality"]
        assert quality["labelled_samples"] == 400 and quality["task"] == "classification"
        for name, value in expected[version].items():
            assert quality[name] == pytest.approx(value, abs=1e-9), name
    for version, figures in expected.items():
        labels = {"model": "fraud", "version": version}
        assert registry.get_sample_value(
            "mlwarden_model_quality", {**labels, "metric": "accuracy"}
        ) == pytest.approx(figures["accuracy"])
        assert registry.get_sample_value(
            "mlwarden_model_quality", {**labels, "metric": "f1"}
        ) == pytest.approx(figures["f1"])
        assert registry.get_sample_value("mlwarden_model_quality_samples", labels) == 400
        assert registry.get_sample_value("mlwarden_label_delay_seconds_count", labels) == 400
    assert expected["1"]["accuracy"] == 0.95 and expected["2"]["accuracy"] == 0.80


def test_request_ids_are_kept_when_safe_made_otherwise_and_adopted_from_the_app() -> None:
    registry = CollectorRegistry()
    app = monitored(classifier({0: ("ok", 0.9)}), "1", registry)
    with served(app) as client:
        mine = client.post("/predict", json={"i": 0}, headers={"x-request-id": "order-42.a"})
        unsafe = client.post(
            "/predict", json={"i": 0}, headers={"x-request-id": "bad id\twith spaces"}
        )
        made = client.post("/predict", json={"i": 0})
        adopted = client.post("/own-id/predict", json={})
        not_scored = client.post("/other", json={"i": 0})
        result = client.post(
            "/-/feedback",
            json={
                "labels": [
                    {"request_id": "order-42.a", "label": "ok"},
                    {"request_id": made.headers["x-request-id"], "label": "ok"},
                    {"request_id": "app-made-id", "label": 1.0},
                ]
            },
            headers=AUTH,
        ).json()
    assert mine.headers["x-request-id"] == "order-42.a"
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    assert len(made.headers["x-request-id"]) > 12
    assert adopted.headers.get_list("x-request-id") == ["app-made-id"]
    assert "x-request-id" not in not_scored.headers
    # The app-made id was remembered under the app's own value.
    assert result["accepted"] == 3


def test_unknown_duplicate_expired_and_invalid_labels_are_counted_not_fatal() -> None:
    registry = CollectorRegistry()
    answers = {i: ("ok", 0.9) for i in range(30)}
    app = monitored(classifier(answers), "1", registry, remember_max_predictions=10)
    with served(app) as client:
        ids = [client.post("/predict", json={"i": i}).headers["x-request-id"] for i in range(30)]
        # Only the last 10 are remembered: the first 20 were evicted (count bound).
        batch = [{"request_id": rid, "label": "ok"} for rid in ids]
        batch += [
            {"request_id": ids[-1], "label": "ok"},  # twice
            {"request_id": "never-seen", "label": "ok"},
            {"request_id": ids[-2]},  # no label
            "not an object",
        ]
        result = client.post("/-/feedback", json=batch, headers=AUTH).json()
        monitor = monitor_of(app)
    assert result == {"accepted": 10, "expired": 20, "duplicate": 1, "unknown": 1, "invalid": 2}
    assert len(monitor.feedback.memory) <= 10
    labels = {"model": "fraud", "version": "1"}
    assert (
        registry.get_sample_value("mlwarden_feedback_labels_total", {**labels, "result": "expired"})
        == 20
    )


def test_a_batch_of_10000_labels_from_python_and_memory_stays_bounded() -> None:
    registry = CollectorRegistry()
    answers = {i: ("fraud" if i % 4 == 0 else "ok", 0.8) for i in range(200)}
    app = monitored(classifier(answers), "1", registry, remember_max_predictions=150)
    with served(app) as client:
        ids = [client.post("/predict", json={"i": i}).headers["x-request-id"] for i in range(200)]
    monitor = monitor_of(app)
    entries = [{"request_id": rid, "label": "ok"} for rid in ids[50:]]
    entries += [{"request_id": f"unknown-{k}", "label": "ok"} for k in range(10_000 - 150)]
    result = monitor.record_labels(entries)
    assert result["accepted"] == 150 and result["unknown"] == 10_000 - 150
    assert len(monitor.feedback.memory) == 150
    report = monitor.health_report().quality
    assert report is not None and report.labelled_samples == 150
    assert report.accuracy == pytest.approx(
        sum(answers[i][0] == "ok" for i in range(50, 200)) / 150
    )


def test_the_feedback_endpoint_wants_the_token_and_caps_body_and_batch() -> None:
    registry = CollectorRegistry()
    app = monitored(
        classifier({0: ("ok", 0.9)}),
        "1",
        registry,
        feedback_max_body_bytes=2048,
        feedback_max_batch=3,
    )
    with served(app) as client:
        rid = client.post("/predict", json={"i": 0}).headers["x-request-id"]
        label = {"request_id": rid, "label": "ok"}
        without = client.post("/-/feedback", json=label)
        wrong = client.post("/-/feedback", json=label, headers={"authorization": "Bearer x"})
        big = client.post("/-/feedback", content=b"[" + b" " * 5000 + b"]", headers=AUTH)
        many = client.post("/-/feedback", json=[label] * 4, headers=AUTH)
        garbage = client.post("/-/feedback", content=b"{not json", headers=AUTH)
        ok = client.post("/-/feedback", json=label, headers=AUTH)
    assert [without.status_code, wrong.status_code] == [401, 401]
    assert without.headers["www-authenticate"] == "Bearer"
    assert big.status_code == 413
    assert many.status_code == 400 and "at most 3" in many.json()["error"]
    assert garbage.status_code == 400
    assert ok.json()["accepted"] == 1


def test_regression_quality_is_mae_and_rmse() -> None:
    registry = CollectorRegistry()

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": [(await request.json())["x"] * 2.0]})

    app = monitored(Starlette(routes=[Route("/predict", predict, methods=["POST"])]), "1", registry)
    truths = {0: 1.0, 1: 5.0, 2: 10.0}  # predictions 0, 4, 8 for x = 0, 2, 4
    with served(app) as client:
        ids = {
            i: client.post("/predict", json={"x": 2 * i}).headers["x-request-id"] for i in truths
        }
        client.post(
            "/-/feedback",
            json=[{"request_id": ids[i], "label": truths[i]} for i in truths],
            headers=AUTH,
        )
        quality = client.get("/-/health").json()["quality"]
    errors = [0 - 1.0, 4 - 5.0, 8 - 10.0]
    assert quality["task"] == "regression"
    assert quality["mae"] == pytest.approx(sum(abs(e) for e in errors) / 3)
    assert quality["rmse"] == pytest.approx((sum(e * e for e in errors) / 3) ** 0.5)


def test_a_refused_label_does_not_use_the_prediction_up() -> None:
    registry = CollectorRegistry()

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": [2.0]})

    app = monitored(
        Starlette(routes=[Route("/predict", predict, methods=["POST"])]),
        "1",
        registry,
        quality_task="regression",
        positive_class=None,
    )
    with served(app) as client:
        rid = client.post("/predict", json={}).headers["x-request-id"]
        label = {"request_id": rid, "label": "n/a"}
        first = client.post("/-/feedback", json=label, headers=AUTH).json()
        label = {"request_id": rid, "label": 2.5}
        second = client.post("/-/feedback", json=label, headers=AUTH).json()
    assert first["invalid"] == 1 and second["accepted"] == 1


def _feedback() -> Any:
    from mlwarden.middleware.feedback import Feedback
    from mlwarden.middleware.memory import PredictionMemory

    return Feedback(model="fraud", version="1", memory=PredictionMemory(), task="classification")


def test_a_batch_answer_is_remembered_under_numbered_ids() -> None:
    feedback = _feedback()
    assert feedback.remember(b"order-7", ["fraud", "ok"], [], [0.9, 0.6]) == 2
    result = feedback.record(
        [
            {"request_id": "order-7#1", "label": "ok"},
            {"request_id": "order-7#0", "label": "ok"},
            {"request_id": "order-7", "label": "ok"},
        ]
    )
    assert (result["accepted"], result["unknown"]) == (2, 1)
    assert feedback.window is not None and feedback.window.snapshot().accuracy == 0.5


def test_a_label_id_outside_latin_1_is_unknown_not_an_error() -> None:
    feedback = _feedback()
    feedback.remember(b"caf\xe9-1", ["ok"], [], [0.9])  # an id an app set in latin-1 bytes
    result = feedback.record(
        [{"request_id": "caf\u00e9-1", "label": "ok"}, {"request_id": "\u20ac-1", "label": "ok"}]
    )
    assert (result["accepted"], result["unknown"], result["invalid"]) == (1, 1, 0)


def test_a_label_for_a_prediction_still_staged_is_joined_with_its_delay() -> None:
    from mlwarden.middleware.feedback import Feedback
    from mlwarden.middleware.memory import PredictionMemory

    now = [100.0]
    memory = PredictionMemory(clock=lambda: now[0])
    feedback = Feedback(
        model="fraud", version="1", memory=memory, task="classification", clock=lambda: now[0]
    )
    feedback.remember(b"r1", ["fraud"], [], [0.8])  # staged: nothing read the memory since
    now[0] += 42.0
    assert feedback.record([{"request_id": "r1", "label": "fraud"}])["accepted"] == 1
    snapshot = feedback.window.snapshot() if feedback.window is not None else None
    assert snapshot is not None and (snapshot.samples, snapshot.delay_p50_s) == (1, 42.0)
    assert feedback.report().remembered == 1
