"""InfluxShipper and InfluxSettings, against the real victoria-metrics and small loopback stubs.

victoria-metrics serves the InfluxDB v2 write API; we read the points back through its
Prometheus-compatible export API (measurement ``m`` + field ``f`` -> series ``m_f``). Stub
servers stand in where a real server cannot be made to misbehave on cue (a fixed status, a
connection that never answers, a 400: victoria-metrics answers 204 to the malformed lines
we tried and only logs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import math
import selectors
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.middleware.drift import DriftReport, FeatureDrift, TestOutcome
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.influx import TOKEN_ENV, InfluxSettings, InfluxShipper
from mlwarden.middleware.metrics import MonitorMetrics
from tests.doubles import FakeClock
from tests.servers import LOOPBACK, VictoriaMetrics, free_port, start_victoria_metrics, temp_workdir

LOGGER = "mlwarden.influx"


# -- helpers ---------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, Any], *, timeout: float = 60.0) -> Any:
    """Run a test's coroutine with a deadline, so that a regression fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def now_s() -> float:
    """A recent evaluation time with a whole number of ms (victoria-metrics keeps ms)."""
    return round(time.time() - 60.0, 3)


def numeric(name: str = "age", **kw: Any) -> FeatureDrift:
    values: dict[str, Any] = dict(
        kind="numeric",
        rows=500,
        mean=41.25,
        null_ratio=0.02,
        scores={"psi": 0.31, "ks": 0.205},
        pvalues={"ks": 0.00125},
        tests={"location": TestOutcome("location", 250, 5.0, 4.0)},
        drifted=True,
        flagged_by=("location",),
    )
    values.update(kw)
    return FeatureDrift(name=name, **values)


def categorical(name: str = "country", **kw: Any) -> FeatureDrift:
    values: dict[str, Any] = dict(
        kind="categorical",
        rows=500,
        mean=None,
        null_ratio=0.0,
        scores={"chi2": 3.5},
        pvalues={"chi2": 0.62},
        tests={"chi2": TestOutcome("chi2", 250, 3.5, 14.0)},
        drifted=False,
    )
    values.update(kw)
    return FeatureDrift(name=name, **values)


def make_report(
    evaluated_at: float | None = None,
    features: tuple[FeatureDrift, ...] | None = None,
    rows: int = 500,
    enough_data: bool = True,
) -> DriftReport:
    return DriftReport(
        evaluated_at=now_s() if evaluated_at is None else evaluated_at,
        rows=rows,
        enough_data=enough_data,
        features=(numeric(), categorical()) if features is None else features,
    )


@dataclass
class Rig:
    shipper: InfluxShipper
    registry: CollectorRegistry
    model: str
    version: str = "v1"

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(
            name, {"model": self.model, "version": self.version, **labels}
        )
        return 0.0 if v is None else v

    @property
    def written(self) -> float:
        return self.value("mlwarden_influx_points_written_total")

    def dropped(self, reason: str) -> float:
        return self.value("mlwarden_influx_points_dropped_total", reason=reason)

    @property
    def errors(self) -> float:
        return self.value("mlwarden_influx_write_errors_total")

    @property
    def gauge(self) -> float:
        return self.value("mlwarden_influx_buffer_points")

    @property
    def writes_timed(self) -> float:
        return self.value("mlwarden_influx_write_duration_seconds_count")


def rig(url: str, *, clock: Callable[[], float] = time.time, **settings: Any) -> Rig:
    """A shipper with its own registry and a model name unique to the test."""
    registry = CollectorRegistry()
    model = f"m-{uuid.uuid4().hex[:10]}"
    shipper = InfluxShipper(
        InfluxSettings(url=url, bucket="stats", **settings),
        model=model,
        version="v1",
        metrics=MonitorMetrics(registry),
        clock=clock,
    )
    return Rig(shipper, registry, model)


def export(vm: VictoriaMetrics, match: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=5) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


