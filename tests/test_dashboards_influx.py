"""The InfluxDB dashboard: its JSON, and every panel and variable query evaluated by a real
InfluxDB (Debian's ``influxd`` 1.6) holding what a monitored model server really wrote.

InfluxDB 1.6 has no ``/api/v2/write``, so the middleware writes through a small loopback relay
that does what InfluxDB 1.8+'s v2 compatibility endpoint does: ``POST /api/v2/write?bucket=B``
becomes ``POST /write?db=B`` with the body unchanged.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from dashboards import build
from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.baseline import BaselineProfile, build_baseline
from tests.apps import FEATURES, starlette_app
from tests.servers import LOOPBACK, Process, free_port, serve_app, temp_workdir, wait_http
from tests.support import MEANS, STDS

ROOT = Path(__file__).resolve().parents[1]
NAME = "mlwarden-influxdb.json"
INFLUXD = shutil.which("influxd")
needs_influxd = pytest.mark.skipif(
    INFLUXD is None,
    reason="influxd is not installed: run scripts/test (it installs Debian's influxdb)",
)

MODEL, VERSION = "churn", "3"
PLANS = np.array(["basic", "pro", "team"])
ALL_FEATURES = [*FEATURES, "plan"]
# What a panel query's time macros stand for here: the last hour, 10 s buckets.
TIME_FILTER = "time > now() - 1h"
INTERVAL = "10s"


def load() -> dict:
    return json.loads((ROOT / "dashboards" / NAME).read_text(encoding="utf-8"))


def panel_queries(board: dict) -> list[str]:
    return [t["query"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def variable_queries(board: dict) -> dict[str, str]:
    return {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "query"}


def measurement_fields_and_tags(query: str) -> tuple[str, set[str], set[str]]:
    """The measurement a panel query reads, the fields it aggregates and the tags it uses."""
    query = re.sub(r'\s+AS\s+"[^"]*"', "", query)  # column aliases are not names in the data
    (measurement,) = re.findall(r'FROM "([^"]+)"', query)
    fields = set(re.findall(r'\b[a-z_]+\("([^"]+)"\)', query))
    tags = set(re.findall(r'"([^"]+)"', query)) - fields - {measurement}
    return measurement, fields, tags


# -- static ----------------------------------------------------------------------------------


def test_the_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = {p.name: p for p in build.main(tmp_path)}
    committed = (ROOT / "dashboards" / NAME).read_text(encoding="utf-8")
    assert written[NAME].read_text(encoding="utf-8") == committed, (
        f"{NAME} is stale: run python3 -m dashboards.build"
    )


def test_the_dashboard_is_importable_with_a_datasource_input_and_chained_variables() -> None:
    board = load()
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == [
        ("DS_INFLUXDB", "datasource", "influxdb")
    ]
    assert {"type": "datasource", "id": "influxdb", "name": "InfluxDB", "version": "1.0.0"} in (
        board["__requires"]
    )
    assert board["uid"] == "mlwarden-influxdb"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert "id" not in board and "$$hashKey" not in json.dumps(board)
    assert "mlwarden" in board["tags"] and board["links"][0]["tags"] == board["tags"]
    assert "InfluxQL" in board["description"] and "DBRP" in board["description"]

    datasource, *variables = board["templating"]["list"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "influxdb")
    assert [v["name"] for v in variables] == ["model", "version", "feature"]
    for var in variables:
        assert var["datasource"] == {"type": "influxdb", "uid": "${datasource}"}
        assert var["query"].startswith("SHOW TAG VALUES FROM "), var["query"]
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
    queries = variable_queries(board)
    assert '"model" =~ /^$model$/' in queries["version"]
    assert '"version" =~ /^$version$/' in queries["feature"]


def test_every_panel_has_a_unit_a_description_thresholds_and_influxql_targets() -> None:
    board = load()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        title = panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"], title
        assert panel["description"], title
        assert defaults["thresholds"]["steps"], title
        assert panel["datasource"] == {"type": "influxdb", "uid": "${datasource}"}, title
        assert panel["targets"], title
        for target in panel["targets"]:
            q = target["query"]
            assert target["datasource"] == panel["datasource"], title
            assert target["rawQuery"] is True, title
            assert "$timeFilter" in q and '"model" =~ /^$model$/' in q, q
            assert '"version" =~ /^$version$/' in q, q
            if target["resultFormat"] == "time_series":
                assert "GROUP BY time($__interval)" in q, q
            else:
                assert panel["type"] == "table", title
            if "mlwarden_feature_summary" not in q:
                assert '"feature" =~ /^$feature$/' in q, q


# -- live --------------------------------------------------------------------------------------


@dataclass
class Influxd:
    """Debian's influxd on loopback ports, with its own data, meta and WAL directories."""

    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def query(self, db: str, q: str) -> dict:
        """One InfluxQL statement through the v1 ``/query`` API; its result, errors raised."""
        params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
        req = urllib.request.Request(f"{self.url}/query", data=params.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                (result,) = json.load(resp)["results"]
        except urllib.error.HTTPError as exc:  # a query influxd cannot parse: 400 and why
            with exc:
                raise AssertionError(f"{q}\n-> HTTP {exc.code}: {exc.read()[:500]!r}") from None
        assert "error" not in result, (q, result["error"])
        return result


def start_influxd(workdir: Path) -> Influxd:
    assert INFLUXD is not None
    port, rpc_port = free_port(), free_port()
    config = workdir / "influxdb.conf"
    # Only the HTTP API; everything else that would listen, write or phone home is off.
    # (Debian's build names the usage-reporting key reporting-enabled; it defaults to off.)
    config.write_text(
        f'reporting-enabled = false\nbind-address = "{LOOPBACK}:{rpc_port}"\n'
        f'[meta]\n  dir = "{workdir / "meta"}"\n'
        f'[data]\n  dir = "{workdir / "data"}"\n  wal-dir = "{workdir / "wal"}"\n'
        "  query-log-enabled = false\n"
        "[retention]\n  enabled = false\n"
        "[shard-precreation]\n  enabled = false\n"
        "[monitor]\n  store-enabled = false\n"
        "[subscriber]\n  enabled = false\n"
        "[continuous_queries]\n  enabled = false\n"
        f'[http]\n  bind-address = "{LOOPBACK}:{port}"\n  log-enabled = false\n'
        '[logging]\n  level = "warn"\n  suppress-logo = true\n',
        encoding="utf-8",
    )
    proc = Process([INFLUXD, "-config", str(config)], name=f"influxd-{port}", workdir=workdir)
    try:
        wait_http(f"http://{LOOPBACK}:{port}/ping", timeout=20, expect=204)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"influxd did not start:\n{proc.log()}") from None
    return Influxd(proc, port)


