"""The admin app: real upstreams, the proxy and the admin app, each served on loopback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.sidecar.admin import create_admin_app
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from tests.servers import serve_app

TOKEN = "s3cret-admin-token-0123456789"


def version_app(name: str) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"version": name})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/-/health", health)]
    )


def make_config(primary: str, stable: str, *, token: str = "") -> SidecarConfig:
    data: dict[str, Any] = {
        "upstreams": {"primary": {"url": primary}, "stable": {"url": stable}},
        "timeouts": {"per_try_timeout_s": 1, "total_timeout_s": 3},
        "admin": {"token": token},
    }
    return SidecarConfig.from_mapping(data, environ={})


@dataclass
class Served:
    proxy: Sidecar
    registry: CollectorRegistry
    client: httpx.Client  # the proxy port
    admin: httpx.Client  # the admin port


@contextlib.contextmanager
def sidecar(*, token: str = "") -> Iterator[Served]:
    registry = CollectorRegistry()
    with serve_app(version_app("primary")) as p, serve_app(version_app("stable")) as s:
        proxy = Sidecar(make_config(p.url, s.url, token=token), registry=registry)
        admin_app = create_admin_app(proxy)
        with (
            serve_app(proxy.proxy, proxy_headers=False) as served,
            serve_app(admin_app) as admin,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
            httpx.Client(base_url=admin.url, trust_env=False, timeout=10) as admin_client,
        ):
            yield Served(proxy, registry, client, admin_client)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- reading


def test_healthy_answers_200() -> None:
    with sidecar() as sc:
        r = sc.admin.get("/-/healthy")
    assert r.status_code == 200
    assert r.text == "ok\n"


def test_ready_answers_200_while_an_upstream_is_available() -> None:
    with sidecar() as sc:
        r = sc.admin.get("/-/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "available": {"primary": True, "stable": True}}


def test_ready_answers_503_json_when_every_breaker_is_open() -> None:
    with sidecar() as sc:
        sc.proxy.breakers["primary"].force_open()
        assert sc.admin.get("/-/ready").status_code == 200  # stable still available
        sc.proxy.breakers["stable"].force_open()
        r = sc.admin.get("/-/ready")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.json()["available"] == {"primary": False, "stable": False}


def test_status_shows_upstreams_breakers_health_routing_and_retry_budget() -> None:
    with sidecar() as sc:
        sc.proxy.breakers["primary"].force_open()
        assert sc.client.post("/predict", json={}).status_code == 200
        r = sc.admin.get("/-/status")
        primary_url = sc.proxy.config.upstream("primary").url
    assert r.status_code == 200
    status = r.json()
    primary = status["upstreams"]["primary"]
    assert primary["url"] == primary_url
    assert primary["available"] is False
    assert primary["breaker"]["state"] == "open"
    [change] = primary["breaker"]["transitions"]
    assert (change["from"], change["to"], change["reason"]) == ("closed", "open", "manual_open")
    assert status["upstreams"]["stable"]["breaker"]["state"] == "closed"
    assert set(status["health"]["upstreams"]) == {"primary", "stable"}
    assert status["routing"] == {
        "primary": "primary",
        "fallbacks": ["stable"],
        "forced": None,
        "order": ["primary", "stable"],
        "candidates": ["stable"],
    }
    assert status["retry_budget"]["requests_total"] == 1
    assert primary["breaker"]["shared_storage_available"] is True
    assert status["in_flight"] == 0
    assert status["limits"]["max_concurrent_requests"] == 1024


def test_metrics_show_breaker_state_2_and_the_transition_after_force_open() -> None:
    with sidecar() as sc:
        sc.proxy.breakers["primary"].force_open()
        r = sc.admin.get("/metrics")
        registry = sc.registry
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'mlwarden_breaker_state{upstream="primary"} 2.0' in r.text
    assert 'mlwarden_breaker_state{upstream="stable"} 0.0' in r.text
    assert (
        registry.get_sample_value(
            "mlwarden_breaker_transitions_total", {"upstream": "primary", "to": "open"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "mlwarden_breaker_transitions_total", {"upstream": "stable", "to": "open"}
        )
        == 0
    )


def test_metrics_count_retry_budget_requests_and_health() -> None:
    with sidecar() as sc:
        for _ in range(3):
            assert sc.client.post("/predict", json={}).status_code == 200
        registry = sc.registry
        requests = registry.get_sample_value("mlwarden_retry_budget_requests_total")
        exhausted = registry.get_sample_value("mlwarden_retry_budget_exhausted_total")
        healthy = registry.get_sample_value("mlwarden_upstream_healthy", {"upstream": "primary"})
    assert (requests, exhausted, healthy) == (3, 0, 1)


def test_metrics_answer_openmetrics_when_asked() -> None:
    with sidecar() as sc:
        r = sc.admin.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert 'mlwarden_breaker_state{upstream="primary"} 0.0' in r.text


def test_health_transitions_are_counted_by_the_listener() -> None:
    registry = CollectorRegistry()
    cfg = make_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    proxy = Sidecar(cfg, health_checks=False, registry=registry)
    metrics = proxy.metrics
    assert metrics is not None
    metrics.health_changed("primary", False, "HTTP 503")
    metrics.health_changed("nobody", False, "not ours")  # unknown names make no series
    assert (
        registry.get_sample_value(
            "mlwarden_health_transitions_total", {"upstream": "primary", "to": "unhealthy"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "mlwarden_health_transitions_total", {"upstream": "nobody", "to": "unhealthy"}
        )
        is None
    )
    with pytest.raises(ValueError, match="already attached"):
        metrics.attach(Sidecar(cfg, health_checks=False))


@pytest.mark.parametrize("close_on_healthy", [True, False])
def test_health_checks_bringing_an_upstream_back_close_its_breaker(close_on_healthy) -> None:
    cfg = SidecarConfig.from_mapping(
        {
            "upstreams": {"primary": "http://127.0.0.1:1", "stable": "http://127.0.0.1:2"},
            "breaker": {"close_on_healthy": close_on_healthy},
        },
        environ={},
    )
    proxy = Sidecar(cfg, health_checks=False)
    breaker = proxy.breakers["stable"]
    breaker.force_open()
    proxy.health_changed("stable", False, "2 consecutive failed checks")
    assert breaker.state == "open"  # going out of rotation changes nothing
    proxy.health_changed("stable", True, "2 consecutive passed checks")
    if close_on_healthy:
        assert breaker.state == "closed"
        closed = proxy.ledger.query(action="breaker_closed", limit=5)
        assert [(r.target, r.reason) for r in closed] == [("stable", "health_check_passed")]
    else:
        assert breaker.state == "open"
        assert proxy.ledger.query(action="breaker_closed", limit=5) == []
    proxy.health_changed("primary", True, "passed")  # a closed breaker stays as it is
    assert proxy.breakers["primary"].state == "closed"


# --------------------------------------------------------------------------- mutations


def test_mutations_answer_403_without_a_configured_token(caplog) -> None:
    with sidecar() as sc, caplog.at_level(logging.WARNING, "mlwarden.sidecar.admin"):
        route = sc.admin.post("/-/route", json={"force": "stable"}, headers=bearer(TOKEN))
        reset = sc.admin.post("/-/breakers/primary/reset", headers=bearer(TOKEN))
        forced = sc.proxy.router.forced
    assert (route.status_code, reset.status_code) == (403, 403)
    assert "mutations disabled" in route.json()["error"]
    assert forced is None
    assert "mutations disabled" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-token-wrong-token-wrong"),
        {"authorization": f"Basic {TOKEN}"},
    ],
)
def test_mutations_answer_401_with_a_missing_or_wrong_token(headers: dict[str, str]) -> None:
    with sidecar(token=TOKEN) as sc:
        sc.proxy.breakers["primary"].force_open()
        route = sc.admin.post("/-/route", json={"force": "stable"}, headers=headers)
        reset = sc.admin.post("/-/breakers/primary/reset", headers=headers)
        state, forced = sc.proxy.breakers["primary"].state, sc.proxy.router.forced
    assert (route.status_code, reset.status_code) == (401, 401)
    assert route.headers["www-authenticate"] == "Bearer"
    assert (state, forced) == ("open", None)


def test_forced_route_sends_proxied_requests_to_the_forced_upstream(caplog) -> None:
    with sidecar(token=TOKEN) as sc, caplog.at_level(logging.WARNING, "mlwarden.sidecar.admin"):
        assert sc.client.post("/predict", json={}).headers["x-mlwarden-upstream"] == "primary"
        r = sc.admin.post("/-/route", json={"force": "stable"}, headers=bearer(TOKEN))
        forced = sc.client.post("/predict", json={})
        restored = sc.admin.post("/-/route", json={"force": None}, headers=bearer(TOKEN))
        after = sc.client.post("/predict", json={})
    assert r.status_code == 200
    assert r.json() == {"forced": "stable", "order": ["stable", "primary"]}
    assert forced.headers["x-mlwarden-upstream"] == "stable"
    assert forced.json() == {"version": "stable"}
    assert restored.json()["forced"] is None
    assert after.headers["x-mlwarden-upstream"] == "primary"
    assert "route forced to stable" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"force": 3}', b'{"other": "x"}', b'{"force": "stable", "x": 1}']
)
def test_route_answers_400_to_a_bad_body(body: bytes) -> None:
    with sidecar(token=TOKEN) as sc:
        r = sc.admin.post("/-/route", content=body, headers=bearer(TOKEN))
        forced = sc.proxy.router.forced
    assert r.status_code == 400
    assert forced is None


def test_mutations_answer_404_for_an_unknown_upstream() -> None:
    with sidecar(token=TOKEN) as sc:
        route = sc.admin.post("/-/route", json={"force": "nope"}, headers=bearer(TOKEN))
        reset = sc.admin.post("/-/breakers/nope/reset", headers=bearer(TOKEN))
    assert (route.status_code, reset.status_code) == (404, 404)
    assert route.json()["known"] == ["primary", "stable"]


def test_breaker_reset_closes_an_open_breaker_and_traffic_returns() -> None:
    with sidecar(token=TOKEN) as sc:
        breaker = sc.proxy.breakers["primary"]
        breaker.force_open()
        assert sc.client.post("/predict", json={}).headers["x-mlwarden-upstream"] == "stable"
        r = sc.admin.post("/-/breakers/primary/reset", headers=bearer(TOKEN))
        after = sc.client.post("/predict", json={})
        metrics = sc.admin.get("/metrics").text
        last = breaker.history[-1]
    assert r.status_code == 200
    assert r.json() == {"upstream": "primary", "previous": "open", "state": "closed"}
    assert (last.new, last.reason) == ("closed", "manual_reset")
    assert after.headers["x-mlwarden-upstream"] == "primary"
    assert 'mlwarden_breaker_state{upstream="primary"} 0.0' in metrics
    assert 'mlwarden_breaker_transitions_total{to="closed",upstream="primary"} 1.0' in metrics


# --------------------------------------------------------------------------- the ledger


def test_events_serve_breaker_and_manual_actions_newest_first_with_filters() -> None:
    with sidecar(token=TOKEN) as sc:
        sc.proxy.breakers["primary"].force_open()
        assert (
            sc.admin.post("/-/route", json={"force": "stable"}, headers=bearer(TOKEN)).status_code
            == 200
        )
        assert sc.admin.post("/-/breakers/primary/reset", headers=bearer(TOKEN)).status_code == 200
        events = sc.admin.get("/-/events").json()["events"]
        only_manual = sc.admin.get("/-/events", params={"target": "stable"}).json()
        limited = sc.admin.get("/-/events", params={"limit": 1}).json()
        bad = [
            sc.admin.get("/-/events", params=p)
            for p in ({"colour": "red"}, {"since": "yesterday"}, {"limit": 0})
        ]
        metrics = sc.admin.get("/metrics").text
    assert [(e["action"], e["target"], e["actor"]) for e in events] == [
        ("manual_breaker_reset", "primary", "admin"),
        ("breaker_closed", "primary", "auto"),
        ("manual_route", "stable", "admin"),
        ("breaker_opened", "primary", "auto"),
    ]
    assert events[0]["reason"].startswith("reset by 127.0.0.1 (was open)")
    assert [e["action"] for e in only_manual["events"]] == ["manual_route"]
    assert limited["count"] == 1 and limited["events"][0]["action"] == "manual_breaker_reset"
    assert [r.status_code for r in bad] == [400, 400, 400]
    assert 'mlwarden_healing_actions_total{action="manual_route",outcome="ok"} 1.0' in metrics


def test_the_ledger_file_keeps_every_record_across_a_restart(tmp_path) -> None:
    path = tmp_path / "ledger.jsonl"
    cfg = SidecarConfig.from_mapping(
        {
            "upstreams": {"primary": "http://127.0.0.1:9", "stable": "http://127.0.0.1:10"},
            "ledger": {"path": str(path)},
        },
        environ={},
    )
    first = Sidecar(cfg, health_checks=False)
    first.breakers["primary"].force_open()
    first.ledger.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and '"action":"breaker_opened"' in lines[0].replace(" ", "")
    second = Sidecar(cfg, health_checks=False)
    assert [r.action for r in second.ledger.query()] == ["breaker_opened"]
    second.ledger.close()