def wait_series(
    vm: VictoriaMetrics, match: str, *, count: int, samples: int = 1, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Poll the export API until ``count`` series with ``samples`` samples each are there."""
    deadline = time.monotonic() + timeout
    series: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        vm.flush()
        series = export(vm, match)
        if len(series) >= count and all(len(s["values"]) >= samples for s in series):
            return series
        time.sleep(0.1)
    raise AssertionError(f"expected {count} series for {match} within {timeout}s, got {series}")


def as_table(
    series: list[dict[str, Any]],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, int]]]:
    """series -> {(name, sorted labels): [(value, timestamp_ms), ...]}."""
    out = {}
    for s in series:
        labels = dict(s["metric"])
        name = labels.pop("__name__")
        out[(name, tuple(sorted(labels.items())))] = list(
            zip(s["values"], s["timestamps"], strict=True)
        )
    return out


@dataclass
class Captured:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: str


@dataclass
class StubInflux:
    """A loopback HTTP server answering every write with a fixed status; records requests."""

    url: str
    status: list[int]
    requests: list[Captured] = field(default_factory=list)


@contextlib.contextmanager
def stub_influx(status: int = 204) -> Iterator[StubInflux]:
    stub = StubInflux(url="", status=[status])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            url = urllib.parse.urlsplit(self.path)
            stub.requests.append(
                Captured(url.path, urllib.parse.parse_qs(url.query), dict(self.headers), body)
            )
            code = stub.status[0]
            payload = (
                b""
                if code == 204
                else json.dumps({"code": "invalid", "message": f"stub says {code}"}).encode()
            )
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="stub-influx", daemon=True
    )
    thread.start()
    stub.url = f"http://{LOOPBACK}:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class SilentServer:
    """Accepts TCP connections and never answers; tracks how many are open at once."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.open_now = 0
        self.max_open = 0
        self.accepted = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                events = sel.select(timeout=0.02)
                # Closed connections first: a client that closed one connection and then
                # opened the next must not look like two at once.
                for key, _ in sorted(events, key=lambda e: e[0].fileobj is self.listener):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                        self._conns.append(conn)
                        self.accepted += 1
                        self.open_now += 1
                        self.max_open = max(self.max_open, self.open_now)
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:  # the client gave up: forget the connection
                        sel.unregister(sock)
                        sock.close()
                        self._conns.remove(sock)
                        self.open_now -= 1
        finally:
            for conn in self._conns:
                conn.close()
            sel.close()
            self.listener.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


# -- settings --------------------------------------------------------------------------------

BASE = {"url": "http://127.0.0.1:8086", "bucket": "stats"}


def test_settings_defaults_and_repr_hides_the_token() -> None:
    s = InfluxSettings(**BASE, token="s3cret")
    assert (s.measurement, s.summary_measurement) == (
        "mlwarden_feature",
        "mlwarden_feature_summary",
    )
    assert (s.interval_s, s.timeout_s, s.max_buffer_points, s.max_batch_points) == (
        10.0,
        5.0,
        10_000,
        5_000,
    )
    assert "s3cret" not in repr(s)
    assert "http://127.0.0.1:8086" in repr(s)


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("url", "ftp://127.0.0.1:8086", "influx.url: must be an http:// or https:// URL"),
        ("url", "127.0.0.1:8086", "influx.url: must be an http:// or https:// URL"),
        ("url", "http://", "influx.url: must be an http:// or https:// URL"),
        ("url", "http://127.0.0.1:notaport", "influx.url: must be an http(s) URL"),
        ("url", "http://user:pw@127.0.0.1:8086", "influx.url: must not contain credentials"),
        ("url", "http://127.0.0.1:8086/?org=x", "influx.url: must not have a query"),
        ("url", 8086, "influx.url: must be a string"),
        ("bucket", "", "influx.bucket: must be a non-empty string"),
        ("bucket", "  ", "influx.bucket: must be a non-empty string"),
        ("token", 123, "influx.token: must be a string"),
        ("org", None, "influx.org: must be a string"),
        ("measurement", "", "influx.measurement: must start with a letter"),
        ("measurement", "feature stats", "influx.measurement: must start with a letter"),
        ("measurement", "_internal", "influx.measurement: must start with a letter"),
        ("interval_s", 0, "influx.interval_s: must be > 0, got 0"),
        ("interval_s", -1.5, "influx.interval_s: must be > 0, got -1.5"),
        ("interval_s", math.inf, "influx.interval_s: must be a finite number"),
        ("interval_s", "10", "influx.interval_s: must be a finite number"),
        ("interval_s", True, "influx.interval_s: must be a finite number"),
        ("timeout_s", 0.0, "influx.timeout_s: must be > 0, got 0.0"),
        ("timeout_s", 0.0001, "influx.timeout_s: must be >= 0.001"),
        ("timeout_s", math.nan, "influx.timeout_s: must be a finite number"),
        ("max_buffer_points", 0, "influx.max_buffer_points: must be >= 1, got 0"),
        ("max_buffer_points", 10.0, "influx.max_buffer_points: must be an integer"),
        ("max_batch_points", -5, "influx.max_batch_points: must be >= 1, got -5"),
        ("max_batch_points", True, "influx.max_batch_points: must be an integer"),
    ],
)
def test_each_bad_setting_is_named(key: str, value: object, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        InfluxSettings(**{**BASE, key: value})
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(expect), info.value.problems[0]


def test_a_batch_larger_than_the_buffer_is_allowed() -> None:
    # Lowering the buffer alone must not force the operator to lower the batch too.
    s = InfluxSettings(**BASE, max_buffer_points=100)
    assert (s.max_buffer_points, s.max_batch_points) == (100, 5_000)


def test_from_mapping_names_unknown_and_missing_keys_and_every_bad_value() -> None:
    with pytest.raises(ConfigError) as info:
        InfluxSettings.from_mapping(
            {"urll": "http://x", "intervl_s": 5, "interval_s": 0, "timeout_s": -1},
            environ={},
        )
    problems = info.value.problems
    assert any(p.startswith("influx.urll: unknown key (allowed: url, bucket,") for p in problems)
    assert any(p.startswith("influx.intervl_s: unknown key") for p in problems)
    assert "influx.url: required" in problems
    assert "influx.bucket: required" in problems
    assert "influx.interval_s: must be > 0, got 0" in problems
    assert "influx.timeout_s: must be > 0, got -1" in problems
    assert len(problems) == 6
    assert "influx.urll" in str(info.value)


def test_from_mapping_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match="influx: expected a mapping"):
        InfluxSettings.from_mapping(["http://x"], environ={})  # type: ignore[arg-type]