@pytest.fixture(scope="module")
def influxd() -> Iterator[Influxd]:
    workdir = temp_workdir("influxd")
    server = start_influxd(workdir)
    try:
        yield server
    finally:
        server.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# InfluxDB 2.x write precisions → the 1.x /write API's.
PRECISIONS = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


@dataclass
class V2Relay:
    """``POST /api/v2/write`` → influxd's ``POST /write``, the way InfluxDB 1.8+ serves it."""

    url: str
    statuses: list[int] = field(default_factory=list)


@contextlib.contextmanager
def v2_write_relay(influx_url: str) -> Iterator[V2Relay]:
    relay = V2Relay("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            params = urllib.parse.parse_qs(url.query)
            if url.path != "/api/v2/write" or "bucket" not in params:
                self._answer(404, b'{"code":"not found"}')
                return
            # As in 1.8's compatibility API: the bucket is "database[/retention-policy]", the
            # org and the token are not checked, the line protocol goes through unchanged.
            db, _, rp = params["bucket"][0].partition("/")
            v1 = {"db": db, "precision": PRECISIONS[params.get("precision", ["ns"])[0]]}
            if rp:
                v1["rp"] = rp
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {"Content-Type": "text/plain; charset=utf-8"}
            if self.headers.get("Content-Encoding"):
                headers["Content-Encoding"] = self.headers["Content-Encoding"]
            req = urllib.request.Request(
                f"{influx_url}/write?{urllib.parse.urlencode(v1)}",
                data=body,
                headers=headers,
                method="POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    status, answer = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    status, answer = exc.code, exc.read()
            relay.statuses.append(status)
            self._answer(status, answer)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="v2-relay", daemon=True)
    thread.start()
    relay.url = f"http://{LOOPBACK}:{server.server_address[1]}"
    try:
        yield relay
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def baseline_with_a_category(n: int = 20_000, seed: int = 7) -> BaselineProfile:
    """The test features f0..f4 plus a categorical ``plan``, so that chi2 fields exist."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {name: rng.normal(MEANS[name], STDS[name], n) for name in FEATURES}
    columns["plan"] = rng.choice(PLANS, n, p=[0.6, 0.3, 0.1])
    return build_baseline(columns, source="tests")


def rows(n: int, seed: int, *, drifted: bool) -> list[dict[str, Any]]:
    """Rows like the baseline, or with f0 moved by 3 std, f1 30 % missing and mostly "team"."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        row: dict[str, Any] = {
            name: float(rng.normal(MEANS[name], STDS[name])) for name in FEATURES
        }
        if drifted:
            row["f0"] += 3 * STDS["f0"]
            if rng.random() < 0.3:
                row["f1"] = None
            row["plan"] = str(rng.choice(PLANS, p=[0.1, 0.1, 0.8]))
        else:
            row["plan"] = str(rng.choice(PLANS, p=[0.6, 0.3, 0.1]))
        out.append(row)
    return out


