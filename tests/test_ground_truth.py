"""Ground truth that cannot be poisoned and is timed right (issue 16), over real HTTP.

Real Starlette and FastAPI model servers under uvicorn with the middleware added as a team
adds it; clients are httpx. Each test is one promise: ids nobody can guess, labels only with
a credential, label delays and expiry counted from the answer (whatever the scrapes do),
batch answers remembered whole, the monitor reachable from the app, probabilities scored as
classes, confidences read where the answer puts them. The sidecar's side (the model's
operational paths not forwarded) is ``tests/test_operational_paths.py``.
"""

from __future__ import annotations

import binascii
import bisect
import contextlib
import logging
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import ConfigError, InferenceMonitor, find_monitor
from mlwarden.middleware import request_ids as request_ids_module
from mlwarden.middleware.options import MonitorOptions
from mlwarden.middleware.request_ids import ID_BITS, RequestIds
from tests.servers import serve_app

pytestmark = pytest.mark.floor

TOKEN = "labelling-job-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MV = {"model": "m", "version": "1"}


def model(answer: Any = None, **options: Any) -> tuple[Starlette, CollectorRegistry]:
    """A model server answering ``answer(payload)`` (default: the payload's ``p`` as a
    probability-like number), with the middleware; its own registry."""
    registry = CollectorRegistry()

    async def predict(request: StarletteRequest) -> JSONResponse:
        payload = await request.json()
        return JSONResponse(answer(payload) if answer else {"predictions": [payload["p"]]})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="1",
        registry=registry,
        **{"feedback_token": TOKEN, **options},
    )
    return app, registry


@contextlib.contextmanager
def served(app: Any) -> Iterator[httpx.Client]:
    with serve_app(app) as s, httpx.Client(base_url=s.url, trust_env=False, timeout=10) as c:
        yield c