def test_from_mapping_reads_every_key() -> None:
    s = InfluxSettings.from_mapping(
        {
            "url": "https://influx.example:8086/prefix",
            "bucket": "b",
            "token": "t",
            "org": "o",
            "measurement": "feat",
            "interval_s": 2,
            "timeout_s": 0.5,
            "max_buffer_points": 50,
            "max_batch_points": 20,
        },
        environ={TOKEN_ENV: "from-env"},
    )
    assert s == InfluxSettings(
        url="https://influx.example:8086/prefix",
        bucket="b",
        token="t",
        org="o",
        measurement="feat",
        interval_s=2,
        timeout_s=0.5,
        max_buffer_points=50,
        max_batch_points=20,
    )


@pytest.mark.parametrize("given", [{}, {"token": None}, {"token": ""}])
def test_token_comes_from_the_environment_when_not_given(given: dict[str, Any]) -> None:
    s = InfluxSettings.from_mapping({**BASE, **given}, environ={TOKEN_ENV: "from-env"})
    assert s.token == "from-env"


def test_a_configured_token_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert InfluxSettings.from_mapping({**BASE, "token": "own"}).token == "own"
    assert InfluxSettings.from_mapping(BASE).token == "from-env"  # os.environ by default
    monkeypatch.delenv(TOKEN_ENV)
    assert InfluxSettings.from_mapping(BASE).token == ""


# -- points (what goes over the wire) ---------------------------------------------------------