def monitored_app(relay_url: str, bucket: str) -> Any:
    app = starlette_app()
    app.add_middleware(
        InferenceMonitor,
        model_name=MODEL,
        model_version=VERSION,
        registry=CollectorRegistry(),
        baseline=baseline_with_a_category(),
        window_rows=300,
        drift_interval_s=0.2,
        tracing=False,
        influx={
            "url": relay_url,
            "bucket": bucket,
            "org": "mlwarden",
            "token": "unused",
            "interval_s": 0.2,
        },
    )
    return app


def substitute(query: str, feature: str) -> str:
    """A query as Grafana sends it: macros expanded, variables interpolated."""
    return (
        query.replace("$timeFilter", TIME_FILTER)
        .replace("$__interval", INTERVAL)
        .replace("$model", MODEL)
        .replace("$version", VERSION)
        .replace("$feature", feature)
    )


def has_values(result: dict) -> bool:
    """At least one series with a non-null value (the first column is time or the tag key)."""
    return any(
        value is not None
        for series in result.get("series", [])
        for row in series["values"]
        for value in row[1:]
    )


@pytest.mark.servers
@needs_influxd
def test_every_panel_and_variable_query_returns_what_the_middleware_wrote(influxd) -> None:
    board = load()
    bucket = f"dash{time.time_ns()}"
    influxd.query(bucket, f'CREATE DATABASE "{bucket}"')
    variables = variable_queries(board)
    with (
        v2_write_relay(influxd.url) as relay,
        serve_app(monitored_app(relay.url, bucket)) as model,
        httpx.Client(base_url=model.url, trust_env=False, timeout=10) as client,
    ):
        # Stable traffic first, then drifted traffic that fills the 300-row window.
        for i, batch_rows in enumerate(
            (rows(400, seed=1, drifted=False), rows(400, seed=2, drifted=True))
        ):
            for k in range(0, len(batch_rows), 20):
                r = client.post("/predict", json={"instances": batch_rows[k : k + 20]})
                assert r.status_code == 200, r.text
            if i == 0:
                time.sleep(0.5)  # at least one drift report on the stable window

        # The exporter's points land within a few write intervals: wait for the drifted reports
        # and for every feature to show up in the feature variable.
        deadline = time.monotonic() + 30
        features: list[str] = []
        flagged = False
        while time.monotonic() < deadline:
            features = tag_values(influxd.query(bucket, substitute(variables["feature"], ".*")))
            flagged = flagged or drift_flagged(influxd, bucket)
            if flagged and features == sorted(ALL_FEATURES):
                break
            time.sleep(0.3)
        assert features == sorted(ALL_FEATURES)
        assert flagged, "the drifted traffic never set drift_detected"

        # Every query as Grafana sends it with feature = All, and with every feature selected
        # (Grafana's multi-value form of the variable: a regex alternation).
        selections = (".*", "(" + "|".join(features) + ")")
        queries = {
            substitute(q, f)
            for q in [*panel_queries(board), *variables.values()]
            for f in selections
        }
        pending = set(queries)
        while pending and time.monotonic() < deadline:
            pending = {q for q in pending if not has_values(influxd.query(bucket, q))}
            if pending:
                time.sleep(0.3)

        # The table of drifted features shows what the drifted traffic did. The verdict can
        # come first: its tests read the last 250 rows, while the whole window's PSI and
        # chi-square are refreshed at most once a second; wait for a report that has both.
        (table,) = [p for p in board["panels"] if p["type"] == "table"]
        table_query = substitute(table["targets"][0]["query"], ".*")
        rows_by_feature = drifted_table(influxd, bucket, table_query)
        while not whole_window_shows_drift(rows_by_feature) and time.monotonic() < deadline:
            time.sleep(0.3)
            rows_by_feature = drifted_table(influxd, bucket, table_query)

    assert relay.statuses and set(relay.statuses) == {204}, relay.statuses
    missing = "\n".join(sorted(pending))
    assert not pending, f"{len(pending)} of {len(queries)} queries got no data:\n{missing}"
    assert {f for f, row in rows_by_feature.items() if row["drifted"] == 1} >= {"f0", "plan"}
    # the tests that decided: f0's location test and plan's chi-square test fired
    assert rows_by_feature["f0"]["max location ratio"] >= 1
    assert rows_by_feature["plan"]["max chi2 ratio"] >= 1
    assert rows_by_feature["plan"]["max location ratio"] is None  # numeric tests only
    assert rows_by_feature["f0"]["max PSI"] > 0.2
    assert rows_by_feature["plan"]["max chi-square"] > 0
    assert rows_by_feature["f1"]["max null ratio"] > 0.2

    # Every field and tag the exporter wrote is on a panel, and panels read nothing else.
    written: dict[str, tuple[set[str], set[str]]] = {}
    for measurement in tag_values(influxd.query(bucket, "SHOW MEASUREMENTS")):
        fields = influxd.query(bucket, f'SHOW FIELD KEYS FROM "{measurement}"')
        tags = influxd.query(bucket, f'SHOW TAG KEYS FROM "{measurement}"')
        written[measurement] = (set(tag_values(fields, column=0)), set(tag_values(tags, column=0)))
    assert sorted(written) == ["mlwarden_feature", "mlwarden_feature_summary"]
    queried: dict[str, tuple[set[str], set[str]]] = {}
    for query in panel_queries(board):
        measurement, fields, tags = measurement_fields_and_tags(query)
        queried.setdefault(measurement, (set(), set()))
        queried[measurement][0].update(fields)
        queried[measurement][1].update(tags)
    assert queried == written


