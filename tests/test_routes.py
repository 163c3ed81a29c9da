"""The app's routing as the middleware reads it: its own paths are never shadowed, and
requests are labelled with their route templates, however the routes are organised.

Each organisation is served twice by uvicorn: bare, to see what the app itself answers (the
oracle: FastAPI and Starlette lay routes out differently across versions), and with the
middleware, which must leave the app's own answer byte for byte as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, Counter, generate_latest, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import BaseRoute, Host, Match, Mount, Route, Router

from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.routes import RouteLabels
from tests.servers import serve_app

pytestmark = pytest.mark.floor

THEIRS = "# the app's own metrics\nkserve_requests_total 7.0\n"

# The app's own registry, shared by every app built here so that its exposition is the same
# bytes whichever app serves it.
APP_REGISTRY = CollectorRegistry()
Counter("kserve_requests", "the app's own counter", registry=APP_REGISTRY).inc(7)


async def theirs(request: Request) -> PlainTextResponse:
    return PlainTextResponse(THEIRS)


def api_theirs() -> PlainTextResponse:
    return PlainTextResponse(THEIRS)


def router_with_metrics(**kwargs: Any) -> APIRouter:
    router = APIRouter(**kwargs)
    router.add_api_route("/metrics", api_theirs, methods=["GET"])
    return router


def included() -> FastAPI:
    app = FastAPI()
    app.include_router(router_with_metrics())
    return app


def router_prefix() -> FastAPI:
    app = FastAPI()
    app.include_router(router_with_metrics(prefix="/ops"))
    return app


def include_prefix() -> FastAPI:
    app = FastAPI()
    app.include_router(router_with_metrics(), prefix="/ops")
    return app


def nested_includes() -> FastAPI:
    outer = APIRouter(prefix="/a")
    outer.include_router(router_with_metrics(prefix="/b"))
    app = FastAPI()
    app.include_router(outer, prefix="/c")
    return app


def included_starlette_route() -> FastAPI:
    router = APIRouter()
    router.add_route("/metrics", theirs)
    app = FastAPI()
    app.include_router(router)
    return app


def included_in_mounted_app() -> Starlette:
    return Starlette(routes=[Mount("/sub", app=included())])


def add_route() -> FastAPI:
    app = FastAPI()
    app.add_route("/metrics", theirs)
    return app


def add_api_route() -> FastAPI:
    app = FastAPI()
    app.add_api_route("/metrics", api_theirs)
    return app


def post_only() -> FastAPI:
    app = FastAPI()
    app.add_api_route("/metrics", api_theirs, methods=["POST"])
    return app


def prometheus_mounted_at_metrics() -> FastAPI:
    app = FastAPI()
    app.mount("/metrics", make_asgi_app(registry=APP_REGISTRY))
    return app


def prometheus_mounted_at_root() -> FastAPI:
    app = FastAPI()
    app.mount("/", make_asgi_app(registry=APP_REGISTRY))
    return app


def mount_through_router() -> FastAPI:
    # FastAPI 0.110 drops a router's mounts on include_router; later versions keep them.
    router = APIRouter()
    router.mount("/metrics", make_asgi_app(registry=APP_REGISTRY))
    app = FastAPI()
    app.include_router(router)
    return app


def mounted_fastapi() -> FastAPI:
    app = FastAPI()
    app.mount("/sub", add_api_route())
    return app


def starlette_mount_with_routes() -> Starlette:
    return Starlette(routes=[Mount("/ops", routes=[Route("/metrics", theirs)])])


def host() -> Starlette:
    return Starlette(routes=[Host("metrics.example", app=Router([Route("/metrics", theirs)]))])


class Everything(BaseRoute):
    """A route kind of the app's own, without a path: it answers every request (a catch-all
    proxy, say). Nothing says what it would do with /metrics, so it is left alone."""

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        return (Match.FULL, {}) if scope["type"] == "http" else (Match.NONE, {})

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse(THEIRS)(scope, receive, send)


def own_route_kind() -> Starlette:
    return Starlette(routes=[Everything()])


def pattern() -> FastAPI:
    def by_name(name: str) -> PlainTextResponse:
        return PlainTextResponse(f"page {name}")

    app = FastAPI()
    app.add_api_route("/{name}", by_name)
    return app


def elsewhere() -> FastAPI:
    app = FastAPI()
    app.mount("/other", make_asgi_app(registry=APP_REGISTRY))
    app.include_router(router_with_metrics(prefix="/v2"))
    return app


async def bare_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await PlainTextResponse(THEIRS)(scope, receive, send)


def bare() -> Any:
    return bare_asgi


@dataclass(frozen=True)
class Case:
    factory: Callable[[], Any]
    path: str
    kind: str | None  # the claim expected, None: nothing in the app answers the path
    headers: dict[str, str] = field(default_factory=dict)
    version_dependent: bool = False  # whether the app answers depends on the FastAPI version


CASES = {
    "included router": Case(included, "/metrics", "route"),
    "router with a prefix": Case(router_prefix, "/ops/metrics", "route"),
    "include_router with a prefix": Case(include_prefix, "/ops/metrics", "route"),
    "nested include_router": Case(nested_includes, "/c/a/b/metrics", "route"),
    "starlette route in an included router": Case(included_starlette_route, "/metrics", "route"),
    "included router in a mounted app": Case(included_in_mounted_app, "/sub/metrics", "route"),
    "app.add_route": Case(add_route, "/metrics", "route"),
    "app.add_api_route": Case(add_api_route, "/metrics", "route"),
    "a POST-only route": Case(post_only, "/metrics", "route"),
    "prometheus app mounted at /metrics": Case(prometheus_mounted_at_metrics, "/metrics", "mount"),
    "prometheus app mounted at /": Case(prometheus_mounted_at_root, "/metrics", "mount"),
    "a router's mount": Case(mount_through_router, "/metrics", "mount", version_dependent=True),
    "mounted FastAPI app": Case(mounted_fastapi, "/sub/metrics", "route"),
    "starlette Mount with routes": Case(starlette_mount_with_routes, "/ops/metrics", "route"),
    "Host": Case(host, "/metrics", "route", {"host": "metrics.example"}),
    "a route kind of the app's own": Case(own_route_kind, "/metrics", "unknown"),
    "a pattern": Case(pattern, "/metrics", "pattern"),
    "nothing at the path": Case(elsewhere, "/metrics", None),
    "an app without a routing table": Case(bare, "/metrics", "unreadable"),
}


def monitored(app: Any, registry: CollectorRegistry, path: str) -> Any:
    options = {"model_name": "m", "registry": registry, "metrics_path": path, "tracing": False}
    if hasattr(app, "add_middleware"):
        app.add_middleware(InferenceMonitor, **options)
        return app
    return InferenceMonitor(app, **options)


def fetch(app: Any, case: Case) -> httpx.Response:
    with (
        serve_app(app) as served,
        httpx.Client(base_url=served.url, headers=case.headers, follow_redirects=True) as client,
    ):
        response = client.get(case.path)
        response.read()
        return response


@pytest.mark.parametrize("name", list(CASES))
def test_the_apps_own_metrics_is_found_and_never_replaced(name: str, caplog) -> None:
    case = CASES[name]
    own = fetch(case.factory(), case)
    claim = RouteLabels(case.factory()).claim(case.path)
    # What the middleware reads agrees with what the app answers.
    if case.version_dependent and own.status_code == 404:
        assert claim is None
    else:
        assert (own.status_code != 404) == (case.kind is not None)
        assert (claim.kind if claim is not None else None) == case.kind

    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, "mlwarden.middleware"):
        answer = fetch(monitored(case.factory(), registry, case.path), case)
    warnings = [r.getMessage() for r in caplog.records if "metrics_path" in r.getMessage()]
    if claim is None:
        assert warnings == []
        assert "mlwarden_request_duration_seconds" in answer.text
    elif claim.owns:
        assert (answer.status_code, answer.content) == (own.status_code, own.content)
        assert "mlwarden_" not in answer.text
        assert len(warnings) == 1 and case.path in warnings[0]
        assert "does not serve its own" in warnings[0]
    else:  # a pattern, or nothing readable: answered in front of, and said so
        assert "mlwarden_request_duration_seconds" in answer.text
        assert len(warnings) == 1 and "in front of" in warnings[0]


def test_kserve_style_metrics_from_an_included_router_come_back_unchanged(caplog) -> None:
    """KServe's ModelServer serves its /metrics from an included router; on FastAPI 0.165 that
    router is one route object without a path."""

    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(APP_REGISTRY).decode())

    def infer(name: str) -> JSONResponse:
        return JSONResponse({"model_name": name, "outputs": []})

    def build() -> FastAPI:
        router = APIRouter()
        router.add_api_route("/metrics", metrics, methods=["GET"])
        router.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"])
        app = FastAPI()
        app.include_router(router)
        return app

    with serve_app(build()) as served, httpx.Client(base_url=served.url) as client:
        own = client.get("/metrics")
    registry = CollectorRegistry()
    app = build()
    app.add_middleware(InferenceMonitor, model_name="m", registry=registry, tracing=False)
    with (
        caplog.at_level(logging.WARNING, "mlwarden.middleware"),
        serve_app(app) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert client.post("/v2/models/a/infer", json={"inputs": []}).status_code == 200
        answer = client.get("/metrics")
        health = client.get("/-/health")
    assert answer.status_code == 200
    assert answer.content == own.content == generate_latest(APP_REGISTRY)
    assert "mlwarden_" not in answer.text
    assert health.status_code == 200 and health.json()["status"] in ("ok", "degraded", "failing")
    assert any(
        "/metrics" in r.getMessage() and "metrics_path" in r.getMessage() for r in caplog.records
    )
    labels = {"model": "m", "version": "unknown", "method": "POST", "status_class": "2xx"}
    sample = "mlwarden_request_duration_seconds_count"
    route = {**labels, "route": "/v2/models/{name}/infer"}
    assert registry.get_sample_value(sample, route) == 1


def test_an_apps_own_health_and_feedback_paths_are_left_alone_too() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/-")
    router.add_api_route("/health", lambda: PlainTextResponse("their health"))
    router.add_api_route("/feedback", lambda: PlainTextResponse("their feedback"), methods=["POST"])
    app.include_router(router)
    app.add_middleware(InferenceMonitor, model_name="m", registry=CollectorRegistry())
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        assert client.get("/-/health").text == "their health"
        assert client.post("/-/feedback", json={"id": "x", "label": 1}).text == "their feedback"


class Unreadable(BaseRoute):
    """A route kind whose matching needs what a server adds to the scope (here ``app``)."""

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        return (Match.FULL, {}) if scope["app"].state else (Match.NONE, {})

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse(THEIRS)(scope, receive, send)


def test_a_route_that_cannot_be_asked_is_taken_to_answer_the_path() -> None:
    claim = RouteLabels(Starlette(routes=[Unreadable()])).claim("/metrics")
    assert claim is not None and claim.kind == "unknown" and claim.owns
    assert "Unreadable" in claim.describe()


def test_an_included_router_whose_internals_moved_is_taken_to_answer_what_it_matches() -> None:
    class Included(Everything):
        def effective_route_contexts(self) -> Any:
            raise AttributeError("original_router")  # a FastAPI whose internals changed

    claim = RouteLabels(Starlette(routes=[Included()])).claim("/metrics")
    assert claim is not None and claim.kind == "unknown"
    assert RouteLabels(Starlette(routes=[Route("/x", theirs)])).claim("/metrics") is None


# -- route templates as labels -----------------------------------------------------------


def labelled_app() -> Starlette:
    def infer(name: str) -> JSONResponse:
        return JSONResponse({"model_name": name})

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ready")

    def item(item_id: int) -> JSONResponse:
        return JSONResponse({"item": item_id})

    kserve = APIRouter()  # KServe's layout: full paths in a router included as it is
    kserve.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"])
    prefixed = APIRouter(prefix="/v2")
    prefixed.add_api_route("/models/{name}/infer", infer, methods=["POST"])
    prefixed.add_route("/v2/models/{name}/ready", ready)  # Starlette's add_route: no prefix
    inner = APIRouter(prefix="/b")
    inner.add_api_route("/items/{item_id}", item)
    outer = APIRouter(prefix="/a")
    outer.include_router(inner)
    twice = APIRouter()
    twice.add_api_route("/items/{item_id}", item)

    sub = FastAPI()
    sub.include_router(prefixed, prefix="/api")
    app = FastAPI()
    app.include_router(kserve)
    app.include_router(prefixed, prefix="/api")
    app.include_router(outer, prefix="/c")
    app.include_router(twice, prefix="/one")
    app.include_router(twice, prefix="/two")
    app.mount("/sub", sub)
    app.router.routes.append(
        Host("models.example", app=Router([Route("/hosted/{name}/ready", ready)]))
    )
    return app


LABELS = [
    ("POST", "/v2/models/a/infer", {}, "/v2/models/{name}/infer"),
    ("POST", "/api/v2/models/a/infer", {}, "/api/v2/models/{name}/infer"),
    ("GET", "/api/v2/models/a/ready", {}, "/api/v2/models/{name}/ready"),
    ("GET", "/c/a/b/items/1", {}, "/c/a/b/items/{item_id}"),
    ("GET", "/one/items/1", {}, "/one/items/{item_id}"),
    ("GET", "/two/items/1", {}, "/two/items/{item_id}"),
    ("POST", "/sub/api/v2/models/a/infer", {}, "/sub/api/v2/models/{name}/infer"),
    ("GET", "/hosted/a/ready", {"host": "models.example"}, "/hosted/{name}/ready"),
]


def test_requests_are_labelled_with_their_full_route_template_however_routes_are_included():
    registry = CollectorRegistry()
    app = labelled_app()
    app.add_middleware(InferenceMonitor, model_name="m", registry=registry, tracing=False)
    with serve_app(app) as served, httpx.Client(base_url=served.url) as client:
        for method, path, headers, _ in LABELS:
            assert client.request(method, path, headers=headers).status_code == 200, path
    for method, _, _, template in LABELS:
        labels = {"model": "m", "version": "unknown", "route": template}
        labels |= {"method": method, "status_class": "2xx"}
        count = registry.get_sample_value("mlwarden_request_duration_seconds_count", labels)
        assert count == 1, template
