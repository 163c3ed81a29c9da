"""The sidecar does not forward the model's operational paths from its public port (issue 16).

A real sidecar (``Sidecar`` served by uvicorn) in front of a real model server with the
middleware: a client that tries to label other clients' predictions, read the model's metrics
or its health report through the sidecar gets a 404 from the sidecar itself, the model never
sees the request, and the refusal is counted by path. Listed in
``routing.forward_operational_paths``, a path is forwarded, and the model still wants its
token. The sidecar's own health checks go to the model directly and keep working.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import ConfigError, InferenceMonitor
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config.network import operational_path
from mlwarden.sidecar.operational_paths import OperationalPaths
from mlwarden.sidecar.settings import sidecar_config_from_mapping
from tests.servers import serve_app

TOKEN = "labelling-job-token-0123"


def model(seen: list[str]) -> Any:
    """A fraud model with the middleware (a feedback token set), wrapped so that the test
    sees every path the proxy forwards to it."""

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": ["ok"]})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    app.add_middleware(
        InferenceMonitor,
        model_name="fraud",
        model_version="1",
        registry=CollectorRegistry(),
        feedback_token=TOKEN,
    )

    async def server(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(n == b"x-forwarded-for" for n, _ in scope["headers"]):
            seen.append(scope["path"])  # forwarded by the proxy (health checks are not)
        await app(scope, receive, send)

    return server


@dataclass
class Fronted:
    proxy: Sidecar
    registry: CollectorRegistry
    client: httpx.Client
    port: int
    seen: list[str]  # paths forwarded to the model

    def send(self, method: str, target: str, body: bytes = b"", **headers: str) -> Answer:
        """One request with ``target`` sent as written (no client-side normalisation)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, target, body, {"content-type": "application/json", **headers})
            response = conn.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@contextlib.contextmanager
def fronted(**routing: Any) -> Iterator[Fronted]:
    seen: list[str] = []
    registry = CollectorRegistry()
    with serve_app(model(seen)) as served_model:
        cfg = sidecar_config_from_mapping(
            {
                "upstreams": {"primary": served_model.url},
                "health_checks": {"interval_s": 0.2, "timeout_s": 0.15},
                "routing": routing,
            },
            environ={},
        )
        proxy = Sidecar(cfg, registry=registry)
        with (
            serve_app(proxy.proxy, proxy_headers=False) as served,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
        ):
            yield Fronted(proxy, registry, client, served.port, seen)


def wait_for(what: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not what():
        time.sleep(0.05)
    return what()


def test_a_client_cannot_label_other_clients_predictions_through_the_sidecar() -> None:
    with fronted() as f:
        victims = [f.client.post("/predict", json={}).headers["x-request-id"] for _ in range(5)]
        mine = f.client.post("/predict", json={}).headers["x-request-id"]
        # Even knowing the victims' ids (and trying its own and a guess), with or without a
        # token, no label gets through the public port, in any spelling of the path.
        entries = [{"request_id": rid, "label": "fraud"} for rid in [*victims, mine, mine + "0"]]
        body = json.dumps(entries).encode()
        paths = ("/-/feedback", "//-/feedback", "/-/./feedback", "/x/../-/feedback",
                 "/%2D/feedback", "/-/FEEDBACK", "/-/feedback/")  # fmt: skip
        tries = [
            f.send("POST", path, body, **headers)
            for path in paths
            for headers in ({}, {"authorization": f"Bearer {TOKEN}"})
        ]
        reads = [f.send("GET", path) for path in ("/metrics", "/-/health", "/-/anything")]
        # The sidecar's own health checks reach the model directly: its report is read.
        report = wait_for(lambda: f.proxy.health_report("primary"))
        signals = f.proxy.signals.read("primary", 60.0)
        healthy = f.proxy.health is not None and f.proxy.health.is_healthy("primary")
    for answer in [*tries, *reads]:
        assert answer.status == 404, answer
        assert json.loads(answer.body)["error"] == "not found"
        assert "x-mlwarden-upstream" not in answer.headers  # answered by the sidecar itself
    assert f.seen == ["/predict"] * 6
    assert report is not None and report.quality is not None
    assert report.quality.labelled_samples == 0 and report.quality.accuracy is None
    assert signals.get("accuracy") is None and healthy
    refused = {
        path: f.registry.get_sample_value("mlwarden_proxy_paths_refused_total", {"path": path})
        for path in ("/-/feedback", "/metrics", "/-/health", "other")
    }
    assert refused == {"/-/feedback": 2 * len(paths), "/metrics": 1, "/-/health": 1, "other": 1}


def test_a_listed_operational_path_is_forwarded_and_the_model_still_wants_its_token() -> None:
    with fronted(forward_operational_paths=["/-/feedback"]) as f:
        rid = f.client.post("/predict", json={}).headers["x-request-id"]
        label = {"request_id": rid, "label": "fraud"}
        anonymous = f.client.post("/-/feedback", json=label)
        labelled = f.client.post(
            "/-/feedback", json=label, headers={"authorization": f"Bearer {TOKEN}"}
        )
        metrics = f.client.get("/metrics")
    assert anonymous.status_code == 401 and anonymous.headers["x-mlwarden-upstream"] == "primary"
    assert labelled.json()["accepted"] == 1
    assert metrics.status_code == 404  # only the listed path is forwarded
    assert f.seen == ["/predict", "/-/feedback", "/-/feedback"]
    labels = {"path": "/metrics"}
    assert f.registry.get_sample_value("mlwarden_proxy_paths_refused_total", labels) == 1


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/-/feedback", "/-/feedback"),
        ("//-//feedback/", "/-/feedback"),
        ("/a/../-/./health", "/-/health"),
        ("/../metrics", "/metrics"),
        ("/Metrics/x", "/metrics/x"),
        ("/-", "/-"),
        ("/predict", None),
        ("/v1/models/churn:predict", None),
        ("/-feedback", None),
        ("/metrics2", None),
        ("/x/-/feedback", None),
        ("/x/metrics", None),
    ],
)
def test_what_counts_as_an_operational_path(path: str, normal: str | None) -> None:
    assert operational_path(path) == normal


def test_forward_operational_paths_takes_only_operational_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        sidecar_config_from_mapping(
            {
                "upstreams": {"a": "http://127.0.0.1:1"},
                "routing": {"forward_operational_paths": ["/-/feedback", "/predict"]},
            },
            environ={},
        )
    (problem,) = caught.value.problems
    assert problem.startswith("routing.forward_operational_paths: '/predict' is not an")
    cfg = sidecar_config_from_mapping(
        {
            "upstreams": {"a": "http://127.0.0.1:1"},
            "routing": {"forward_operational_paths": ["//-/Feedback/", "/-/feedback"]},
        },
        environ={},
    )
    assert cfg.routing.forward_operational_paths == ("/-/feedback",)
    assert OperationalPaths.from_config(cfg.routing).refused("/-/feedback") is None
