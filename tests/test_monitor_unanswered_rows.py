"""Rows of model requests not answered 2xx stay out of rows scored and the drift window.

A real FastAPI model server on uvicorn answers 200, rejects with 422 (its own validation, or
the handler's), redirects (307), is busy (503) or raises (no response started): only the 200
rows are scored and enter the window, the others are counted by status class, and every
response is what the app answers without the middleware.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from mlwarden.middleware import InferenceMonitor, find_monitor
from tests.servers import serve_app
from tests.support import MEANS, STDS, make_baseline, reference_rows

pytestmark = pytest.mark.floor

MV = {"model": "m", "version": "1"}
CLASSES = ("1xx", "3xx", "4xx", "5xx", "none")


class Batch(BaseModel):
    instances: list[dict[str, float]]


def model_server() -> FastAPI:
    """Scores every row, unless the query asks it to reject, redirect, be busy; or raises."""
    app = FastAPI()

    @app.post("/predict")
    async def predict(
        batch: Batch, reject: bool = False, moved: bool = False, busy: bool = False
    ) -> object:
        if reject:
            raise HTTPException(status_code=422, detail="rows out of range")
        if moved:
            return RedirectResponse("/v2/predict", status_code=307)
        if busy:
            return JSONResponse({"detail": "busy"}, status_code=503)
        return {"predictions": [{"label": "yes", "probability": 0.9} for _ in batch.instances]}

    @app.post("/boom/predict")
    async def boom(batch: Batch) -> object:
        raise RuntimeError("model exploded")

    return app


def monitored(registry: CollectorRegistry) -> FastAPI:
    app = model_server()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="1",
        registry=registry,
        baseline=make_baseline(),
        drift_interval_s=3600,
        tracing=False,
    )
    return app


def skipped(registry: CollectorRegistry) -> dict[str, float | None]:
    return {
        c: registry.get_sample_value(
            "mlwarden_feature_rows_skipped_total", {**MV, "status_class": c}
        )
        for c in ("2xx", *CLASSES)
    }


def payload_errors(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "mlwarden_payload_errors_total"
    )


def answer(client: httpx.Client, path: str, body: bytes) -> tuple[int, str, bytes]:
    headers = {"content-type": "application/json"}
    if path.startswith("/boom/"):  # the server closes the connection of an app that raised
        r = httpx.post(client.base_url.join(path), content=body, headers=headers)
    else:
        r = client.post(path, content=body, headers=headers)
    return r.status_code, r.headers.get("content-type", ""), r.content


def rows_json(rows: list[dict]) -> bytes:
    return httpx.Request("POST", "/", json={"instances": rows}).content


def test_only_rows_of_2xx_requests_are_scored_and_enter_the_window():
    registry = CollectorRegistry()
    rows = reference_rows(40, seed=21)
    invalid = [{**row, "f0": "abc"} for row in rows[35:38]]  # FastAPI's own 422
    requests = [
        ("/predict", rows_json(rows[0:4])),  # 200
        ("/predict?reject=true", rows_json(rows[4:9])),  # 422
        ("/predict", rows_json(rows[9:13])),  # 200
        ("/predict?reject=true", rows_json(rows[13:18])),  # 422
        ("/predict?moved=true", rows_json(rows[18:20])),  # 307
        ("/predict?busy=true", rows_json(rows[20:26])),  # 503
        ("/boom/predict", rows_json(rows[26:33])),  # raises: no response started
        ("/predict", rows_json(rows[33:35])),  # 200
        ("/predict", rows_json(invalid)),  # 422
    ]
    app = monitored(registry)
    with serve_app(model_server()) as bare, httpx.Client(base_url=bare.url) as client:
        expected = [answer(client, path, body) for path, body in requests]
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        got = [answer(client, path, body) for path, body in requests]
        client.get("/metrics")  # once the last request is recorded; queued reads are read
        window = find_monitor(app).windows
        assert window is not None
        snapshot = window.snapshot()
    assert got == expected
    assert [status for status, _, _ in got] == [200, 422, 200, 422, 307, 503, 500, 200, 422]
    assert window.rows == snapshot.rows == 4 + 4 + 2
    for counts in snapshot.features:
        assert counts.rows == 10
    assert registry.get_sample_value("mlwarden_rows_scored_total", MV) == 10
    assert skipped(registry) == {
        "2xx": None,
        "1xx": 0,
        "3xx": 2,
        "4xx": 5 + 5 + 3,
        "5xx": 6,
        "none": 7,
    }
    assert payload_errors(registry) == 0


def test_a_payload_that_cannot_be_read_is_a_payload_error_whatever_the_answer():
    registry = CollectorRegistry()
    with (
        serve_app(monitored(registry)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert answer(client, "/predict", b'{"instances": [{"f0": 1,,')[0] == 422
        assert answer(client, "/predict?reject=true", rows_json([{"nothing": 1.0}]))[0] == 422
        client.get("/metrics")
    assert payload_errors(registry) == 2
    assert (
        registry.get_sample_value(
            "mlwarden_payload_errors_total", {**MV, "reason": "no_known_features"}
        )
        == 1
    )
    assert set(skipped(registry).values()) == {None, 0}
    assert registry.get_sample_value("mlwarden_rows_scored_total", MV) == 0


def test_skipped_series_exist_before_any_request_and_stay_fixed():
    registry = CollectorRegistry()
    with (
        serve_app(monitored(registry)) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        client.get("/metrics")
        assert skipped(registry) == {"2xx": None, **dict.fromkeys(CLASSES, 0)}


def test_a_burst_of_rejected_shifted_rows_leaves_the_window_as_the_served_traffic():
    registry = CollectorRegistry()
    app = monitored(registry)
    normal = reference_rows(500, seed=31)
    shifted = reference_rows(3_000, seed=32, shift={"f2": 3.0})
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        for i in range(0, len(normal), 50):
            assert answer(client, "/predict", rows_json(normal[i : i + 50]))[0] == 200
        for i in range(0, len(shifted), 50):
            status, _, _ = answer(client, "/predict?reject=true", rows_json(shifted[i : i + 50]))
            assert status == 422
        client.get("/metrics")
        snapshot = find_monitor(app).windows.snapshot()
    assert snapshot.rows == 500
    (f2,) = [counts for counts in snapshot.features if counts.name == "f2"]
    assert f2.rows == f2.finite == 500
    # The window's mean is the served rows' own, far from the rejected rows' (3 sd away).
    served_mean = sum(row["f2"] for row in normal) / len(normal)
    assert f2.mean == pytest.approx(served_mean, abs=1e-9)
    assert abs(f2.mean - MEANS["f2"]) < 0.5 * STDS["f2"]
    assert registry.get_sample_value("mlwarden_rows_scored_total", MV) == 500
    assert skipped(registry)["4xx"] == 3_000
