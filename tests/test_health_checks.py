"""Active health checks against real upstream servers on loopback (uvicorn in a thread).

The loop is stepped with ``check_once()``; nothing waits for a real interval.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.health_report import HealthReport
from mlwarden.sidecar.config import SidecarConfig, UpstreamConfig
from mlwarden.sidecar.routing.health_checks import HealthChecker
from tests.doubles import raising, recording
from tests.servers import free_port, serve_app

HANG_S = 3.0  # the hanging endpoint's bounded sleep: longer than any probe, shorter than a test


class Holder:
    """What the test app answers; the test thread switches it, the server thread reads it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.status = "ok"
        self.reasons: list[str] = []
        self.drifted: list[str] = []
        self.report_code: int | None = None  # None: 503 when failing, else 200, as the middleware
        self.plain_code = 200
        self.hits = 0


def _app(holder: Holder) -> Starlette:
    async def report(request: Request) -> Response:
        holder.hits += 1
        body = {
            "status": holder.status,
            "reasons": holder.reasons,
            "model": {"name": "m", "version": "1"},
            "window": {"requests": 10, "errors": 0, "error_rate": 0.0},
            "drift": {
                "evaluated": True,
                "detected": bool(holder.drifted),
                "drifted_features": holder.drifted,
            },
        }
        code = holder.report_code
        if code is None:
            code = 503 if holder.status == "failing" else 200
        return JSONResponse(body, status_code=code)

    async def plain(request: Request) -> Response:
        holder.hits += 1
        return PlainTextResponse(
            "fine" if holder.plain_code < 300 else "broken", status_code=holder.plain_code
        )

    async def other_json(request: Request) -> Response:
        return JSONResponse({"status": "UP"}, status_code=holder.plain_code)

    async def hang(request: Request) -> Response:
        await asyncio.sleep(HANG_S)
        return PlainTextResponse("late")

    return Starlette(
        routes=[
            Route("/-/health", report),
            Route("/plain", plain),
            Route("/other-json", other_json),
            Route("/hang", hang),
        ]
    )


_HOLDER = Holder()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with serve_app(_app(_HOLDER), timeout_graceful_shutdown=1) as served:
        yield served.url


@pytest.fixture
def holder(server_url: str) -> Iterator[Holder]:
    _HOLDER.reset()
    yield _HOLDER
    _HOLDER.reset()


def _checker(upstreams: Any, **kw: Any) -> HealthChecker:
    options: dict[str, Any] = {
        "interval_s": 5.0,
        "timeout_s": 1.0,
        "healthy_threshold": 2,
        "unhealthy_threshold": 3,
    }
    return HealthChecker(upstreams, **{**options, **kw})


def _steps(checker: HealthChecker, n: int, name: str = "m") -> list[bool]:
    """Run ``n`` rounds of checks in one event loop; is_healthy(name) after each."""

    async def go() -> list[bool]:
        async with checker:
            out = []
            for _ in range(n):
                await checker.check_once()
                out.append(checker.is_healthy(name))
            return out

    return asyncio.run(go())


# -- thresholds -------------------------------------------------------------------------------


def test_upstream_leaves_rotation_only_after_unhealthy_threshold_failures(
    server_url: str, holder: Holder
) -> None:
    holder.status = "failing"
    checker = _checker({"m": server_url}, unhealthy_threshold=3)
    assert _steps(checker, 4) == [True, True, False, False]
    assert checker.state("m").consecutive_failures == 4
    assert checker.state("m").last_status_code == 503


def test_upstream_returns_only_after_healthy_threshold_passes(
    server_url: str, holder: Holder
) -> None:
    checker = _checker({"m": server_url}, unhealthy_threshold=1, healthy_threshold=2)

    async def go() -> list[bool]:
        seen = []
        async with checker:
            for status in ["failing", "ok", "failing", "ok", "ok", "ok"]:
                holder.status = status
                await checker.check_once()
                seen.append(checker.is_healthy("m"))
        return seen

    # One pass is not enough; a failure in between resets the count of passes.
    assert asyncio.run(go()) == [False, False, False, False, True, True]


