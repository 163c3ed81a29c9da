"""The Grafana dashboards: their JSON, their coverage of the metric tables, and every panel
query evaluated by a real Prometheus scraping a monitored model server and a sidecar."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dashboards import build
from mlwarden.middleware import InferenceMonitor
from mlwarden.sidecar.admin import create_admin_app
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.healing.ledger_records import LedgerRecord
from tests.apps import FakeVersion
from tests.servers import serve_app, start_prometheus, temp_workdir
from tests.support import make_baseline, reference_rows, segment
from tests.test_breaker_redis import running_redis
from tests.test_proxy import dead_url

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ("mlwarden-inference.json", "mlwarden-sidecar.json")
METRIC_RE = re.compile(r"mlwarden_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def load(name: str) -> dict:
    return json.loads((ROOT / "dashboards" / name).read_text(encoding="utf-8"))


def panels(board: dict) -> list[dict]:
    """The panels that query (the rows only group them)."""
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def documented_metrics() -> set[str]:
    """Every metric name in the README's metric tables (the middleware's and the sidecar's)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = set(re.findall(r"^\| `(mlwarden_[a-z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert len(names) > 50, names
    return names


def queried_metrics() -> set[str]:
    names = set()
    for name in DASHBOARDS:
        for expr in exprs(load(name)):
            for metric in METRIC_RE.findall(expr):
                for suffix in SUFFIXES:
                    metric = metric.removesuffix(suffix)
                names.add(metric)
    return names


# -- static ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_has_a_unit_a_description_and_the_datasource_input(name: str) -> None:
    board = load(name)
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = board["templating"]["list"]
    assert variables[0]["type"] == "datasource"
    # The import input sets the variable's start value; panels and targets follow the variable.
    assert variables[0]["current"]["value"] == "${DS_PROMETHEUS}"
    for var in variables[1:]:
        assert var["query"]["query"].startswith("label_values(")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert {t["datasource"]["uid"] for t in panel["targets"]} == {"${datasource}"}
        assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"], panel["title"]
    for panel in panels(board):
        # A graph's rates over $__rate_interval; a stat's count over the dashboard's range.
        expected = "$__range" if panel["type"] == "stat" else "$__rate_interval"
        for target in panel["targets"]:
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window == expected, (panel["title"], target["expr"])


@pytest.mark.parametrize("name", DASHBOARDS)
def test_namespace_then_job_select_one_deployment_in_every_selector(name: str) -> None:
    board = load(name)
    namespace, job, *others = board["templating"]["list"][1:]
    # namespace: one or All (".*" also matches series without the label: no Kubernetes)
    assert (namespace["name"], namespace["multi"], namespace["includeAll"]) == (
        "namespace",
        False,
        True,
    )
    assert namespace["allValue"] == ".*"
    # job: exactly one, so sums by upstream or model never merge two deployments
    assert (job["name"], job["multi"], job["includeAll"]) == ("job", False, False)
    assert job["query"]["query"].endswith('{namespace=~"$namespace"}, job)')
    for var in others:
        assert var["multi"] and var["includeAll"], var["name"]
        assert 'job="$job", namespace=~"$namespace"' in var["query"]["query"], var["name"]
    for expr in exprs(board):
        selectors = re.findall(r"mlwarden_[a-z0-9_]+(\{[^}]*\})?", expr)
        assert selectors, expr
        for selector in selectors:
            assert selector.startswith('{job="$job", namespace=~"$namespace"'), expr


@pytest.mark.parametrize("name", [*DASHBOARDS, "mlwarden-influxdb.json"])
def test_rows_group_the_panels_and_nothing_overlaps(name: str) -> None:
    board = load(name)
    kinds = [p["type"] for p in board["panels"]]
    assert kinds[0] == "row" and kinds[-1] != "row"
    assert "row,row" not in ",".join(kinds), "an empty row"
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


