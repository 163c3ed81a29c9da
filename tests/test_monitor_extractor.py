"""A user-supplied feature extractor, and what happens when it fails."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.middleware import InferenceMonitor
from tests.apps import starlette_app
from tests.servers import serve_app
from tests.support import make_baseline

pytestmark = pytest.mark.floor

MV = {"model": "m", "version": "1"}


def app_with(extractor, registry):
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="1",
        registry=registry,
        baseline=make_baseline(),
        feature_extractor=extractor,
    )
    return app


def test_extractor_rows_are_scored():
    registry = CollectorRegistry()

    def extract(payload):
        return [{"f0": r["a"], "f1": r["b"]} for r in payload["customers"]]

    with serve_app(app_with(extract, registry)) as served:
        r = httpx.post(
            f"{served.url}/predict", json={"customers": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}
        )
    assert r.status_code == 200
    assert registry.get_sample_value("mlwarden_rows_scored_total", MV) == 2


def test_a_failing_extractor_is_counted_and_the_request_unaffected():
    registry = CollectorRegistry()

    def broken(payload):
        raise KeyError("customers")

    with serve_app(app_with(broken, registry)) as served:
        r = httpx.post(f"{served.url}/predict", json={"f0": 1.0})
    assert r.status_code == 200 and r.json()["predictions"]
    assert (
        registry.get_sample_value(
            "mlwarden_payload_errors_total", {**MV, "reason": "extractor_error"}
        )
        == 1
    )