def test_points_are_line_protocol_with_explicit_ns_timestamps_and_auth() -> None:
    async def main() -> None:
        with stub_influx() as stub:
            r = rig(stub.url, token="tok", org="acme")
            r.shipper.submit(make_report(1_795_000_000.123456))
            await r.shipper.flush()
            await r.shipper.aclose()
            (req,) = stub.requests
            assert req.path == "/api/v2/write"
            assert req.query == {"org": ["acme"], "bucket": ["stats"], "precision": ["ns"]}
            assert req.headers["Authorization"] == "Token tok"
            ts = "1795000000123456000"
            m = r.model
            assert req.body.split("\n") == [
                f"mlwarden_feature,feature=age,kind=numeric,model={m},version=v1 rows=500i,"
                f"null_ratio=0.02,mean=41.25,psi=0.31,ks=0.205,ks_pvalue=0.00125,"
                f"location_ratio=1.25,drifted=1i {ts}",
                f"mlwarden_feature,feature=country,kind=categorical,model={m},version=v1 "
                f"rows=500i,null_ratio=0,chi2=3.5,chi2_pvalue=0.62,chi2_ratio=0.25,"
                f"drifted=0i {ts}",
                f"mlwarden_feature_summary,model={m},version=v1 rows=500i,features=2i,"
                f"drifted_features=1i,drift_detected=1i,enough_data=1i {ts}",
            ]
            assert r.written == 3

    run(main())


def test_non_finite_and_missing_values_are_left_out_and_numpy_scalars_are_numbers() -> None:
    features = (
        numeric(
            "a",
            mean=math.nan,
            null_ratio=math.inf,
            scores={"psi": np.float64(0.5), "ks": -math.inf},
            pvalues={"ks": math.nan},
            tests={"shape": TestOutcome("shape", 250, math.nan, 0.1)},
            drifted=False,
        ),
        numeric(
            "b",
            rows=np.int64(7),
            mean=np.float32(2.5),
            scores={"ks": 1 / 3},
            pvalues={"ks": 1e-300},
            tests={},
        ),
        numeric("c", mean=None, null_ratio=None, scores={"psi": "n/a"}, pvalues={}, tests={}),
    )

    async def main() -> None:
        with stub_influx() as stub:
            r = rig(stub.url)
            r.shipper.submit(make_report(1_795_000_000.5, features, enough_data=False))
            await r.shipper.flush()
            await r.shipper.aclose()
            fields = [line.split(" ")[1] for line in stub.requests[0].body.split("\n")]
            assert fields == [
                "rows=500i,psi=0.5,drifted=0i",
                # 12 significant digits; integral values stay floats (no "i" suffix)
                "rows=7i,null_ratio=0.02,mean=2.5,ks=0.333333333333,ks_pvalue=1e-300,drifted=1i",
                "rows=500i,drifted=1i",
                "rows=500i,features=3i,drifted_features=2i,drift_detected=1i,enough_data=0i",
            ]

    run(main())


def test_tag_values_are_escaped_and_empty_ones_left_out() -> None:
    async def main() -> None:
        with stub_influx() as stub:
            registry = CollectorRegistry()
            shipper = InfluxShipper(
                InfluxSettings(url=stub.url, bucket="b"),
                model="fraud model",
                version="",
                metrics=MonitorMetrics(registry),
            )
            shipper.submit(make_report(1_795_000_000.0, (categorical("width,cm=x y\\"),)))
            await shipper.flush()
            await shipper.aclose()
            lines = stub.requests[0].body.split("\n")
            assert lines[0].startswith(
                "mlwarden_feature,feature=width\\,cm\\=x\\ y\\\\,kind=categorical,"
                "model=fraud\\ model rows="
            )
            assert lines[1].startswith("mlwarden_feature_summary,model=fraud\\ model rows=")

    run(main())


# -- against the real victoria-metrics --------------------------------------------------------