def test_a_failure_between_passes_does_not_count_towards_unhealthy(
    server_url: str, holder: Holder
) -> None:
    checker = _checker({"m": server_url}, unhealthy_threshold=2)

    async def go() -> list[bool]:
        seen = []
        async with checker:
            for status in ["failing", "ok", "failing", "ok", "failing", "failing"]:
                holder.status = status
                await checker.check_once()
                seen.append(checker.is_healthy("m"))
        return seen

    assert asyncio.run(go()) == [True, True, True, True, True, False]


def test_with_initial_healthy_false_the_first_pass_admits_the_upstream(
    server_url: str, holder: Holder
) -> None:
    checker = _checker({"m": server_url}, initial_healthy=False, healthy_threshold=3)
    assert checker.is_healthy("m") is False
    assert _steps(checker, 1) == [True]


# -- the verdict of one probe -----------------------------------------------------------------


def test_degraded_report_keeps_the_upstream_healthy_and_exposes_the_drift(
    server_url: str, holder: Holder
) -> None:
    holder.status = "degraded"
    holder.reasons = ["drift in age"]
    holder.drifted = ["age"]
    checker = _checker({"m": server_url}, unhealthy_threshold=1)
    assert _steps(checker, 2) == [True, True]
    state = checker.state("m")
    assert state.degraded is True
    assert state.last_report is not None
    assert state.last_report.status == "degraded"
    assert state.last_report.reasons == ("drift in age",)
    assert state.last_report.drift_detected is True
    assert state.last_report.drifted_features == ("age",)
    assert state.last_reason == "report degraded: drift in age"


def test_failing_report_fails_with_its_503(server_url: str, holder: Holder) -> None:
    holder.status = "failing"
    holder.reasons = ["error rate 0.5 above 0.2"]
    checker = _checker({"m": server_url}, unhealthy_threshold=1)
    assert _steps(checker, 1) == [False]
    state = checker.state("m")
    assert state.last_status_code == 503
    assert state.last_reason == "report failing: error rate 0.5 above 0.2"
    assert "1 consecutive failed checks: report failing" in state.history[-1].reason


def test_failing_report_fails_even_when_served_with_200(server_url: str, holder: Holder) -> None:
    holder.status = "failing"
    holder.report_code = 200
    checker = _checker({"m": server_url}, unhealthy_threshold=1)
    assert _steps(checker, 1) == [False]


def test_ok_report_on_an_error_status_fails(server_url: str, holder: Holder) -> None:
    holder.status = "ok"
    holder.report_code = 500
    checker = _checker({"m": server_url}, unhealthy_threshold=1)
    assert _steps(checker, 1) == [False]
    assert checker.state("m").last_reason == "report ok but HTTP 500"


def test_without_read_health_report_only_the_status_code_counts(
    server_url: str, holder: Holder
) -> None:
    holder.status = "failing"
    holder.report_code = 200
    checker = _checker({"m": server_url}, unhealthy_threshold=1, read_health_report=False)
    assert _steps(checker, 1) == [True]
    assert checker.state("m").last_report is None


@pytest.mark.parametrize(
    ("code", "healthy"), [(200, True), (204, True), (500, False), (404, False), (302, False)]
)
def test_plain_endpoint_is_judged_by_status_code(
    server_url: str, holder: Holder, code: int, healthy: bool
) -> None:
    holder.plain_code = code
    up = UpstreamConfig(name="m", url=server_url, health_path="/plain")
    checker = _checker([up], unhealthy_threshold=1)
    assert _steps(checker, 1) == [healthy]
    assert checker.state("m").last_status_code == code
    assert checker.state("m").last_report is None
    assert holder.hits == 1


