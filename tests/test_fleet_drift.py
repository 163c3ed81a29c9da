"""Fleet drift: every replica's drift counts summed, judged as one server seeing every row.

- the middleware's ``/-/drift/counts`` and ``/-/drift/baseline`` on a real uvicorn server;
- summed counts are exactly the counts of the fleet's last rows (round-robin traffic);
- repeated in-process runs (fixed seeds): the fleet's judge flags a shift in about the rows
  one server needs, far fewer than one replica alone, without false alarms before it;
- three model replicas with the middleware, three ``mlwarden sidecar`` processes and a real
  ``redis-server``: drift flagged on the fleet's rows, one ``fleet_drift_detected`` record in
  the fleet's ledger, every replica reporting the verdict (status, metrics, policy signal).
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator
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

from benchmarks.drift_lifetimes import columns as bench_columns
from benchmarks.drift_lifetimes import make_baseline as bench_baseline
from benchmarks.fleet_drift import Stream
from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.drift import DriftEvaluator, DriftThresholds
from mlwarden.middleware.drift_export import baseline_fingerprint, decode_counts
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.payloads import FeatureBatch
from mlwarden.sidecar.fleet.drift_judge import merge_counts
from tests.apps import FEATURES, starlette_app
from tests.servers import ServedApp, serve_app, temp_workdir
from tests.support import make_baseline, reference_rows
from tests.test_breaker_redis import running_redis
from tests.test_fleet import Replica, _leaders, _stream, _wait


def _monitored(baseline: BaselineProfile | None, **options: Any) -> InferenceMonitor:
    return InferenceMonitor(
        starlette_app(),
        model_name="churn",
        baseline=baseline,
        registry=CollectorRegistry(),
        **options,
    )


def _post_rows(client: httpx.Client, url: str, rows: list[dict], per_request: int = 10) -> None:
    for i in range(0, len(rows), per_request):
        r = client.post(url + "/predict", json={"instances": rows[i : i + per_request]})
        assert r.status_code == 200, r.text


@pytest.mark.floor
def test_the_middleware_serves_its_drift_counts_and_baseline() -> None:
    baseline = make_baseline()
    with serve_app(_monitored(baseline)) as served, httpx.Client(timeout=10) as client:
        _post_rows(client, served.url, reference_rows(300, seed=3))
        answer = client.get(served.url + "/-/drift/counts", params={"rows": "50,200"}).json()
        assert answer["baseline"] == baseline_fingerprint(baseline)
        assert answer["added"] == 300 and answer["rows"] == 300
        assert DriftThresholds.from_mapping(answer["settings"]) == DriftThresholds()
        assert set(answer["counts"]) == {"50", "200"}
        cells = len(answer["counts"]["50"]["numeric"][0])
        for size in (50, 200):
            counts = decode_counts(
                answer["counts"][str(size)], numeric_shape=(len(FEATURES), cells), categories=()
            )
            assert counts.rows == size
            assert counts.present.tolist() == [size] * len(FEATURES)
        # Without sizes: the drift scales (the window holds fewer rows: all of them).
        default = client.get(served.url + "/-/drift/counts").json()
        assert {k: v["rows"] for k, v in default["counts"].items()} == {
            "250": 250,
            "1000": 300,
            "4000": 300,
        }
        profile = BaselineProfile.from_dict(client.get(served.url + "/-/drift/baseline").json())
        assert baseline_fingerprint(profile) == answer["baseline"]
        for bad in ("abc", "0", "1,2,3,4,5,6,7,8,9", "10001", ""):
            r = client.get(served.url + "/-/drift/counts", params={"rows": bad})
            if bad == "":
                assert r.status_code == 200
                continue
            assert r.status_code == 400, bad
            assert r.json()["error"].startswith("rows:")
    with serve_app(_monitored(None)) as served:
        r = httpx.get(served.url + "/-/drift/counts", timeout=5)
        assert r.status_code == 404 and "no baseline" in r.json()["error"]


@pytest.mark.floor
def test_summed_counts_are_exactly_the_counts_of_the_fleets_last_rows() -> None:
    rng = np.random.default_rng(5)
    baseline = bench_baseline(rng)
    one = FeatureWindows(baseline, max_rows=10_000, max_age_s=None)
    replicas = [FeatureWindows(baseline, max_rows=10_000, max_age_s=None) for _ in range(3)]
    for i in range(2_500):  # one row a request, round robin: replica k has rows k, k+3, ...
        batch = FeatureBatch(1, bench_columns(rng, 1), "json")
        one.add(batch)
        replicas[i % 3].add(batch)
    cells = DriftEvaluator(one, DriftThresholds()).calibration.numeric.cells
    for scale in (250, 1_000, 4_000):
        size = math.ceil(scale / 3)
        parts = [w.recent([size], cells)[1][size] for w in replicas]
        merged = merge_counts(parts)
        rows = min(3 * size, 2_500)
        expected = one.recent([rows], cells)[1][rows]
        assert merged.rows == expected.rows == rows
        assert np.array_equal(merged.numeric, expected.numeric)
        assert np.array_equal(merged.present, expected.present)
        for got, want in zip(merged.categorical, expected.categorical, strict=True):
            assert np.array_equal(got, want)


def test_the_fleet_flags_drift_in_about_the_rows_of_one_server_seeing_all() -> None:
    """12 runs (fixed seeds): f0 shifted by 0.25 sd after 2,000 undrifted rows."""
    rng = np.random.default_rng(11)
    baseline = bench_baseline(rng)
    settings = DriftThresholds()
    found: dict[str, list[int]] = {"one server": [], "fleet of 3": [], "one replica alone": []}
    warm_alarms = 0
    for _ in range(12):
        stream = Stream(baseline, settings, pass_rows=60)
        for _ in range(200):
            hits = stream.feed(FeatureBatch(10, bench_columns(rng, 10), "json"))
            warm_alarms += bool(hits.get("fleet of 3"))
        onset, first = stream.rows, {}
        while stream.rows - onset < 9_000 and len(first) < 3:
            hits = stream.feed(FeatureBatch(10, bench_columns(rng, 10, 0.25), "json"))
            for judge, hit in hits.items():
                if hit:
                    first.setdefault(judge, stream.rows - onset)
        for judge, rows in first.items():
            found[judge].append(rows)
    assert warm_alarms == 0
    assert all(len(rows) == 12 for rows in found.values()), found
    single = float(np.median(found["one server"]))
    fleet = float(np.median(found["fleet of 3"]))
    alone = float(np.median(found["one replica alone"]))
    # About the rows of one server seeing every row (a pass every 60 rows adds some), and far
    # fewer than a replica judging its third of the traffic alone.
    assert fleet <= 1.3 * single + 60, found
    assert fleet <= 0.7 * alone, found


def _sidecar_config(model_url: str, redis_url: str, fleet: str, hook_url: str) -> str:
    return (
        f"upstreams:\n  model: {model_url}\n"
        "routing: {primary: model}\n"
        "health_checks: {interval_s: 60}\n"
        "healing: {interval_s: 0.2}\n"
        f"fleet: {{redis_url: '{redis_url}', name: {fleet}, replica: REPLICA, "
        "lease_ttl_s: 3, poll_interval_s: 0.2, drift_interval_s: 0.3}\n"
        # A fleet policy (it reads a fleet_ signal): the leader's alone, so one webhook.
        "policies:\n"
        "  - name: fleet-drift\n"
        "    when: fleet_drift_detected\n"
        "    for_s: 0\n"
        f"    actions: [{{webhook: {{url: '{hook_url}'}}}}]\n"
    )


def _hook_app(received: list[dict]) -> Starlette:
    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def _metric(admin_port: int, name: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.servers
def test_three_replicas_flag_drift_on_the_fleets_rows(tmp_path: Path) -> None:
    fleet = f"t-{uuid.uuid4().hex[:8]}"
    baseline = make_baseline()
    reference = FeatureWindows(baseline, max_rows=10_000, max_age_s=None)
    single = DriftEvaluator(reference, DriftThresholds())
    warm = reference_rows(1_500, seed=21)
    drifted = reference_rows(3_000, seed=22, shift={"f1": 0.3})
    received: list[dict] = []
    with (
        running_redis() as redis_server,
        _three_models(baseline) as models,
        serve_app(_hook_app(received)) as hook,
    ):
        workdir = temp_workdir("fleet-drift")
        replicas = [
            Replica(
                i,
                _sidecar_config(models[i].url, redis_server.url, fleet, hook.url + "/hook"),
                workdir,
            )
            for i in range(3)
        ]
        try:
            for replica in replicas:
                replica.wait_ready()
            _wait(lambda: len(_leaders(replicas)) == 1, 10, "one leader")
            leader = replicas[_leaders(replicas)[0]]
            with httpx.Client(timeout=10) as client:
                sent = 0
                # Undrifted rows first: 10 a request, round robin over the sidecars.
                sent = _send(client, replicas, warm, sent)
                _wait_judged(leader, sent)
                verdict = leader.status()["fleet"]["drift"]["verdict"]
                assert verdict["enough_data"] and not verdict["detected"], verdict
                assert len(verdict["replicas"]) == 3
                # The same stream through one in-process server: the rows it needs.
                _feed(reference, single, warm)
                single_rows = _feed(reference, single, drifted)
                assert single_rows is not None
                onset, fleet_rows = sent, None
                for start in range(0, len(drifted), 60):
                    sent = _send(client, replicas, drifted[start : start + 60], sent)
                    verdict = _wait_judged(leader, sent)
                    if verdict["detected"]:
                        fleet_rows = sent - onset
                        break
            assert fleet_rows is not None, "the fleet never flagged the shift"
            assert verdict["drifted_features"] == ["f1"], verdict
            # About the rows one server needs (60-row steps and the fleet's cadence aside).
            assert fleet_rows <= 1.5 * single_rows + 120, (fleet_rows, single_rows)
            print(f"\nfleet flagged after {fleet_rows} drifted rows; one server: {single_rows}")
            _wait(
                lambda: all(
                    (r.status()["fleet"]["drift"]["verdict"] or {}).get("detected")
                    for r in replicas
                ),
                5,
                "every replica reads the fleet's verdict",
            )
            for replica in replicas:
                assert _metric(replica.admin_port, "mlwarden_fleet_drift_detected") == 1.0
                assert _metric(replica.admin_port, "mlwarden_fleet_drift_replicas") == 3.0
            # Each replica's own verdict stays in its middleware's health report.
            for model in models:
                report = httpx.get(model.url + "/-/health", timeout=5).json()
                assert report["drift"]["evaluated"] is True
            time.sleep(1.0)
            stream = _stream(redis_server.url, fleet)
            detected = [r for r in stream if r["action"] == "fleet_drift_detected"]
            assert len(detected) == 1, detected
            assert detected[0]["replica"] == f"replica-{leader.index}"
            # The fleet policy on the fleet's verdict fired once, on the leader: one webhook.
            fired = [r for r in stream if r["action"] == "policy_fired"]
            assert [(r["policy"], r["replica"]) for r in fired] == [
                ("fleet-drift", f"replica-{leader.index}")
            ]
            _wait(lambda: len(received) >= 1, 5, "the policy's webhook")
            time.sleep(0.5)
            assert len(received) == 1, received
        finally:
            for replica in replicas:
                replica.proc.stop()


@contextlib.contextmanager
def _three_models(baseline: BaselineProfile) -> Iterator[list[ServedApp]]:
    """Three model servers, each with the middleware and the same baseline."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(serve_app(_monitored(baseline, drift_interval_s=0.5)))
            for _ in range(3)
        ]