@pytest.mark.servers
def test_points_arrive_in_victoria_metrics_with_exact_values_labels_and_times(
    victoria_metrics: VictoriaMetrics,
) -> None:
    vm = victoria_metrics
    at = now_s()
    features = (
        numeric("age"),
        categorical("petal width,cm=x"),  # escaping survives the round trip
        numeric(
            "income",
            mean=None,
            scores={"psi": math.nan, "ks": 0.0},
            pvalues={"ks": 1.0},
            tests={},
            drifted=False,
            null_ratio=1.0,
            rows=3,
        ),
    )

    async def main() -> Rig:
        r = rig(vm.url)
        r.shipper.submit(make_report(at, features, rows=503))
        await r.shipper.flush()
        await r.shipper.aclose()
        return r

    r = run(main())
    assert (r.written, r.errors, r.gauge, r.writes_timed) == (4, 0, 0, 1)
    ms = round(at * 1000)
    mv = (("model", r.model), ("version", "v1"))

    def feat(name: str, kind: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((("feature", name), ("kind", kind), *mv)))

    age, width, income = (
        feat("age", "numeric"),
        feat("petal width,cm=x", "categorical"),
        feat("income", "numeric"),
    )
    expected = {
        ("mlwarden_feature_rows", age): 500,
        ("mlwarden_feature_null_ratio", age): 0.02,
        ("mlwarden_feature_mean", age): 41.25,
        ("mlwarden_feature_psi", age): 0.31,
        ("mlwarden_feature_ks", age): 0.205,
        ("mlwarden_feature_ks_pvalue", age): 0.00125,
        ("mlwarden_feature_location_ratio", age): 1.25,
        ("mlwarden_feature_drifted", age): 1,
        ("mlwarden_feature_rows", width): 500,
        ("mlwarden_feature_null_ratio", width): 0,
        ("mlwarden_feature_chi2", width): 3.5,
        ("mlwarden_feature_chi2_pvalue", width): 0.62,
        ("mlwarden_feature_chi2_ratio", width): 0.25,
        ("mlwarden_feature_drifted", width): 0,
        ("mlwarden_feature_rows", income): 3,
        ("mlwarden_feature_null_ratio", income): 1,
        ("mlwarden_feature_ks", income): 0,
        ("mlwarden_feature_ks_pvalue", income): 1,
        ("mlwarden_feature_drifted", income): 0,
        ("mlwarden_feature_summary_rows", mv): 503,
        ("mlwarden_feature_summary_features", mv): 3,
        ("mlwarden_feature_summary_drifted_features", mv): 1,
        ("mlwarden_feature_summary_drift_detected", mv): 1,
        ("mlwarden_feature_summary_enough_data", mv): 1,
    }
    series = wait_series(vm, f'{{model="{r.model}"}}', count=len(expected))
    assert as_table(series) == {k: [(v, ms)] for k, v in expected.items()}


@pytest.mark.servers
def test_with_the_server_down_points_stay_bounded_and_are_written_after_it_returns() -> None:
    workdir = temp_workdir("influx-down")
    vm = start_victoria_metrics(workdir)
    port = vm.port
    vm.process.stop()
    limit, timeout_s = 500, 1.0
    base = now_s() - 30.0
    reports = [
        make_report(
            round(base + i * 0.01, 3),
            (numeric("a"), numeric("b"), categorical("c"), categorical("d")),
        )
        for i in range(1_000)
    ]  # 5 points each

    async def main() -> Rig:
        nonlocal vm
        r = rig(vm.url, max_buffer_points=limit, timeout_s=timeout_s)
        s = r.shipper
        highest = 0
        start = time.perf_counter()
        for report in reports:
            s.submit(report)
            highest = max(highest, s.buffered)
        mean_s = (time.perf_counter() - start) / len(reports)
        assert mean_s < 200e-6, f"submit took {mean_s * 1e6:.1f} us on average"
        assert highest == limit
        assert r.dropped("buffer_full") == 5 * 1_000 - limit
        assert r.gauge == limit

        for attempt in range(1, 3):
            start = time.perf_counter()
            await s.flush()
            assert time.perf_counter() - start < timeout_s + 1.0
            assert (r.errors, s.buffered, r.written, r.gauge) == (attempt, limit, 0, limit)

        vm = await asyncio.to_thread(start_victoria_metrics, workdir, port)
        await s.flush()
        assert (r.written, s.buffered, r.gauge, r.errors) == (limit, 0, 0, 2)
        await s.aclose()
        return r

    try:
        r = run(main())
        # The newest 100 reports survived: exactly their timestamps, in order.
        series = wait_series(
            vm, f'mlwarden_feature_summary_rows{{model="{r.model}"}}', count=1, samples=100
        )
        assert series[0]["timestamps"] == [round(rep.evaluated_at * 1000) for rep in reports[-100:]]
        assert r.dropped("shutdown") == 0
    finally:
        vm.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- failure handling with stub servers ------------------------------------------------------