@pytest.mark.parametrize(("code", "healthy"), [(200, True), (503, False)])
def test_json_in_another_health_format_is_judged_by_status_code(
    server_url: str, holder: Holder, code: int, healthy: bool
) -> None:
    holder.plain_code = code
    checker = _checker({"m": server_url}, health_path="/other-json", unhealthy_threshold=1)
    assert _steps(checker, 1) == [healthy]
    assert checker.state("m").last_report is None


def test_a_hanging_upstream_fails_within_timeout_and_does_not_delay_the_others(
    server_url: str, holder: Holder
) -> None:
    ups = {
        "hang": UpstreamConfig(name="hang", url=server_url, health_path="/hang"),
        "m": UpstreamConfig(name="m", url=server_url),
    }
    checker = _checker(ups, timeout_s=0.3, interval_s=1.0, unhealthy_threshold=1)

    async def go() -> tuple[float, dict[str, Any]]:
        async with checker:
            started = time.monotonic()
            results = await checker.check_once()
            return time.monotonic() - started, results

    elapsed, results = asyncio.run(go())
    assert 0.25 <= elapsed < 0.3 + 0.5
    assert results["hang"].passed is False
    assert results["hang"].reason == "timeout after 0.3s"
    assert results["m"].passed is True
    assert checker.is_healthy("hang") is False
    assert checker.is_healthy("m") is True
    assert checker.state("hang").last_error == "timeout"


def test_connection_refused_counts_as_failure(holder: Holder) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    checker = _checker({"m": url}, unhealthy_threshold=2, timeout_s=2.0)

    async def go() -> tuple[float, list[bool]]:
        async with checker:
            started = time.monotonic()
            seen = []
            for _ in range(2):
                await checker.check_once()
                seen.append(checker.is_healthy("m"))
            return time.monotonic() - started, seen

    elapsed, seen = asyncio.run(go())
    assert seen == [True, False]
    assert elapsed < 2.0  # refused at once, not timed out
    state = checker.state("m")
    assert state.last_status_code is None
    assert state.last_reason == "connect error"
    assert state.last_error is not None and state.last_error.startswith("connect error")


# -- listeners, snapshot, loop ----------------------------------------------------------------


def test_listeners_are_called_once_per_transition(server_url: str, holder: Holder) -> None:
    calls: list[tuple[str, bool, str]] = []
    checker = _checker(
        {"m": server_url},
        unhealthy_threshold=2,
        healthy_threshold=2,
        listeners=[recording("health_changed", calls), raising("health_changed")],
    )

    async def go() -> None:
        async with checker:
            for status in ["failing"] * 5 + ["ok"] * 4:
                holder.status = status
                await checker.check_once()

    asyncio.run(go())
    assert [(n, h) for n, h, _ in calls] == [("m", False), ("m", True)]
    assert calls[0][2].startswith("2 consecutive failed checks: report failing")
    assert calls[1][2] == "2 consecutive passed checks: report ok"
    assert [t.healthy for t in checker.state("m").history] == [False, True]


def test_snapshot_is_json_ready_and_describes_each_upstream(
    server_url: str, holder: Holder
) -> None:
    now = [100.0]
    down = f"http://127.0.0.1:{free_port()}"
    checker = _checker({"m": server_url, "down": down}, unhealthy_threshold=1, clock=lambda: now[0])
    holder.status = "degraded"
    holder.reasons = ["p99 latency (s) 0.6 above 0.5"]

    async def go() -> None:
        async with checker:
            await checker.check_once()

    before = checker.snapshot()
    assert before["upstreams"]["m"]["checked"] is False
    assert before["upstreams"]["m"]["healthy"] is True
    asyncio.run(go())
    now[0] = 107.5
    snap = json.loads(json.dumps(checker.snapshot()))
    assert snap["interval_s"] == 5.0
    assert snap["unhealthy_threshold"] == 1
    m = snap["upstreams"]["m"]
    assert m["url"] == server_url + "/-/health"
    assert m["healthy"] is True and m["degraded"] is True and m["checked"] is True
    assert m["last_status_code"] == 200
    report = m["last_report"]
    assert (report["status"], report["reasons"]) == ("degraded", ["p99 latency (s) 0.6 above 0.5"])
    assert report["drift"] == {"detected": False, "drifted_features": [], "score": None}
    assert m["seconds_since_check"] == 7.5
    assert m["transitions"] == []
    d = snap["upstreams"]["down"]
    assert d["healthy"] is False and d["consecutive_failures"] == 1
    assert d["last_error"].startswith("connect error")
    assert d["transitions"] == [
        {
            "healthy": False,
            "seconds_ago": 7.5,
            "reason": "1 consecutive failed checks: connect error",
        }
    ]