def _send(client: httpx.Client, replicas: list[Replica], rows: list[dict], sent: int) -> int:
    for i in range(0, len(rows), 10):
        replica = replicas[(sent // 10) % len(replicas)]
        r = client.post(replica.url + "/predict", json={"instances": rows[i : i + 10]})
        assert r.status_code == 200, r.text
        sent += len(rows[i : i + 10])
    return sent


def _wait_judged(leader: Replica, rows: int) -> dict[str, Any]:
    """The leader's verdict once it counts every row sent (bounded wait)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        verdict = leader.status()["fleet"]["drift"]["verdict"]
        if verdict and verdict.get("rows_added", 0) >= rows:
            return verdict
        time.sleep(0.1)
    raise AssertionError(f"the leader's verdict never counted {rows} rows: {verdict}")


def _feed(windows: FeatureWindows, evaluator: DriftEvaluator, rows: list[dict]) -> int | None:
    """Feed rows 10 a request as the middleware would; rows until drift flagged (or None)."""
    for i in range(0, len(rows), 10):
        chunk = rows[i : i + 10]
        windows.add(FeatureBatch(len(chunk), {f: [r[f] for r in chunk] for f in FEATURES}, "json"))
        if evaluator.rows_until_due() == 0 and evaluator.evaluate().drift_detected:
            return i + len(chunk)
    return None


def test_fleet_drift_settings_are_checked() -> None:
    from mlwarden.middleware.errors import ConfigError
    from mlwarden.sidecar.config import SidecarConfig

    base = {
        "upstreams": {"model": "http://127.0.0.1:1"},
        "routing": {"primary": "model"},
    }
    redis_url = "redis://127.0.0.1:1/0"
    for fleet, expected in (
        ({"drift_upstream": "nosuch"}, "fleet.drift_upstream: unknown upstream 'nosuch'"),
        ({"drift_interval_s": 0}, "fleet.drift_interval_s: expected a number of seconds >= 0.1"),
        ({"drift": "yes please"}, "fleet.drift: expected"),
    ):
        with pytest.raises(ConfigError) as err:
            SidecarConfig.from_mapping(
                {**base, "fleet": {"redis_url": redis_url, **fleet}}, environ={}
            )
        assert expected in str(err.value)