def test_the_event_loop_keeps_running_while_a_write_hangs() -> None:
    timeout_s = 1.0

    async def main() -> None:
        with SilentServer() as silent:
            r = rig(silent.url, timeout_s=timeout_s)
            r.shipper.submit(make_report())
            gaps: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.create_task(ticker())
            start = time.perf_counter()
            await r.shipper.flush()
            elapsed = time.perf_counter() - start
            done.set()
            await tick
            assert silent.accepted == 1
            assert timeout_s * 0.8 <= elapsed < timeout_s + 1.0, elapsed
            assert len(gaps) > 50 and max(gaps) < 0.2, max(gaps)
            assert (r.errors, r.shipper.buffered, r.written, r.writes_timed) == (1, 3, 0, 1)
            await r.shipper.aclose(timeout_s=0.2)

    run(main())


def test_at_most_one_write_is_in_flight() -> None:
    async def main() -> None:
        with SilentServer() as silent:
            r = rig(silent.url, timeout_s=0.3, interval_s=0.01, max_batch_points=1)
            for _ in range(3):
                r.shipper.submit(make_report())
            runner = asyncio.create_task(r.shipper.run())
            await asyncio.gather(r.shipper.flush(), r.shipper.flush(), r.shipper.flush())
            await wait_until(lambda: r.errors >= 5)
            await r.shipper.aclose(timeout_s=0.1)
            assert await asyncio.wait_for(runner, 5) is None
            assert silent.accepted >= 5
            assert silent.max_open == 1

    run(main())


@pytest.mark.parametrize("status", [400, 422])
def test_a_batch_the_server_calls_bad_is_dropped_as_rejected(status: int) -> None:
    async def main() -> None:
        with stub_influx(status) as stub:
            r = rig(stub.url)
            r.shipper.submit(make_report())
            await r.shipper.flush()
            assert (r.dropped("rejected"), r.errors, r.written) == (3, 0, 0)
            assert (r.shipper.buffered, r.gauge) == (0, 0)
            assert str(r.shipper.status().last_error).startswith(f"HTTP {status}")
            await r.shipper.aclose()

    run(main())


@pytest.mark.parametrize("status", [401, 404, 429, 500, 503])
def test_other_http_errors_keep_the_points_for_the_next_attempt(status: int) -> None:
    async def main() -> None:
        with stub_influx(status) as stub:
            r = rig(stub.url)
            r.shipper.submit(make_report())
            await r.shipper.flush()
            assert (r.errors, r.shipper.buffered, r.gauge, r.dropped("rejected")) == (1, 3, 3, 0)
            info = r.shipper.status()
            assert (info.buffered_points, info.consecutive_failures) == (3, 1)
            assert info.last_error is not None and info.last_error.startswith(f"HTTP {status}")
            json.dumps(info.to_dict(), allow_nan=False)  # served in the health report as is
            stub.status[0] = 204
            await r.shipper.flush()
            assert (r.written, r.shipper.buffered, r.gauge) == (3, 0, 0)
            assert len(stub.requests) == 2 and stub.requests[0].body == stub.requests[1].body
            await r.shipper.aclose()

    run(main())