def label(client: httpx.Client, request_id: str, value: Any) -> dict[str, Any]:
    r = client.post("/-/feedback", json={"request_id": request_id, "label": value}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


# -- request ids ----------------------------------------------------------------------------


def test_generated_request_ids_are_96_random_bits_and_a_guessed_neighbour_labels_nothing() -> None:
    app, registry = model()
    with served(app) as client:
        ids = [client.post("/predict", json={"p": 0.5}).headers["x-request-id"] for _ in range(300)]
        # A client guessing from its own id: the ids next to it, as numbers and as a counter.
        mine = ids[-1]
        guesses = [format(int(mine, 16) + d, "024x") for d in (-2, -1, 1, 2)]
        guesses += [mine[:-1] + c for c in "0123456789abcdef" if c != mine[-1]]
        result = client.post(
            "/-/feedback", json=[{"request_id": g, "label": 1} for g in guesses], headers=AUTH
        ).json()
    assert all(len(i) == ID_BITS // 4 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    # No shared prefix (the old ids were one per-process prefix plus a counter): the first
    # 8 hex digits of 300 random ids are all different but for a 1e-5 chance.
    assert len({i[:8] for i in ids}) == len(ids)
    # Each hex digit is used about as often as the others in every position.
    for position in (0, 11, 23):
        counts = [sum(i[position] == c for i in ids) for c in "0123456789abcdef"]
        assert max(counts) < 50, (position, counts)  # 300 / 16 = 19 expected; 50 is p < 1e-9
    assert result["accepted"] == 0 and result["unknown"] == len(guesses)
    assert registry.get_sample_value("mlwarden_model_quality_samples", MV) == 0


def test_each_generated_id_uses_its_own_bits_from_the_os_random_source(monkeypatch) -> None:
    drawn = []

    def urandom(n: int) -> bytes:
        block = bytes((len(drawn) * 7 + i) % 256 for i in range(n))
        drawn.append(block)
        return block

    monkeypatch.setattr(request_ids_module.os, "urandom", urandom)
    ids = RequestIds("x-request-id")
    made = [ids.for_request([]) for _ in range(1025)]
    assert len(drawn) == 3  # 512 ids a draw
    whole = binascii.hexlify(b"".join(drawn))
    assert b"".join(made) == whole[: 24 * 1025]  # every id its own 12 bytes, none reused
    request_ids_module._discard_after_fork()  # a forked child draws afresh
    ids.for_request([])
    assert len(drawn) == 4


def test_a_safe_client_id_is_honoured_and_an_unsafe_one_replaced() -> None:
    app, _ = model()
    with served(app) as client:
        kept = client.post("/predict", json={"p": 0.2}, headers={"x-request-id": "order-42"})
        replaced = client.post("/predict", json={"p": 0.2}, headers={"x-request-id": "a b"})
        result = label(client, "order-42", 0.25)
    assert kept.headers["x-request-id"] == "order-42"
    assert len(replaced.headers["x-request-id"]) == 24
    assert result["accepted"] == 1


# -- the credential ---------------------------------------------------------------------------


def test_without_a_token_the_endpoint_refuses_labels_but_record_labels_works(
    monkeypatch, caplog
) -> None:
    monkeypatch.delenv("MLWARDEN_FEEDBACK_TOKEN", raising=False)
    app, _ = model(feedback_token=None)
    with caplog.at_level(logging.INFO, logger="mlwarden.middleware"), served(app) as client:
        rid = client.post("/predict", json={"p": 0.9}).headers["x-request-id"]
        refused = client.post(
            "/-/feedback", json={"request_id": rid, "label": 1}, headers={"authorization": "x"}
        )
        result = find_monitor(app).record_labels([{"request_id": rid, "label": 1}])
    assert refused.status_code == 403
    assert "feedback_token" in refused.json()["error"]
    assert "MLWARDEN_FEEDBACK_TOKEN" in refused.json()["error"]
    assert result["accepted"] == 1
    assert any("refuses labels until a token is set" in r.message for r in caplog.records)


def test_the_token_can_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MLWARDEN_FEEDBACK_TOKEN", "from-the-environment-0123")
    app, _ = model(feedback_token=None)
    with served(app) as client:
        rid = client.post("/predict", json={"p": 0.9}).headers["x-request-id"]
        entry = {"request_id": rid, "label": 1}
        missing = client.post("/-/feedback", json=entry)
        wrong = client.post("/-/feedback", json=entry, headers=AUTH)
        right = client.post(
            "/-/feedback",
            json=entry,
            headers={"authorization": "Bearer from-the-environment-0123"},
        )
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.json()["accepted"] == 1


def test_anonymous_labels_only_when_spelled_out_and_warned_at_start_up(monkeypatch, caplog) -> None:
    monkeypatch.delenv("MLWARDEN_FEEDBACK_TOKEN", raising=False)
    app, _ = model(feedback_token=None, feedback_anonymous=True)
    with caplog.at_level(logging.WARNING, logger="mlwarden.middleware"), served(app) as client:
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        rid = client.post("/predict", json={"p": 0.9}).headers["x-request-id"]
        result = client.post("/-/feedback", json={"request_id": rid, "label": 1}).json()
    assert result["accepted"] == 1
    assert any("without a token (feedback_anonymous=True)" in r.message for r in warned)


@pytest.mark.parametrize(
    ("options", "environ", "problem"),
    [
        ({}, {"MLWARDEN_FEEDBACK_TOKEN": "short"}, "MLWARDEN_FEEDBACK_TOKEN: at least 16"),
        ({"feedback_token": "t" * 16, "feedback_anonymous": True}, {}, "feedback_anonymous:"),
        (
            {"feedback_anonymous": True},
            {"MLWARDEN_FEEDBACK_TOKEN": "t" * 16},
            "feedback_anonymous: not with a feedback token (MLWARDEN_FEEDBACK_TOKEN is set)",
        ),
        ({"feedback_anonymous": "yes"}, {}, "feedback_anonymous: expected true or false"),
        ({"decision_threshold": 0.7}, {}, "decision_threshold: only with quality_task"),
        (
            {"quality_task": "classification", "decision_threshold": 1.0},
            {},
            "decision_threshold: expected a probability between 0 and 1",
        ),
    ],
)
def test_ambiguous_or_bad_ground_truth_options_are_named(
    options: dict[str, Any], environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        MonitorOptions.from_kwargs({"model_name": "m", **options}, environ=environ)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


# -- timing -----------------------------------------------------------------------------------


def test_label_delays_count_from_the_answer_whatever_the_scrape_timing() -> None:
    """Predictions, scrapes and labels interleaved on one timeline, the scrapes at random
    times: the delay histogram's mean and the health report's median match what the client
    measured within 10 %."""
    rng = random.Random(16)
    app, registry = model()
    events: list[tuple[float, str, int]] = []
    n = 24
    for i in range(n):
        at = 0.03 * i
        events.append((at, "predict", i))
        events.append((at + rng.uniform(0.8, 1.5), "label", i))  # after every prediction
    events += [(rng.uniform(0, 2.2), "scrape", -1) for _ in range(6)]
    events.sort()
    answered: dict[int, float] = {}
    ids: dict[int, str] = {}
    measured = []
    with served(app) as client:
        start = time.monotonic()
        for at, kind, i in events:
            time.sleep(max(0.0, start + at - time.monotonic()))
            if kind == "predict":
                ids[i] = client.post("/predict", json={"p": 0.7}).headers["x-request-id"]
                answered[i] = time.monotonic()
            elif kind == "label":
                measured.append(time.monotonic() - answered[i])
                assert label(client, ids[i], 1)["accepted"] == 1
            else:
                client.get("/metrics")
        quality = client.get("/-/health").json()["quality"]
    count = registry.get_sample_value("mlwarden_label_delay_seconds_count", MV)
    total = registry.get_sample_value("mlwarden_label_delay_seconds_sum", MV)
    assert count == n
    assert total / n == pytest.approx(statistics.mean(measured), rel=0.10)
    ordered = sorted(measured)
    assert quality["delay_p50_s"] == pytest.approx(ordered[n // 2 - 1], rel=0.10)


def test_a_label_after_remember_max_age_s_is_expired_whatever_the_scrape_timing() -> None:
    app, _ = model(remember_max_age_s=0.5)
    with served(app) as client:
        old = client.post("/predict", json={"p": 0.7}).headers["x-request-id"]
        old_scraped = client.post("/predict", json={"p": 0.7}).headers["x-request-id"]
        time.sleep(0.3)
        client.get("/metrics")  # a scrape between prediction and label changes nothing
        time.sleep(0.35)
        fresh = client.post("/predict", json={"p": 0.7}).headers["x-request-id"]
        outcomes = [label(client, rid, 1) for rid in (old, old_scraped, fresh)]
    assert [o["expired"] for o in outcomes] == [1, 1, 0]
    assert outcomes[2]["accepted"] == 1


# -- batches ----------------------------------------------------------------------------------


def test_a_batch_answer_is_remembered_whole_up_to_max_rows() -> None:
    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": [0.25] * payload["n"]}

    app, registry = model(answer, max_rows=3_000)
    with served(app) as client:
        big = client.post("/predict", json={"n": 2_500}).headers["x-request-id"]
        over = client.post("/predict", json={"n": 3_500}).headers["x-request-id"]
        entries = [{"request_id": f"{big}#{k}", "label": 0.5} for k in range(2_500)]
        entries += [{"request_id": f"{over}#{k}", "label": 0.5} for k in (0, 2_999, 3_000)]
        result = client.post("/-/feedback", json=entries, headers=AUTH).json()
    # The answer's reader reads max_rows predictions; those are remembered, no more.
    assert result["accepted"] == 2_502 and result["unknown"] == 1
    assert registry.get_sample_value("mlwarden_model_quality_samples", MV) == 2_502


# -- the monitor from the app -----------------------------------------------------------------


def test_find_monitor_and_app_state_reach_the_monitor_added_with_add_middleware() -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    seen: dict[str, Any] = {}

    @app.post("/predict")
    async def predict(payload: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": [{"label": "churned", "probability": 0.8}]}

    @app.post("/labels")
    async def labels(request: Request) -> dict[str, int]:
        monitor = find_monitor(request.app)
        seen["state"] = request.app.state.mlwarden_monitor
        seen["monitor"] = monitor
        return monitor.record_labels(await request.json())

    app.add_middleware(InferenceMonitor, model_name="m", registry=registry)
    app.add_middleware(GZipMiddleware)  # one more layer to walk through
    with pytest.raises(LookupError, match="builds its middleware when it starts"):
        find_monitor(app)
    with served(app) as client:
        rid = client.post("/predict", json={}).headers["x-request-id"]
        result = client.post("/labels", json=[{"request_id": rid, "label": "churned"}]).json()
    assert result["accepted"] == 1
    assert seen["state"] is seen["monitor"] and isinstance(seen["monitor"], InferenceMonitor)
    with pytest.raises(LookupError, match="for model 'other'"):
        find_monitor(app, model_name="other")


def test_find_monitor_picks_a_model_by_name() -> None:
    inner = InferenceMonitor(
        Starlette(), model_name="a", registry=CollectorRegistry(), tracing=False
    )
    outer = InferenceMonitor(inner, model_name="b", registry=CollectorRegistry(), tracing=False)
    assert find_monitor(outer) is outer
    assert find_monitor(outer, model_name="a") is inner


# -- probabilities as classes, confidences where the answer puts them -------------------------


def test_probability_outputs_are_classes_by_the_decision_threshold_and_keep_calibration() -> None:
    rng = random.Random(7)
    truths = {i: rng.choice(["churned", "stayed"]) for i in range(200)}
    probs = {i: round(rng.uniform(0.55, 1.0) if truths[i] == "churned" else rng.uniform(0, 0.8), 3)
             for i in truths}  # fmt: skip
    app, registry = model(
        quality_task="classification", positive_class="churned", decision_threshold=0.6
    )
    with served(app) as client:
        ids = {i: client.post("/predict", json={"p": probs[i]}).headers["x-request-id"]
               for i in truths}  # fmt: skip
        entries = [{"request_id": ids[i], "label": truths[i]} for i in truths]
        result = client.post("/-/feedback", json=entries, headers=AUTH).json()
        quality = client.get("/-/health").json()["quality"]
    predicted = {i: "churned" if probs[i] >= 0.6 else "stayed" for i in truths}
    tp = sum(predicted[i] == truths[i] == "churned" for i in truths)
    p = sum(predicted[i] == "churned" for i in truths)
    t = sum(truths[i] == "churned" for i in truths)
    accuracy = sum(predicted[i] == truths[i] for i in truths) / len(truths)
    # Expected calibration error over the top-label confidences (p or 1 - p), 10 bins.
    # Bins (k/10, (k+1)/10], a confidence of 0 in the first.
    bins: dict[int, list[tuple[float, bool]]] = {}
    edges = [k / 10 for k in range(11)]
    for i in truths:
        confidence = probs[i] if predicted[i] == "churned" else 1 - probs[i]
        b = min(9, max(0, bisect.bisect_left(edges, confidence) - 1))
        bins.setdefault(b, []).append((confidence, predicted[i] == truths[i]))
    ece = sum(abs(sum(c for c, _ in v) - sum(ok for _, ok in v)) for v in bins.values()) / len(
        truths
    )
    assert result["accepted"] == 200 and quality["task"] == "classification"
    assert quality["accuracy"] == pytest.approx(accuracy)
    assert quality["f1"] == pytest.approx(2 * tp / (p + t))
    assert quality["calibration_error"] == pytest.approx(ece, abs=1e-9)
    assert registry.get_sample_value("mlwarden_model_quality", {**MV, "metric": "f1"}) > 0


def test_a_probability_without_positive_class_takes_1_and_0_and_refuses_other_labels() -> None:
    app, _ = model(
        answer=lambda payload: [{"probability": payload["p"]}], quality_task="classification"
    )
    with served(app) as client:
        high = client.post("/predict", json={"p": 0.83}).headers["x-request-id"]
        low = client.post("/predict", json={"p": 0.2}).headers["x-request-id"]
        refused = label(client, high, "churned")
        accepted = [label(client, high, True), label(client, low, 0)]
        quality = client.get("/-/health").json()["quality"]
    assert refused["invalid"] == 1  # which class is 0.83 the probability of? unknown
    assert [a["accepted"] for a in accepted] == [1, 1]  # the refused label used nothing up
    assert quality["accuracy"] == 1.0 and quality["mae"] is None


def test_confidences_next_to_the_predictions_and_a_callable_confidence_path_are_read() -> None:
    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": ["churned"], "confidence": [0.9], "extra": {"p": [0.65]}}

    sibling, sibling_registry = model(answer)
    called, called_registry = model(answer, confidence_path=lambda doc: doc["extra"]["p"])
    for app in (sibling, called):
        with served(app) as client:
            client.post("/predict", json={})
            client.get("/metrics")
    for registry, expected in ((sibling_registry, 0.9), (called_registry, 0.65)):
        assert registry.get_sample_value("mlwarden_prediction_confidence_count", MV) == 1
        assert registry.get_sample_value("mlwarden_prediction_confidence_sum", MV) == expected