@pytest.mark.parametrize("name", DASHBOARDS)
def test_stats_are_one_instant_query_and_counts_are_over_the_dashboard_range(name: str) -> None:
    stats = [p for p in panels(load(name)) if p["type"] == "stat"]
    assert stats
    for stat in stats:
        assert stat["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]
        for target in stat["targets"]:
            assert target["instant"] is True and target["range"] is False
            # a count of events: over the range shown, not the last $__rate_interval
            if "_total" in target["expr"]:
                assert "increase(" in target["expr"] and "[$__range]" in target["expr"]
    titles = [p["title"] for p in stats]
    assert "mlwarden builds" in titles
    if name == "mlwarden-sidecar.json":
        assert "Escalations" in titles


def test_the_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = build.main(tmp_path)
    assert sorted(p.name for p in written) == sorted([*DASHBOARDS, "mlwarden-influxdb.json"])
    for path in written:
        committed = (ROOT / "dashboards" / path.name).read_text(encoding="utf-8")
        assert path.read_text(encoding="utf-8") == committed, (
            f"{path.name} is stale: run python3 -m dashboards.build"
        )


def test_every_documented_metric_is_on_a_panel_and_every_queried_one_is_documented() -> None:
    documented = {m.removesuffix("_total") for m in documented_metrics()}
    queried = {m.removesuffix("_total") for m in queried_metrics()}
    assert sorted(documented - queried) == [], "documented but on no panel"
    assert sorted(queried - documented) == [], "queried but not in the README's tables"


# -- live --------------------------------------------------------------------------------------

MODEL = "churn"
FEEDBACK_TOKEN = "dashboard-labeller-token-0123"
LABELLER = {"authorization": f"Bearer {FEEDBACK_TOKEN}"}


async def predict(request: Request) -> Response:
    try:
        payload = await request.json()
    except ValueError:
        return PlainTextResponse("bad json", status_code=400)
    out = []
    for row in payload.get("instances", []):
        p = min(max(0.5 + (row.get("f0", 0.0) or 0.0) / 4, 0.0), 1.0)
        out.append({"label": "yes" if p >= 0.5 else "no", "value": p, "probability": max(p, 1 - p)})
    return JSONResponse({"predictions": out})


async def text_predict(request: Request) -> Response:
    await request.body()
    return PlainTextResponse("not json")


async def boom(request: Request) -> Response:
    raise RuntimeError("model exploded")


def model_app(influx_url: str) -> Any:
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/text/predict", text_predict, methods=["POST"]),
            Route("/boom/predict", boom, methods=["POST"]),
        ]
    )
    app.add_middleware(
        InferenceMonitor,
        model_name=MODEL,
        model_version="1",
        registry=CollectorRegistry(),
        baseline=make_baseline(segments=True),  # a categorical feature: the chi-square panel
        prediction_classes=("yes", "no"),
        drift_every_rows=50,
        feedback_token=FEEDBACK_TOKEN,
        remember_max_predictions=200,  # unlabelled rows are evicted: the unlabelled counter
        drift_interval_s=0.5,
        tracing=False,
        influx={"url": influx_url, "bucket": f"dash{time.time_ns()}", "interval_s": 0.2},
    )
    return app


@contextlib.contextmanager
def sidecar(model_url: str) -> Any:
    primary = FakeVersion("primary", label="yes", fail_first=6)
    stable = FakeVersion("stable", label="yes")
    candidate = FakeVersion("candidate", label="yes")
    shadow = FakeVersion("shadow", label="no")
    with (
        serve_app(primary) as p,
        serve_app(stable) as s,
        serve_app(candidate) as c,
        serve_app(shadow) as sh,
        running_redis() as fleet_redis,  # a fleet of one: the fleet panels have data too
    ):
        cfg = SidecarConfig.from_mapping(
            {
                "upstreams": {
                    "primary": p.url,
                    "stable": s.url,
                    "candidate": c.url,
                    "shadow": sh.url,
                    "dead": dead_url(),
                    "model": model_url,  # the middleware's drift counts, for fleet drift
                },
                "retry": {
                    "num_retries": 1,
                    "base_interval_s": 0.001,
                    "max_interval_s": 0.002,
                    "min_retries_per_s": 1000,
                },
                "breaker": {"consecutive_5xx": 2, "reset_timeout_s": 1},
                "health_checks": {
                    "interval_s": 0.5,
                    "timeout_s": 0.3,
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                },
                "canary": {
                    "candidate": "candidate",
                    "interval_s": 2,
                    "min_requests": 3,
                    "steps_percent": [20, 50],
                },
                "shadow": {"target": "shadow", "sample_percent": 100},
                "fleet": {
                    "redis_url": fleet_redis.url,
                    "name": "dashboards",
                    "lease_ttl_s": 3,
                    "poll_interval_s": 0.5,
                    "drift_upstream": "model",
                    "drift_interval_s": 0.5,
                },
            },
            environ={},
        )
        proxy = Sidecar(cfg, registry=CollectorRegistry())
        admin = create_admin_app(proxy)
        with (
            serve_app(proxy.proxy, proxy_headers=False) as served,
            serve_app(admin) as admin_served,
        ):
            proxy.ledger.record(
                LedgerRecord(
                    action="escalation",
                    target="primary",
                    reason="dashboard test",
                    severity="critical",
                )
            )
            yield served.url, admin_served


