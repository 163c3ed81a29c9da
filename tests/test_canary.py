"""The canary: the split, the analysis and its decisions; then end to end through real upstreams.

The first part drives :class:`CanaryController` with the proxy's real windows fed by hand and
a stepped clock; the second serves a stable version and a candidate with uvicorn, the proxy in
front, and sends bounded load through it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.routing.canary import CanaryController, sticky_bucket
from mlwarden.sidecar.routing.router import Router
from mlwarden.sidecar.signals.prometheus import PrometheusSignals
from mlwarden.sidecar.signals.samples import IntervalSamples
from mlwarden.sidecar.signals.windows import UpstreamWindows, WindowSignals
from tests.apps import FakeVersion
from tests.doubles import FakeClock
from tests.servers import serve_app


def canary_config(**canary: Any) -> SidecarConfig:
    return SidecarConfig.from_mapping(
        {
            "upstreams": {
                "stable": "http://127.0.0.1:1",
                "fallback": "http://127.0.0.1:2",
                "candidate": "http://127.0.0.1:3",
            },
            "canary": {
                "candidate": "candidate",
                "interval_s": 10,
                "min_requests": 20,
                "steps_percent": [5, 50],
                "guard_s": 60,
                **canary,
            },
        },
        environ={},
    )


class Rig:
    def __init__(self, **canary: Any) -> None:
        cfg = canary_config(**canary)
        assert cfg.canary is not None
        self.clock = FakeClock()
        self.windows = UpstreamWindows(["stable", "fallback", "candidate"], clock=self.clock)
        self.router = Router(
            cfg.routing.primary, cfg.routing.fallbacks, is_available=lambda name: True
        )
        self.records: list[dict[str, Any]] = []
        self.breaker = "closed"
        self.samples = IntervalSamples(["stable", "candidate"])
        self.rng = random.Random(7)
        self.canary = CanaryController(
            cfg.canary,
            local=WindowSignals(self.windows),
            samples=self.samples,
            router=self.router,
            breaker_state=lambda name: self.breaker,
            record=lambda **kw: self.records.append(kw),
            clock=self.clock,
        )

    def traffic(self, upstream: str, n: int, errors: int = 0, latency_s: float = 0.01) -> None:
        """``n`` attempts, the first ``errors`` of them 5xx, latencies ``latency_s`` ± 20%."""
        for i in range(n):
            outcome = "5xx" if i < errors else "2xx"
            duration = latency_s * (0.8 + 0.4 * self.rng.random())
            self.windows.attempt_finished(upstream, outcome, duration)
            self.samples.attempt_finished(upstream, outcome, duration)

    def interval(self) -> Any:
        """The analysis at the end of a 10 s interval whose traffic was sent at its start."""
        self.clock.now += 9.5
        verdict = self.canary.tick()
        self.clock.now += 0.5
        return verdict

    def actions(self) -> list[str]:
        return [r["action"] for r in self.records]


def test_the_candidate_is_not_a_default_fallback_and_the_stable_defaults_to_the_primary() -> None:
    cfg = canary_config()
    assert cfg.routing.order == ("stable", "fallback")
    assert cfg.canary is not None and cfg.canary.stable == "stable"


def test_passing_analyses_step_the_weight_up_then_promote_and_the_guard_ends() -> None:
    rig = Rig()
    assert rig.canary.weight == 5
    for expected in (50, None):
        rig.traffic("stable", 400)
        rig.traffic("candidate", 150)
        assert rig.interval().verdict == "pass"
        if expected is not None:
            assert rig.canary.weight == expected
    assert rig.canary.state == "promoted"
    assert rig.router.order == ("candidate", "stable", "fallback")
    assert rig.actions() == ["set_weight", "promotion"]
    rig.clock.now += 61  # the guard passes quietly
    assert rig.canary.tick() is None
    assert rig.canary.state == "done"
    assert rig.router.order == ("candidate", "stable", "fallback")


def test_an_erroring_candidate_is_rolled_back_after_failure_limit_failed_analyses() -> None:
    rig = Rig()
    for _ in range(2):
        rig.traffic("stable", 200)
        rig.traffic("candidate", 30, errors=3)  # 10%
        verdict = rig.interval()
        assert verdict.verdict == "fail"
        assert "max_error_rate" in verdict.reason and "Fisher p=" in verdict.reason
    assert rig.canary.failures == 2
    assert (rig.canary.state, rig.canary.weight) == ("rolled_back", 0.0)
    [rollback] = rig.records
    assert rollback["action"] == "rollback" and rollback["target"] == "candidate"
    assert "2 failed analyses in a row (failure_limit 2)" in rollback["reason"]
    assert rollback["signals"]["candidate_error_rate"] == pytest.approx(0.1)
    assert rollback["signals"]["stable_error_rate"] == 0.0
    errors = rollback["details"]["evidence"][0]
    assert errors["test"] == "fisher_exact" and errors["failed"] is True
    assert (errors["n_candidate"], errors["n_stable"]) == (60, 400)  # the step's two intervals
    assert 0 < errors["p_value"] < 0.01
    assert not rig.canary.routes([])
    assert rig.canary.tick() is None  # over


def test_one_failed_analysis_holds_the_weight_and_a_pass_clears_it() -> None:
    rig = Rig(steps_percent=[5, 50, 80])
    rig.traffic("stable", 200)
    rig.traffic("candidate", 30, errors=3)
    assert rig.interval().verdict == "fail"
    assert (rig.canary.state, rig.canary.weight, rig.canary.failures) == ("analysing", 5, 1)
    rig.traffic("stable", 2000)
    rig.traffic("candidate", 1500)  # the step's samples: 3 errors in 1,530 now
    assert rig.interval().verdict == "pass"
    assert (rig.canary.weight, rig.canary.failures) == (50, 0)


def test_an_error_rate_beyond_any_noise_rolls_back_at_once() -> None:
    rig = Rig()
    rig.traffic("stable", 200)
    rig.traffic("candidate", 60, errors=30)  # 50%
    verdict = rig.interval()
    assert verdict.verdict == "fail"
    assert rig.canary.state == "rolled_back"
    assert "beyond any noise" in rig.records[-1]["reason"]


def test_a_small_error_increase_over_the_stable_fails_too() -> None:
    rig = Rig(max_error_rate=0.5, max_error_rate_increase=0.02)
    rig.traffic("stable", 400, errors=4)
    rig.traffic("candidate", 100, errors=8)  # 8% vs 1%
    verdict = rig.interval()
    assert verdict.verdict == "fail" and "increase" in verdict.reason


def test_a_few_more_errors_than_the_stable_within_noise_are_no_failure() -> None:
    rig = Rig()
    rig.traffic("stable", 400, errors=4)
    rig.traffic("candidate", 40, errors=1)  # 2.5% vs 1%: not significant on 40
    verdict = rig.interval()
    assert verdict.verdict == "inconclusive" and "not enough evidence yet" in verdict.reason
    assert rig.canary.failures == 0
    rig.traffic("stable", 400, errors=4)
    rig.traffic("candidate", 400, errors=4)  # the same rate as the stable, on more samples
    assert rig.interval().verdict == "pass"


def test_a_slow_candidate_fails_on_its_median_with_the_rank_test() -> None:
    rig = Rig()
    rig.traffic("stable", 100, latency_s=0.01)
    rig.traffic("candidate", 30, latency_s=0.02)  # twice as slow
    verdict = rig.interval()
    assert verdict.verdict == "fail" and "median ratio" in verdict.reason
    latency = next(e for e in verdict.evidence if e.metric == "latency")
    assert latency.test == "mann_whitney_u" and latency.p_value < 1e-6
    assert latency.interval is not None and latency.interval[0] > 1.25
    assert verdict.to_dict()["evidence"][1]["effect"] == "median ratio"


def test_a_candidate_as_fast_as_the_stable_passes_despite_a_few_slow_outliers() -> None:
    rig = Rig()
    rig.traffic("stable", 400, latency_s=0.01)
    rig.traffic("candidate", 200, latency_s=0.01)
    for _ in range(2):  # a GC pause: two attempts at 30 ms
        rig.samples.attempt_finished("candidate", "2xx", 0.03)
        rig.windows.attempt_finished("candidate", "2xx", 0.03)
    assert rig.interval().verdict == "pass"


def test_too_few_requests_are_inconclusive_then_the_deadline_decides() -> None:
    rig = Rig(inconclusive_deadline_s=25, on_deadline="rollback")
    rig.traffic("stable", 100)
    rig.traffic("candidate", 5)
    assert rig.interval().verdict == "inconclusive"
    assert rig.canary.state == "analysing"
    assert rig.interval().verdict == "inconclusive"
    assert rig.interval().verdict == "inconclusive"  # 30 s > 25 s
    assert rig.canary.state == "rolled_back"
    # One record for the run of inconclusive analyses; the metric counts all three.
    assert rig.actions() == ["canary_inconclusive", "rollback"]
    assert rig.canary.verdicts["inconclusive"] == 3


def test_on_deadline_hold_keeps_the_weight_and_says_so() -> None:
    rig = Rig(inconclusive_deadline_s=15, on_deadline="hold")
    for _ in range(4):
        rig.interval()
    assert (rig.canary.state, rig.canary.weight) == ("analysing", 5)
    assert rig.actions().count("canary_hold") == 2


def test_the_candidates_breaker_opening_rolls_back_without_waiting_for_a_tick() -> None:
    rig = Rig()
    rig.canary.breaker_changed("candidate", "closed", "open", "failure_threshold:status_503")
    assert rig.canary.state == "rolled_back"
    assert rig.records[0]["reason"].startswith("breaker of candidate opened")
    rig.canary.breaker_changed("stable", "closed", "open", "x")  # not the candidate: nothing


def test_a_promoted_version_that_fails_within_the_guard_goes_back_to_the_pinned_stable() -> None:
    rig = Rig(steps_percent=[50])
    rig.traffic("stable", 400)
    rig.traffic("candidate", 150)
    rig.interval()
    assert rig.canary.state == "promoted"
    rig.traffic("candidate", 40, errors=10)
    verdict = rig.interval()
    assert verdict is not None and verdict.verdict == "fail"
    assert rig.canary.state == "rolled_back"
    assert rig.router.order == ("stable", "fallback")
    assert rig.records[-1]["action"] == "rollback"
    assert rig.records[-1]["severity"] == "critical"


def test_a_sticky_key_sees_one_version_and_keeps_it_as_the_weight_grows() -> None:
    rig = Rig(sticky_header="x-user")
    users = [f"user-{i}".encode() for i in range(2000)]
    at_5 = {u for u in users if rig.canary.routes([(b"x-user", u)])}
    assert 60 <= len(at_5) <= 140  # about 5% of 2000
    assert all(rig.canary.routes([(b"x-user", u)]) for u in at_5)  # the same again
    rig.canary.weight = 50
    at_50 = {u for u in users if rig.canary.routes([(b"x-user", u)])}
    assert at_5 <= at_50 and 850 <= len(at_50) <= 1150
    assert all(0 <= sticky_bucket(u) < 100 for u in users[:50])


def test_a_sticky_cookie_is_read_from_the_cookie_header() -> None:
    rig = Rig(sticky_cookie="session", steps_percent=[50])
    inside = next(f"s{i}" for i in range(1000) if sticky_bucket(f"s{i}".encode()) < 50)
    outside = next(f"s{i}" for i in range(1000) if sticky_bucket(f"s{i}".encode()) >= 50)
    assert rig.canary.routes([(b"cookie", f"a=1; session={inside}; b=2".encode())])
    assert not rig.canary.routes([(b"cookie", f"session={outside}".encode())])


def test_the_canary_weight_is_exported_as_a_ratio() -> None:
    registry = CollectorRegistry()
    proxy = Sidecar(canary_config(), health_checks=False, registry=registry)
    assert proxy.canary is not None
    labels = {"candidate": "candidate"}
    assert registry.get_sample_value("mlwarden_canary_weight_ratio", labels) == 0.05
    proxy.canary.weight = 50
    assert registry.get_sample_value("mlwarden_canary_weight_ratio", labels) == 0.5
    assert registry.get_sample_value("mlwarden_canary_weight_percent", labels) is None


# --------------------------------------------------------------------------- end to end


INTERVAL_S = 2.0


@contextlib.contextmanager
def canary_sidecar(candidate: FakeVersion, **canary: Any) -> Iterator[tuple[Sidecar, str]]:
    stable = FakeVersion("stable", echo=True)
    with serve_app(stable) as s, serve_app(candidate) as c:
        cfg = SidecarConfig.from_mapping(
            {
                "upstreams": {"stable": s.url, "candidate": c.url},
                "retry": {
                    "num_retries": 2,
                    "base_interval_s": 0.001,
                    "max_interval_s": 0.002,
                    "min_retries_per_s": 1000,
                },
                "breaker": {"consecutive_5xx": 1000},
                "canary": {
                    "candidate": "candidate",
                    "interval_s": INTERVAL_S,
                    "min_requests": 8,
                    **canary,
                },
            },
            environ={},
        )
        proxy = Sidecar(cfg, health_checks=False)
        with serve_app(proxy.proxy, proxy_headers=False) as served:
            yield proxy, served.url


def load(url: str, *, until: Any, max_s: float, workers: int = 6) -> list[tuple[float, int]]:
    """POSTs from ``workers`` threads until ``until()`` or ``max_s``; (time, status) each."""
    stop_at = time.monotonic() + max_s
    out: list[tuple[float, int]] = []

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
            i = 0
            while time.monotonic() < stop_at and not until() and i < 5000:
                r = client.post(
                    "/predict", content=b'{"x": %d}' % i, headers={"x-user": f"{k}-{i}"}
                )
                out.append((time.monotonic(), r.status_code))
                i += 1

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, range(workers)))
    return out


def test_a_candidate_failing_10_percent_at_5_percent_is_rolled_back_and_no_client_fails() -> None:
    candidate = FakeVersion("candidate", echo=True, error_every=10)
    with canary_sidecar(candidate, steps_percent=[5, 50]) as (proxy, url):
        canary = proxy.canary
        assert canary is not None and canary.weight == 5
        rolled: list[float] = []

        class WhenRolledBack(Listener):
            def canary_changed(self, c: Any) -> None:
                if c.state == "rolled_back":
                    rolled.append(time.monotonic())

        canary.add_listener(WhenRolledBack())
        started = time.monotonic()
        answers = load(url, until=lambda: canary.state == "rolled_back", max_s=20)
        assert canary.state == "rolled_back", canary.snapshot()
        # At 5% the candidate gets its min_requests within an interval: the first or the
        # second analysis decides (plus the time the analysis loop takes to start).
        assert rolled[0] - started <= 2 * INTERVAL_S + 1.0, canary.snapshot()
        assert canary.snapshot()["analyses"][-1]["weight_percent"] == 5
        assert [s for _, s in answers if s != 200] == []  # retries and the stable covered it
        hits_after = candidate.hits
        tail = load(url, until=lambda: False, max_s=0.5, workers=2)
        assert all(s == 200 for _, s in tail)
        assert candidate.hits == hits_after  # weight 0: nothing more for the candidate
        assert [v["verdict"] for v in canary.snapshot()["analyses"]][-1] == "fail"


def test_a_healthy_candidate_is_promoted_through_the_steps() -> None:
    candidate = FakeVersion("candidate", echo=True)
    # Everything here shares one process: a GC pause can make the candidate's p99 look slow.
    # The latency rule has its own unit test; here it must not decide.
    with canary_sidecar(
        candidate, steps_percent=[20, 60], guard_s=30, max_latency_p99_ratio=1000
    ) as (proxy, url):
        canary = proxy.canary
        assert canary is not None
        answers = load(url, until=lambda: canary.state == "promoted", max_s=25)
        assert canary.state == "promoted", canary.snapshot()
        assert [s for _, s in answers if s != 200] == []
        assert proxy.router.order == ("candidate", "stable")
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
            assert (
                client.post("/predict", content=b"{}").headers["x-mlwarden-upstream"] == "candidate"
            )
        weights = [
            v["weight_percent"] for v in canary.snapshot()["analyses"] if v["verdict"] == "pass"
        ]
        assert weights == [20, 60]


@pytest.mark.servers
def test_with_the_prometheus_source_the_fleet_figures_decide_the_rollback() -> None:
    """A real Prometheus scrapes the sidecar's admin port; the analysis reads PromQL."""
    from starlette.applications import Starlette

    from mlwarden.sidecar.admin import create_admin_app
    from tests.servers import start_prometheus, temp_workdir

    stable = FakeVersion("stable", echo=True)
    candidate = FakeVersion("candidate", echo=True, error_every=4)
    workdir = temp_workdir("canary-prom")
    with serve_app(stable) as s, serve_app(candidate) as c:
        # The admin port first (an empty app that gets the admin routes once the proxy
        # exists): Prometheus is told where to scrape, the canary where Prometheus is.
        admin_shell = Starlette()
        with serve_app(admin_shell) as admin_served:
            prom = start_prometheus(workdir, [f"127.0.0.1:{admin_served.port}"])
            try:
                cfg = SidecarConfig.from_mapping(
                    {
                        "upstreams": {"stable": s.url, "candidate": c.url},
                        "retry": {
                            "num_retries": 2,
                            "base_interval_s": 0.001,
                            "max_interval_s": 0.002,
                            "min_retries_per_s": 1000,
                        },
                        "breaker": {"consecutive_5xx": 1000},
                        "canary": {
                            "candidate": "candidate",
                            "interval_s": 4.0,
                            "min_requests": 5,
                            "steps_percent": [30, 60],
                            "source": "prometheus",
                            "prometheus_url": prom.url,
                        },
                    },
                    environ={},
                )
                proxy = Sidecar(cfg, health_checks=False, registry=CollectorRegistry())
                admin_app = create_admin_app(proxy)
                admin_shell.router.routes.extend(admin_app.router.routes)
                with serve_app(proxy.proxy, proxy_headers=False) as served:
                    canary = proxy.canary
                    assert canary is not None and isinstance(canary.fleet, PrometheusSignals)
                    answers = load(
                        served.url, until=lambda: canary.state == "rolled_back", max_s=40, workers=3
                    )
                    assert canary.state == "rolled_back", canary.snapshot()
                    assert [s for _, s in answers if s != 200] == []
                    [rollback] = [r for r in proxy.ledger.query(action="rollback")]
                    # The figures came from Prometheus: rates, not this sidecar's counts.
                    # Every 4th attempt on the candidate fails: 25% from Prometheus' rates.
                    assert rollback.signals["candidate_error_rate"] == pytest.approx(0.25, abs=0.1)
                    assert canary.fleet.errors_total == 0
                    # Judged by the same tests on the fleet's figures, with their evidence.
                    tests = {e["test"] for e in rollback.details["evidence"]}
                    assert tests == {"fisher_exact", "mann_whitney_u"}, rollback.details
            finally:
                prom.process.stop()
