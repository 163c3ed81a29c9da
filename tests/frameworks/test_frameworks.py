"""The middleware around MLServer's and KServe's real apps, each in its own venv.

Each framework serves two scikit-learn models (``narrow``: 3 features, ``wide``: 5) from one
process, bare on one port and wrapped in ``InferenceMonitor`` on another (see ``serve.py``).
The answers through the wrapper must be the bare app's and the models' own; the framework's
metrics must stay the framework's; the middleware's health report and series must appear.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.frameworks.serve import probe
from tests.frameworks.venvs import FrameworkServer

pytestmark = pytest.mark.frameworks

MODELS = ("narrow", "wide")


def _oip(rows: list[list[float]]) -> dict:
    flat = [v for row in rows for v in row]
    shape = [len(rows), len(rows[0])]
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": "FP64", "data": flat}]}


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url, json=body, timeout=30)


def _v2_labels(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return [int(v) for v in output["data"]]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    return sum(
        value
        for (n, lab), value in samples.items()
        if n == name and set(labels.items()) <= set(lab)
    )


def _middleware_metrics(server: FrameworkServer) -> dict:
    """The middleware's series: on MLServer's REST port the middleware serves /metrics (the
    REST app has none); on KServe the app's own /metrics renders the default registry, where
    the middleware registers too."""
    response = httpx.get(server.wrapped + "/metrics", timeout=10)
    assert response.status_code == 200
    return _samples(response.text)


@pytest.mark.parametrize("model", MODELS)
def test_v2_answers_through_the_middleware_are_the_bare_apps_and_the_models_own(
    framework: FrameworkServer, model: str
) -> None:
    path = f"/v2/models/{model}/infer"
    body = _oip(probe(model))
    bare = _v2_labels(_post(framework.bare + path, body))
    wrapped = _v2_labels(_post(framework.wrapped + path, body))
    assert wrapped == bare == framework.expected[model]


@pytest.mark.parametrize("model", MODELS)
def test_kserve_v1_answers_through_the_middleware_are_the_bare_apps(
    kserve: FrameworkServer, model: str
) -> None:
    path = f"/v1/models/{model}:predict"
    body = {"instances": probe(model)}
    bare = _post(kserve.bare + path, body)
    wrapped = _post(kserve.wrapped + path, body)
    assert bare.status_code == wrapped.status_code == 200
    assert wrapped.json() == bare.json() == {"predictions": kserve.expected[model]}


def test_kserve_metrics_stay_kserves(kserve: FrameworkServer) -> None:
    _v2_labels(_post(kserve.wrapped + "/v2/models/narrow/infer", _oip(probe("narrow"))))
    bare = httpx.get(kserve.bare + "/metrics", timeout=10)
    wrapped = httpx.get(kserve.wrapped + "/metrics", timeout=10)
    assert wrapped.status_code == bare.status_code == 200
    # KServe's handler answered (the middleware's own endpoint sends cache-control: no-store).
    assert "cache-control" not in wrapped.headers
    assert wrapped.headers["content-type"] == bare.headers["content-type"]
    assert _count(_samples(wrapped.text), "request_predict_seconds_count", model_name="narrow") > 0
    assert "does not serve its own there (metrics_path)" in kserve.log()


def test_mlserver_metrics_server_stays_mlservers(mlserver: FrameworkServer) -> None:
    assert mlserver.metrics is not None
    _v2_labels(_post(mlserver.wrapped + "/v2/models/narrow/infer", _oip(probe("narrow"))))
    samples = _samples(httpx.get(mlserver.metrics + "/metrics", timeout=10).text)
    assert _count(samples, "model_infer_request_success_total", model="narrow") > 0
    assert _count(samples, "rest_server_requests_total", app_name="mlserver") > 0
    # The REST app has no /metrics of its own: bare it is a 404, wrapped it is the middleware's.
    assert httpx.get(mlserver.bare + "/metrics", timeout=10).status_code == 404
    wrapped = httpx.get(mlserver.wrapped + "/metrics", timeout=10)
    assert wrapped.headers.get("cache-control") == "no-store"


def test_the_middleware_reports_the_watched_models_requests(framework: FrameworkServer) -> None:
    health = framework.wrapped + "/-/health/narrow"
    before = httpx.get(health, timeout=10).json()["window"]["requests"]
    for _ in range(3):
        _v2_labels(_post(framework.wrapped + "/v2/models/narrow/infer", _oip(probe("narrow"))))
    report = httpx.get(health, timeout=10).json()
    assert report["status"] == "ok"
    assert report["model"] == {"name": "narrow", "version": "1"}
    assert report["window"]["requests"] >= before + 3
    assert report["window"]["errors"] == 0
    samples = _middleware_metrics(framework)
    name, route = "mlwarden_request_duration_seconds_count", "/v2/models/{model_name}/infer"
    assert _count(samples, name, model="narrow", route=route) >= 3


def test_each_model_is_tracked_under_its_own_name(framework: FrameworkServer) -> None:
    for model in MODELS:
        for _ in range(2):
            _v2_labels(_post(framework.wrapped + f"/v2/models/{model}/infer", _oip(probe(model))))
        r = _post(framework.wrapped + f"/v1/models/{model}:predict", {"instances": probe(model)})
        assert r.status_code in (200, 404)  # MLServer has no v1 protocol: its 404
    samples = _middleware_metrics(framework)
    for model in MODELS:
        assert _count(samples, "mlwarden_request_duration_seconds_count", model=model) >= 2
        # Each model's rows against its own baseline: narrow has 3 features, wide 5.
        assert _count(samples, "mlwarden_rows_scored_total", model=model) >= 2 * len(probe(model))
    wide = httpx.get(framework.wrapped + "/-/health", params={"model": "wide"}, timeout=10)
    assert wide.status_code == 200
    assert wide.json()["model"] == {"name": "wide", "version": "1"}
    assert wide.json()["drift"]["drifted_features"] == []
    summary = httpx.get(framework.wrapped + "/-/health", timeout=10).json()
    assert set(summary["models"]) == set(MODELS)
    # Requests for a model neither framework serves are timed under "other", never tracked.
    assert _post(framework.wrapped + "/v2/models/nosuch/infer", _oip(probe("wide"))).status_code
    assert "nosuch" not in httpx.get(framework.wrapped + "/-/health", timeout=10).json()["models"]