def traffic(model_url: str, sidecar_url: str, stop: threading.Event, max_s: float) -> None:
    """Bounded load on both servers, with labels posted back for the model's answers."""
    rows = reference_rows(500, seed=5)
    deadline = time.monotonic() + max_s
    with (
        httpx.Client(base_url=model_url, trust_env=False, timeout=10) as model,
        httpx.Client(base_url=sidecar_url, trust_env=False, timeout=10) as side,
    ):
        for i in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            batch = [
                dict(r, extra_feature=1.0, segment=segment(i + k))
                for k, r in enumerate(rows[(i * 10) % 490 :][:10])
            ]
            r = model.post("/predict", json={"instances": batch})
            rid = r.headers.get("x-request-id", "")
            labels = [{"request_id": f"{rid}#{k}", "label": "yes"} for k in range(5)]
            labels.append({"request_id": "never-seen", "label": "no"})
            model.post("/-/feedback", json=labels, headers=LABELLER)
            if i % 5 == 0:
                model.post("/predict", content=b"{not json")
                model.post("/text/predict", json={"instances": batch})
                model.post("/boom/predict", json={"instances": batch})
            for _ in range(3):
                side.post("/predict", content=b'{"x": 1}', headers={"x-user": f"u{i}-{_}"})
            if i % 10 == 0:  # refused by the sidecar, counted by path
                side.post("/-/feedback", json=labels)
            time.sleep(0.02)


# The scrape job of tests.servers.start_prometheus; no namespace label outside Kubernetes.
JOB = "mlwarden"


def substitute(expr: str) -> str:
    """What Grafana sends: one job, namespace All (".*"), model, every version and upstream."""
    return (
        expr.replace("$model", MODEL)
        .replace("$version", ".*")
        .replace("$upstream", ".*")
        .replace("$namespace", ".*")
        .replace("$job", JOB)
        .replace("$__rate_interval", "15s")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
    )


def label_values(prom_url: str, variable: str) -> list[str]:
    """A ``label_values(selector, label)`` variable evaluated as Grafana does (label API)."""
    selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable).groups()
    query = urllib.parse.urlencode({"match[]": substitute(selector)})
    with urllib.request.urlopen(f"{prom_url}/api/v1/label/{label}/values?{query}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", (variable, body)
    return body["data"]


def instant(prom_url: str, promql: str) -> list[dict]:
    url = f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def test_every_panel_query_returns_data_from_a_real_prometheus(victoria_metrics) -> None:
    queries = {substitute(e) for name in DASHBOARDS for e in exprs(load(name))}
    workdir = temp_workdir("dashboards")
    stop = threading.Event()
    with (
        serve_app(model_app(victoria_metrics.url)) as model,
        sidecar(model.url) as (side_url, admin),
    ):
        prom = start_prometheus(workdir, [f"127.0.0.1:{model.port}", f"127.0.0.1:{admin.port}"])
        loader = threading.Thread(target=traffic, args=(model.url, side_url, stop, 60), daemon=True)
        loader.start()
        try:
            pending = set(queries)
            deadline = time.monotonic() + 45
            while pending and time.monotonic() < deadline:
                pending = {q for q in pending if not instant(prom.url, q)}
                time.sleep(1)
            # The variables list the job, and no namespace (All remains, as substituted).
            found = {
                (name, v["name"]): label_values(prom.url, v["query"]["query"])
                for name in DASHBOARDS
                for v in load(name)["templating"]["list"][1:]
            }
        finally:
            stop.set()
            loader.join(timeout=15)
            prom.process.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    missing = "\n".join(sorted(pending))
    assert not pending, f"{len(pending)} of {len(queries)} panel queries got no data:\n{missing}"
    for name in DASHBOARDS:
        assert found[name, "namespace"] == [], name
        assert found[name, "job"] == [JOB], name
    assert found["mlwarden-inference.json", "model"] == [MODEL]
    assert "primary" in found["mlwarden-sidecar.json", "upstream"]