def test_failures_are_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1_000_000.0)

    async def main() -> None:
        with stub_influx(503) as stub:
            r = rig(stub.url, clock=clock)
            r.shipper.submit(make_report())
            for _ in range(3):
                await r.shipper.flush()
                clock.now += 10.0  # three intervals of 10 s: one warning
            clock.now += 31.0
            await r.shipper.flush()  # a minute after the first: the next warning
            assert r.errors == 4
            stub.status[0] = 204
            await r.shipper.flush()
            await r.shipper.aclose()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(main())
    records = [rec for rec in caplog.records if rec.name == LOGGER]
    warnings = [rec.getMessage() for rec in records if rec.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "HTTP 503" in warnings[0] and "3 points kept" in warnings[0]
    assert "2 similar messages suppressed" in warnings[1]
    assert any("recovered after 4 failed attempts" in rec.getMessage() for rec in records)


def test_submit_never_raises() -> None:
    async def main() -> None:
        r = rig(f"http://{LOOPBACK}:{free_port()}")
        r.shipper.submit(object())  # type: ignore[arg-type]
        r.shipper.submit(make_report(evaluated_at=math.nan))
        assert r.shipper.buffered == 0
        r.shipper.submit(make_report())
        assert r.shipper.buffered == 3
        await r.shipper.aclose(timeout_s=0.5)

    run(main())


def test_the_buffer_drops_the_oldest_points_and_counts_them() -> None:
    async def main() -> None:
        with stub_influx() as stub:
            r = rig(stub.url, max_buffer_points=4)
            for i in range(3):  # 3 points each: 9 in, 5 dropped
                r.shipper.submit(make_report(1_795_000_000.0 + i))
            assert (r.shipper.buffered, r.gauge, r.dropped("buffer_full")) == (4, 4, 5)
            await r.shipper.flush()
            await r.shipper.aclose()
            times = [line.rsplit(" ", 1)[1] for line in stub.requests[0].body.split("\n")]
            assert times == ["1795000001000000000"] + ["1795000002000000000"] * 3

    run(main())


def test_points_submitted_during_a_write_respect_the_bound() -> None:
    async def main() -> None:
        with SilentServer() as silent:
            r = rig(silent.url, max_buffer_points=6, timeout_s=0.5)
            r.shipper.submit(make_report())
            flushing = asyncio.create_task(r.shipper.flush())
            await wait_until(lambda: silent.accepted == 1)
            for _ in range(3):  # 3 in flight + 9 new, bound 6: 6 of the new are dropped
                r.shipper.submit(make_report())
                assert r.shipper.buffered <= 6
            assert r.dropped("buffer_full") == 6
            await flushing  # the failed batch goes back in front, still within the bound
            assert (r.shipper.buffered, r.gauge, r.errors) == (6, 6, 1)
            await r.shipper.aclose(timeout_s=0.1)

    run(main())


# -- run() and aclose() ----------------------------------------------------------------------


def test_run_writes_one_batch_per_interval_and_aclose_stops_it() -> None:
    async def main() -> None:
        with stub_influx() as stub:
            r = rig(stub.url, interval_s=0.05, max_batch_points=2)
            r.shipper.submit(make_report())  # 3 points: two ticks
            runner = asyncio.create_task(r.shipper.run())
            await wait_until(lambda: r.written == 3)
            assert [len(req.body.split("\n")) for req in stub.requests] == [2, 1]
            await r.shipper.aclose()
            assert await asyncio.wait_for(runner, 5) is None  # returned, not cancelled
            assert r.shipper.status().buffered_points == 0

    run(main())


def test_cancelling_the_run_task_propagates() -> None:
    async def main() -> None:
        with stub_influx() as stub:
            r = rig(stub.url, interval_s=0.05)
            runner = asyncio.create_task(r.shipper.run())
            await asyncio.sleep(0.01)
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
            await r.shipper.aclose()

    run(main())


def test_aclose_makes_a_last_flush() -> None:
    async def main() -> None:
        with stub_influx() as stub:
            r = rig(stub.url)
            r.shipper.submit(make_report())
            await r.shipper.aclose()
            assert (r.written, r.dropped("shutdown"), r.gauge) == (3, 0, 0)
            r.shipper.submit(make_report())  # after close: counted, not buffered
            assert (r.shipper.buffered, r.dropped("shutdown")) == (0, 3)

    run(main())


def test_aclose_is_bounded_while_a_write_hangs_and_counts_what_is_lost() -> None:
    async def main() -> None:
        silent = SilentServer().__enter__()
        try:
            r = rig(silent.url, timeout_s=5.0, max_batch_points=2)
            r.shipper.submit(make_report())  # 3 points: 2 go in flight, 1 stays buffered
            start = time.perf_counter()
            await r.shipper.aclose(timeout_s=0.3)
            assert time.perf_counter() - start < 0.3 + 0.3
            assert r.dropped("shutdown") == 1
            assert r.gauge == 2  # still in flight
        finally:
            silent.close()  # the hanging write now fails: its 2 points are lost too
        await wait_until(lambda: r.dropped("shutdown") == 3)
        assert (r.errors, r.gauge, r.written) == (1, 0, 0)

    run(main())