def drifted_table(influxd: Influxd, bucket: str, query: str) -> dict[str, dict[str, Any]]:
    """The table panel's answer: feature → its row (column name → value)."""
    result = influxd.query(bucket, query)
    return {
        s["tags"]["feature"]: dict(zip(s["columns"], s["values"][0], strict=True))
        for s in result.get("series", [])
    }


def whole_window_shows_drift(rows_by_feature: dict[str, dict[str, Any]]) -> bool:
    """The whole window's figures of a report on drifted rows: f0's PSI, f1's nulls."""
    psi = rows_by_feature.get("f0", {}).get("max PSI")
    nulls = rows_by_feature.get("f1", {}).get("max null ratio")
    return psi is not None and psi > 0.2 and nulls is not None and nulls > 0.2


def tag_values(result: dict, column: int = -1) -> list[str]:
    """One column of a SHOW statement's rows, sorted (the last column: the value)."""
    return sorted(row[column] for series in result.get("series", []) for row in series["values"])


def drift_flagged(influxd: Influxd, bucket: str) -> bool:
    result = influxd.query(
        bucket, f'SELECT max("drift_detected") FROM "mlwarden_feature_summary" WHERE {TIME_FILTER}'
    )
    return has_values(result) and result["series"][0]["values"][0][1] == 1
