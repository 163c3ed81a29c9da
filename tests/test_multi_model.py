"""One monitor in front of a multi-model app: each model tracked under its own name.

A Starlette app serves models ``narrow`` (3 features around 0) and ``wide`` (5 features around
5) at the KServe v1 and Open Inference Protocol paths, and answers 404 for any other name, as
MLServer and KServe do. Served by uvicorn on loopback; the monitor finds each request's model
in its path and judges it against that model's baseline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.baseline import BaselineProfile, build_baseline
from mlwarden.middleware.errors import ConfigError
from tests.servers import serve_app

WIDTHS = {"narrow": 3, "wide": 5, "late": 2}
CENTRES = {"narrow": 0.0, "wide": 5.0, "late": -3.0}


def _baseline(model: str, n: int = 20_000, seed: int = 1) -> BaselineProfile:
    rng = np.random.default_rng(seed)
    columns = {f"f{i}": rng.normal(CENTRES[model], 1.0, n) for i in range(WIDTHS[model])}
    return build_baseline(columns, source=f"tests:{model}")


def _rows(model: str, n: int, *, seed: int = 2, shift: float = 0.0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    width = WIDTHS[model]
    data = rng.normal(CENTRES[model], 1.0, (n, width))
    data[:, width - 1] += shift
    return [{f"f{i}": float(v) for i, v in enumerate(row)} for row in data]


def _app(served: tuple[str, ...] = ("narrow", "wide")) -> Starlette:
    async def v1(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in served:
            return JSONResponse({"error": f"model {name} not found"}, status_code=404)
        rows = (await request.json())["instances"]
        return JSONResponse({"predictions": [int(sum(r.values()) > 0) for r in rows]})

    async def v2(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in served:
            return JSONResponse({"error": f"model {name} not found"}, status_code=404)
        (tensor,) = (await request.json())["inputs"]
        n = tensor["shape"][0]
        return JSONResponse(
            {"outputs": [{"name": "out", "shape": [n], "datatype": "INT64", "data": [1] * n}]}
        )

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(
        routes=[
            Route("/v1/models/{name}:predict", v1, methods=["POST"]),
            Route("/v2/models/{name}/infer", v2, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", v2, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )


def _wrapped(registry: CollectorRegistry, app: Starlette | None = None, **options: Any) -> Any:
    app = app or _app()
    app.add_middleware(
        InferenceMonitor, registry=registry, drift_interval_s=3600, window_rows=2_000, **options
    )
    return app


def _monitor(app: Any) -> InferenceMonitor:
    node = app.middleware_stack
    while not isinstance(node, InferenceMonitor):
        node = node.app
    return node


def _send(client: httpx.Client, model: str, rows: list[dict], batch: int = 25) -> None:
    for i in range(0, len(rows), batch):
        r = client.post(f"/v1/models/{model}:predict", json={"instances": rows[i : i + batch]})
        assert r.status_code == 200, r.text
    client.get("/v2/health/ready")  # recorded after the last byte: one more request settles it


def _count(registry: CollectorRegistry, **labels: str) -> float:
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == "mlwarden_request_duration_seconds_count" and labels.items() <= set(
                s.labels.items()
            ):
                total += s.value
    return total


@pytest.fixture
def baselines(tmp_path: Path) -> Path:
    for model in ("narrow", "wide"):
        _baseline(model).save(tmp_path / f"{model}.json")
    return tmp_path


def test_each_model_is_judged_against_its_own_baseline(baselines: Path) -> None:
    registry = CollectorRegistry()
    app = _wrapped(registry, baselines=str(baselines))
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        _send(client, "narrow", _rows("narrow", 1_000))
        _send(client, "wide", _rows("wide", 1_000, shift=1.5))
        monitor = _monitor(app)
        for name in ("narrow", "wide"):
            monitor.models.get(name).worker.evaluate_now()
        narrow = client.get("/-/health/narrow").json()
        wide = client.get("/-/health", params={"model": "wide"}).json()
        summary = client.get("/-/health").json()
        missing = client.get("/-/health/nosuch")
    assert narrow["model"] == {"name": "narrow", "version": "unknown"}
    assert narrow["drift"]["drifted_features"] == []
    assert narrow["status"] == "ok", narrow["reasons"]
    assert wide["model"]["name"] == "wide"
    assert wide["drift"]["drifted_features"] == ["f4"]
    assert summary["status"] == "degraded"
    assert set(summary["models"]) == {"narrow", "wide"}
    assert summary["models"]["wide"]["drifted_features"] == ["f4"]
    assert missing.status_code == 404
    for name, width in (("narrow", 3), ("wide", 5)):
        mv = {"model": name, "version": "unknown"}
        assert registry.get_sample_value("mlwarden_rows_scored_total", mv) == 1_000
        assert registry.get_sample_value("mlwarden_drift_window_rows", mv) == 1_000
        means = [
            registry.get_sample_value("mlwarden_feature_mean", {**mv, "feature": f"f{i}"})
            for i in range(6)
        ]
        assert [m is not None for m in means] == [i < width for i in range(6)]


def test_each_request_is_timed_once_under_its_model(baselines: Path) -> None:
    registry = CollectorRegistry()
    app = _wrapped(registry, baselines=str(baselines))
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        _send(client, "narrow", _rows("narrow", 40), batch=10)  # 4 requests
        _send(client, "wide", _rows("wide", 60), batch=10)  # 6 requests
        flat = [v for row in _rows("wide", 3) for v in row.values()]
        tensor = {"name": "input-0", "shape": [3, 5], "datatype": "FP64", "data": flat}
        for path in ("/v2/models/wide/infer", "/v2/models/wide/versions/7/infer"):
            assert client.post(path, json={"inputs": [tensor]}).status_code == 200
        client.get("/v2/health/ready")
        time.sleep(0.2)
    assert _count(registry, model="narrow", route="/v1/models/{name}:predict") == 4
    assert _count(registry, model="wide", route="/v1/models/{name}:predict") == 6
    assert _count(registry, model="wide", route="/v2/models/{name}/infer") == 1
    # The version in the path is the version of the tracker made for that model's first
    # answer; later versions count under the same tracker (one set of series per model).
    assert _count(registry, model="wide") == 8
    # Everything else (health, readiness) is timed under "other", once.
    assert _count(registry, model="other", route="/v2/health/ready") == 3
    total = _count(registry)
    assert total == 4 + 8 + 3


def test_models_beyond_max_models_and_unknown_names_make_no_new_series(baselines: Path) -> None:
    registry = CollectorRegistry()
    app = _wrapped(
        registry, _app(("narrow", "wide", "late")), baselines=str(baselines), max_models=2
    )
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        _send(client, "narrow", _rows("narrow", 10), batch=10)
        _send(client, "wide", _rows("wide", 10), batch=10)
        _send(client, "late", _rows("late", 10), batch=10)  # a third model: beyond the bound
        for i in range(200):  # names of no model: 404s, never tracked
            r = client.post(f"/v1/models/made-up-{i}:predict", json={"instances": [{"f0": 1}]})
            assert r.status_code == 404
        r = client.post("/v1/models/%3Cscript%3E:predict", json={"instances": [{"f0": 1}]})
        client.get("/v2/health/ready")
        time.sleep(0.2)
        summary = client.get("/-/health").json()
    models = {
        s.labels["model"]
        for family in registry.collect()
        for s in family.samples
        if "model" in s.labels
    }
    assert models == {"narrow", "wide", "other"}
    assert summary["tracked"] == 2 and summary["max_models"] == 2
    assert _count(registry, model="other", route="/v1/models/{name}:predict") == 1 + 200 + 1


def test_a_model_loaded_at_run_time_is_tracked_then_judged_once_its_baseline_appears(
    baselines: Path,
) -> None:
    registry = CollectorRegistry()
    app = _wrapped(
        registry,
        _app(("narrow", "wide", "late")),
        baselines=str(baselines),
        baseline_recheck_s=0.2,
    )
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        _send(client, "late", _rows("late", 100))
        monitor = _monitor(app)
        late = monitor.models.get("late")
        assert late is not None and late.worker is None  # tracked, without drift
        before = client.get("/-/health/late").json()
        _baseline("late").save(baselines / "late.json")
        time.sleep(0.3)
        _send(client, "late", _rows("late", 600, seed=5, shift=2.0))
        assert late.worker is not None
        late.worker.evaluate_now()
        after = client.get("/-/health/late").json()
    assert before["window"]["requests"] == 4 and before["drift"]["evaluated"] is False
    assert after["drift"]["drifted_features"] == ["f1"]


def test_baselines_as_a_mapping_or_a_loader(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "wide.json"
    _baseline("wide").save(path)
    app = _wrapped(registry, baselines={"narrow": _baseline("narrow"), "wide": str(path)})
    monitor = _monitor_started(app)
    assert {t.name for t in monitor.models} == {"narrow", "wide"}  # known from start-up
    asked: list[str] = []

    def load(name: str) -> BaselineProfile | None:
        asked.append(name)
        return _baseline("narrow") if name == "narrow" else None

    registry = CollectorRegistry()
    app = _wrapped(registry, baselines=load)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        _send(client, "narrow", _rows("narrow", 10), batch=10)
        _send(client, "wide", _rows("wide", 10), batch=10)
        monitor = _monitor(app)
    assert monitor.models.get("narrow").worker is not None
    assert monitor.models.get("wide").worker is None
    assert asked[:2] == ["narrow", "wide"]


def _monitor_started(app: Any) -> InferenceMonitor:
    with serve_app(app) as served:
        httpx.get(served.url + "/v2/health/ready")
        return _monitor(app)


def test_labels_reach_the_model_that_answered(baselines: Path) -> None:
    registry = CollectorRegistry()
    app = _wrapped(registry, baselines=str(baselines), feedback_anonymous=True)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        for model, rid in (("narrow", "n-1"), ("wide", "w-1")):
            r = client.post(
                f"/v1/models/{model}:predict",
                json={"instances": _rows(model, 1)},
                headers={"x-request-id": rid},
            )
            assert r.status_code == 200
        client.get("/v2/health/ready")
        answer = client.post(
            "/-/feedback",
            json=[
                {"request_id": "n-1", "label": 1},
                {"request_id": "w-1", "label": 0},
                {"request_id": "nobody", "label": 0},
            ],
        ).json()
        narrow = client.get("/-/health/narrow").json()["quality"]
        wide = client.get("/-/health/wide").json()["quality"]
    assert (answer["accepted"], answer["unknown"]) == (2, 1)
    assert narrow["labelled_samples"] == 1 and wide["labelled_samples"] == 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"baselines": "/nonexistent-dir"}, "baselines: '/nonexistent-dir' is not a directory"),
        (
            {"model_paths": ["/models/predict"]},
            "model_paths: '/models/predict': expected one {name}",
        ),
        ({"model_paths": ["/m/{name}/{nope}"]}, "(unknown: nope)"),
        ({"model_paths": ["/m/{name}"], "model_name": "x"}, "model_name: not with model_paths"),
        ({"model_paths": ["/m/{name}"], "max_models": 0}, "max_models: expected a whole number"),
        ({"baselines": {"m": 3}}, "baselines['m']: expected a path"),
    ],
)
def test_bad_multi_model_options_are_named(options: dict[str, Any], expected: str) -> None:
    from mlwarden.middleware.options import MonitorOptions

    with pytest.raises(ConfigError) as info:
        MonitorOptions.from_kwargs(options)
    assert expected in str(info.value)


def test_the_model_paths_read_name_and_version() -> None:
    from mlwarden.middleware.models import BUILTIN_MODEL_PATHS, ModelPaths

    paths = ModelPaths(BUILTIN_MODEL_PATHS)
    assert paths.match("/v2/models/churn/infer") == ("churn", None)
    assert paths.match("/v2/models/churn/versions/3/infer") == ("churn", "3")
    assert paths.match("/v1/models/churn:predict") == ("churn", None)
    assert paths.match("/v2/models/churn/ready") is None
    assert paths.match("/v1/models/a b:predict") == ("other", None)
    assert paths.match("/v1/models/" + "x" * 101 + ":predict") == ("other", None)
    custom = ModelPaths(("/models/{name}/v{version}/predict",))
    assert custom.match("/models/fraud/v2/predict") == ("fraud", "2")
    assert json.dumps(paths.templates)


def test_a_sidecar_health_check_can_target_one_model(baselines: Path) -> None:
    import asyncio

    from mlwarden.sidecar.routing.health_checks import HealthChecker

    app = _app()

    async def broken(request: Request) -> JSONResponse:
        return JSONResponse({"error": "model crashed"}, status_code=500)

    app.router.routes.insert(0, Route("/v1/models/wide:predict", broken, methods=["POST"]))
    registry = CollectorRegistry()
    app = _wrapped(registry, app, baselines=str(baselines))
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        _send(client, "narrow", _rows("narrow", 200), batch=5)
        for _ in range(40):
            r = client.post("/v1/models/wide:predict", json={"instances": _rows("wide", 1)})
            assert r.status_code == 500
        client.get("/v2/health/ready")
        summary = client.get("/-/health")

        async def verdicts() -> dict[str, bool]:
            out = {}
            for model in ("narrow", "wide"):
                checker = HealthChecker(
                    {model: served.url},
                    health_path=f"/-/health/{model}",
                    interval_s=5,
                    timeout_s=2,
                    unhealthy_threshold=1,
                )
                async with checker:
                    await checker.check_once()
                    out[model] = checker.is_healthy(model)
            return out

        healthy = asyncio.run(verdicts())
    assert healthy == {"narrow": True, "wide": False}
    # One model failing of two: the server as a whole is degraded, still serving (200).
    assert summary.status_code == 200 and summary.json()["status"] == "degraded"
    assert summary.json()["models"]["wide"]["status"] == "failing"