def test_run_probes_every_interval_until_cancelled(server_url: str, holder: Holder) -> None:
    waits: list[float] = []

    async def go() -> None:
        enough = asyncio.Event()

        async def fake_sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 3:
                enough.set()
            await asyncio.sleep(0)

        async with _checker({"m": server_url}, interval_s=2.0, sleep=fake_sleep) as checker:
            task = asyncio.create_task(checker.run())
            await asyncio.wait_for(enough.wait(), timeout=10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert holder.hits >= 3
    assert all(0 < w <= 2.0 for w in waits)  # the interval minus the round's duration


def test_from_config_uses_each_upstreams_health_path(server_url: str, holder: Holder) -> None:
    config = SidecarConfig.from_mapping(
        {
            "upstreams": {"m": {"url": server_url, "health_path": "/plain"}, "s": server_url},
            "health_checks": {"interval_s": 2, "timeout_s": 0.5, "unhealthy_threshold": 1},
        }
    )
    checker = HealthChecker.from_config(config.health_checks, config.upstreams)
    assert checker.unhealthy_threshold == 1 and checker.timeout_s == 0.5
    assert checker.state("m").url == server_url + "/plain"
    assert checker.state("s").url == server_url + "/-/health"
    holder.plain_code = 500
    assert _steps(checker, 1) == [False]
    assert checker.is_healthy("s") is True


def test_invalid_options_are_rejected_together() -> None:
    with pytest.raises(ConfigError) as info:
        HealthChecker({"m": "ftp://x"}, interval_s=1, timeout_s=2, healthy_threshold=0)
    text = str(info.value)
    assert "healthy_threshold: 0" in text
    assert "timeout_s: 2" in text
    assert "upstreams.m" in text
    with pytest.raises(ConfigError):
        HealthChecker({}, interval_s=1, timeout_s=0.5)


def test_is_healthy_of_an_unknown_upstream_is_a_key_error(server_url: str) -> None:
    checker = _checker({"m": server_url})
    with pytest.raises(KeyError):
        checker.is_healthy("nope")
    asyncio.run(checker.aclose())


def test_the_summary_keeps_the_largest_psi_and_the_window_figures() -> None:
    body = json.dumps(
        {
            "status": "degraded",
            "window": {"error_rate": 0.02, "latency_seconds": {"p50": 0.01, "p99": 0.3}},
            "drift": {
                "detected": True,
                "drifted_features": ["b"],
                "features": [
                    {"name": "a", "scores": {"psi": 0.04, "ks": 0.1}},
                    {"name": "b", "scores": {"psi": 0.61}},
                    {"name": "c", "scores": {"chi2": 9.0}},
                    "not a feature",
                ],
            },
        }
    ).encode()
    summary = HealthReport.from_json(body)
    assert summary is not None
    assert (summary.drift_score, summary.error_rate, summary.p99_latency_seconds) == (
        0.61,
        0.02,
        0.3,
    )
    bare = HealthReport.from_json(b'{"status": "ok", "window": {"error_rate": "x"}}')
    assert bare is not None
    assert (bare.drift_score, bare.error_rate, bare.p99_latency_seconds) == (None, None, None)
