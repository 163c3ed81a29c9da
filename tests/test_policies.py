"""Healing policies end to end: real model servers (the primary wrapped by the middleware), the
proxy served by uvicorn with its loops running, and a real HTTP server receiving webhooks."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from mlwarden.middleware import InferenceMonitor
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.healing.default_policies import default_policies
from mlwarden.sidecar.settings import sidecar_config_from_mapping
from tests.apps import FakeVersion, starlette_app
from tests.servers import serve_app
from tests.support import make_baseline, reference_rows


class Receiver:
    """A webhook endpoint: keeps every JSON body it is sent, by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append((scope["path"], json.loads(body)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def at(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.received if p == path]


def wait_for(what: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    return what()


@contextlib.contextmanager
def sidecar(upstreams: dict[str, str], **config: Any) -> Iterator[tuple[Sidecar, httpx.Client]]:
    cfg = sidecar_config_from_mapping(
        {
            "upstreams": upstreams,
            "health_checks": {"interval_s": 0.2, "timeout_s": 0.15, "unhealthy_threshold": 1},
            "healing": {"interval_s": 0.1, **config.pop("healing", {})},
            **config,
        },
        environ={},
    )
    proxy = Sidecar(cfg)
    with (
        serve_app(proxy.proxy, proxy_headers=False) as served,
        httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
    ):
        yield proxy, client


def actions(proxy: Sidecar, policy: str | None = None) -> list[str]:
    return [r.action for r in reversed(proxy.ledger.query(policy=policy, limit=1000))]


def test_drift_in_the_primarys_traffic_routes_to_stable_and_fires_the_retrain_webhook() -> None:
    primary_app = starlette_app()
    primary_app.add_middleware(
        InferenceMonitor,
        model_name="m",
        model_version="2",
        baseline=make_baseline(),
        drift_every_rows=500,
        window_rows=2_000,
        drift_interval_s=3600,
    )
    receiver = Receiver()
    with (
        serve_app(primary_app) as primary,
        serve_app(FakeVersion(label=0)) as stable,
        serve_app(receiver) as hooks,
    ):
        policy = {
            "name": "drift-to-stable",
            "when": "drift_score > 0.2",
            "cooldown_s": 600,
            "actions": [
                "route_to_fallback",
                {"webhook": {"url": f"{hooks.url}/retrain", "body": {"pipeline": "churn-retrain"}}},
            ],
        }
        with sidecar({"primary": primary.url, "stable": stable.url}, policies=[policy]) as (
            proxy,
            client,
        ):
            rows = reference_rows(1_200, seed=5, shift={"f2": 1.0})
            for i in range(0, len(rows), 10):
                r = client.post("/v1/models/m:predict", json={"instances": rows[i : i + 10]})
                assert r.status_code == 200
            # Drift evaluation, a health probe, a policy tick and a webhook delivery in turn:
            # a generous bound for a loaded machine.
            assert wait_for(lambda: "webhook" in actions(proxy), 30.0), actions(proxy)
            after = client.post("/v1/models/m:predict", json={"instances": rows[:1]})
            chain = proxy.ledger.query(policy="drift-to-stable")
    assert after.headers["x-mlwarden-upstream"] == "stable"
    assert [r.action for r in reversed(chain)] == ["policy_fired", "fallback", "webhook"]
    fired, fallback, webhook = reversed(chain)
    assert fired.signals["drift_score"] > 0.2 and fired.target == "primary"
    assert fallback.target == "stable" and "from primary to stable" in fallback.reason
    assert webhook.outcome == "ok"
    [sent] = receiver.at("/retrain")
    assert sent["pipeline"] == "churn-retrain"
    assert sent["mlwarden"]["policy"] == "drift-to-stable"
    assert sent["mlwarden"]["signals"]["drift_score"] > 0.2


def test_the_same_policy_firing_four_times_in_the_window_escalates_exactly_once() -> None:
    receiver = Receiver()
    with (
        serve_app(FakeVersion(label=0)) as primary,
        serve_app(FakeVersion(label=0)) as stable,
        serve_app(receiver) as hooks,
    ):
        policy = {
            "name": "always",
            "when": "requests >= 0",
            "cooldown_s": 0,
            "severity": "warning",
            "actions": [],
        }
        with sidecar(
            {"primary": primary.url, "stable": stable.url},
            policies=[policy],
            healing={"escalation": {"webhook_url": f"{hooks.url}/slack", "threshold": 3}},
        ) as (proxy, _):
            assert wait_for(lambda: actions(proxy, "always").count("policy_fired") >= 8)
            assert wait_for(lambda: receiver.at("/slack"))
            time.sleep(0.3)  # more ticks: still one escalation
            fired = actions(proxy, "always")
    assert fired.count("escalation") == 1
    # Escalated at the fourth firing: more than 3 within the window.
    assert fired[: fired.index("escalation")].count("policy_fired") == 4
    [slack] = receiver.at("/slack")
    assert "always" in slack["text"]
    assert slack["blocks"][0]["type"] == "header"
    assert any("policy_fired" in json.dumps(block) for block in slack["blocks"])


def test_a_fallback_that_fails_too_is_recorded_and_escalated_not_routed_again() -> None:
    receiver = Receiver()
    with serve_app(FakeVersion(label=0)) as primary, serve_app(receiver) as hooks:
        stable_server = serve_app(FakeVersion(label=0))
        stable = stable_server.__enter__()
        policy = {
            "name": "move",
            "when": 'breaker_open("primary")',
            "cooldown_s": 0,
            "actions": ["route_to_fallback"],
        }
        with sidecar(
            {"primary": primary.url, "stable": stable.url, "spare": stable.url},
            routing={"primary": "primary", "fallbacks": ["stable"]},
            policies=[policy],
            healing={"escalation": {"webhook_url": f"{hooks.url}/slack"}},
        ) as (proxy, _):
            proxy.breakers["primary"].force_open()
            assert wait_for(lambda: proxy.router.forced == "stable")
            stable_server.__exit__(None, None, None)  # the fallback goes down too
            assert wait_for(lambda: "remediation_failed" in actions(proxy, "move"))
            assert wait_for(lambda: receiver.at("/slack"))
            time.sleep(0.5)
            record = actions(proxy, "move")
    assert record.count("fallback") == 1  # never routed again
    assert record.count("remediation_failed") == 1
    assert record.count("escalation") == 1


def test_conditions_are_checked_at_start_up_with_the_policy_name_and_column() -> None:
    with pytest.raises(Exception) as info:
        sidecar_config_from_mapping(
            {
                "upstreams": {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"},
                "policies": [
                    {
                        "name": "p1",
                        "when": 'error_rate > 0.1 or breaker_open("zz")',
                        "actions": ["route_to_fallback"],
                    }
                ],
            },
            environ={},
        )
    text = str(info.value)
    assert "policies.p1.when" in text and "column 34" in text and "unknown upstream 'zz'" in text


def test_default_tiers_exist_without_written_policies() -> None:
    cfg = sidecar_config_from_mapping(
        {
            "upstreams": {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"},
            "healing": {"retrain_webhook_url": "http://127.0.0.1:3/retrain"},
        },
        environ={},
    )
    tiers = {p.name: p for p in default_policies(cfg)}
    assert {p.severity for p in tiers.values()} == {"info", "warning", "critical"}
    assert tiers["drift-small"].actions == ()
    assert [a.kind for a in tiers["drift-large"].actions] == ["route_to_fallback", "webhook"]
    assert [a.kind for a in tiers["errors-critical"].actions] == ["route_to_fallback", "escalate"]
    proxy = Sidecar(cfg, health_checks=False)
    assert [p.name for p in proxy.policies.policies] == list(tiers)


def test_a_rollback_that_did_not_help_is_recorded_and_escalated_once() -> None:
    with serve_app(FakeVersion(label=0)) as primary, serve_app(FakeVersion(label=0)) as candidate:
        cfg = sidecar_config_from_mapping(
            {
                "upstreams": {"primary": primary.url, "candidate": candidate.url},
                "canary": {"candidate": "candidate"},
                "policies": [
                    {
                        "name": "roll",
                        "when": "requests >= 0",
                        "cooldown_s": 0,
                        "actions": ["rollback_canary"],
                    }
                ],
            },
            environ={},
        )
        proxy = Sidecar(cfg, health_checks=False)
        assert proxy.policies.tick() == ["roll"]  # rolls the canary back
        assert proxy.canary is not None and proxy.canary.state == "rolled_back"
        for _ in range(3):
            proxy.policies.tick()  # still true: the rollback did not help
        record = actions(proxy, "roll")
    assert record.count("remediation_ineffective") == 1
    assert record.count("escalation") == 1
    assert [r.action for r in proxy.ledger.query(target="candidate")] == ["rollback"]


def test_live_accuracy_below_the_policy_bound_routes_the_primary_to_stable() -> None:
    """Labels sent back through the sidecar (configured to forward ``/-/feedback``, with the
    model's feedback token) make the primary's accuracy 0.8; the policy ``accuracy < 0.9 and
    labelled_samples >= 50`` moves traffic to the stable version and the ledger names the
    accuracy and the sample count that caused it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def predict(request: Request) -> JSONResponse:
        i = (await request.json())["i"]
        return JSONResponse({"predictions": ["fraud" if i % 5 == 0 else "ok"]})

    primary_app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    token = "labelling-job-token-0123"
    primary_app.add_middleware(
        InferenceMonitor, model_name="fraud", model_version="2", feedback_token=token
    )
    with serve_app(primary_app) as primary, serve_app(FakeVersion(label=0)) as stable:
        policy = {
            "name": "accuracy-floor",
            "when": "accuracy < 0.9 and labelled_samples >= 50",
            "actions": ["route_to_fallback"],
        }
        with sidecar(
            {"primary": primary.url, "stable": stable.url},
            policies=[policy],
            routing={"forward_operational_paths": ["/-/feedback"]},
        ) as (proxy, client):
            ids = {}
            for i in range(100):
                r = client.post("/predict", json={"i": i})
                assert r.headers["x-mlwarden-upstream"] == "primary"
                ids[i] = r.headers["x-request-id"]
            # The model says fraud for every 5th; the truth adds 20 frauds it missed: 0.8.
            truth = {
                i: "fraud" if i % 5 == 0 or i % 10 == 1 or i % 10 == 3 else "ok" for i in range(100)
            }
            result = client.post(
                "/-/feedback",
                json=[{"request_id": ids[i], "label": truth[i]} for i in range(100)],
                headers={"authorization": f"Bearer {token}"},
            ).json()
            assert result["accepted"] == 100
            assert wait_for(lambda: proxy.router.forced == "stable"), actions(proxy)
            after = client.post("/predict", json={"i": 1})
    assert after.headers["x-mlwarden-upstream"] == "stable"
    fired = proxy.ledger.query(policy="accuracy-floor", action="policy_fired")[0]
    assert fired.signals["accuracy"] == pytest.approx(0.8)
    assert fired.signals["labelled_samples"] == 100
    assert "accuracy < 0.9" in fired.reason
