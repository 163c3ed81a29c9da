"""Shadow traffic through the proxy: real primary and candidate servers, the admin's metrics."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from tests.apps import FakeVersion
from tests.servers import serve_app


@contextlib.contextmanager
def shadowed(
    candidate: FakeVersion, **shadow: Any
) -> Iterator[tuple[Sidecar, httpx.Client, CollectorRegistry, FakeVersion]]:
    primary = FakeVersion("primary", label="churn")
    with serve_app(primary) as p, serve_app(candidate) as c:
        cfg = SidecarConfig.from_mapping(
            {
                "upstreams": {"primary": p.url, "candidate": c.url},
                "shadow": {"target": "candidate", "sample_percent": 100, **shadow},
            },
            environ={},
        )
        assert cfg.routing.order == ("primary",)  # a shadow target is not a fallback
        registry = CollectorRegistry()
        proxy = Sidecar(cfg, health_checks=False, registry=registry)
        with (
            serve_app(proxy.proxy, proxy_headers=False) as served,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
        ):
            yield proxy, client, registry, primary


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"target": "candidate", **labels}) or 0.0


def settle(proxy: Sidecar, registry: CollectorRegistry, total: int) -> None:
    """Wait (bounded) until ``total`` copies have an outcome."""
    for _ in range(300):  # at most 3 s
        done = sum(
            sample(registry, "mlwarden_shadow_requests_total", outcome=o)
            for o in ("ok", "error", "timeout", "shed", "dropped")
        )
        if done >= total and proxy.in_flight == 0:
            return
        time.sleep(0.01)


def test_every_request_is_copied_compared_and_the_clients_answer_is_the_primarys() -> None:
    candidate = FakeVersion("candidate", label="churn", differ_every=5)
    with shadowed(candidate) as (proxy, client, registry, primary):
        for i in range(40):
            r = client.post("/predict", json={"i": i})
            assert r.json() == {"predictions": ["churn"]}
            assert r.headers["x-mlwarden-upstream"] == "primary"
        settle(proxy, registry, 40)
        assert primary.hits == 40 and candidate.shadow_hits == 40
        assert sample(registry, "mlwarden_shadow_requests_total", outcome="ok") == 40
        assert sample(registry, "mlwarden_shadow_comparisons_total", result="agree") == 32
        assert sample(registry, "mlwarden_shadow_comparisons_total", result="disagree") == 8
        assert sample(registry, "mlwarden_shadow_agreement_ratio") == 0.8
        assert proxy.shadow is not None and proxy.shadow.agreement_rate() == 0.8


def test_a_hanging_shadow_sheds_copies_and_never_delays_the_client() -> None:
    candidate = FakeVersion("candidate", label="churn", hang_s=2.0)
    with shadowed(candidate, max_concurrent=2, max_queue=2, timeout_s=1.0) as (
        _,
        client,
        registry,
        _,
    ):
        elapsed = []
        for i in range(30):
            r = client.post("/predict", json={"i": i})
            assert r.status_code == 200
            elapsed.append(r.elapsed.total_seconds())
        assert max(elapsed) < 0.5  # the shadow's 2 s hang is nowhere in a client's time
        shed = sample(registry, "mlwarden_shadow_requests_total", outcome="shed")
        assert shed >= 30 - 4 - 4  # 2 in flight and 2 queued, more once timeouts free them
        assert candidate.hits <= 30 - shed


def test_shadow_copies_do_not_change_client_latency_beyond_noise() -> None:
    candidate = FakeVersion("candidate", label="churn")
    with shadowed(candidate) as (proxy, client, _, _):
        mirror = proxy.shadow
        assert mirror is not None
        rounds: dict[float, list[float]] = {0.0: [], 100.0: []}
        for _ in range(4):  # alternating rounds, medians
            for percent in (0.0, 100.0):
                mirror.sample_percent = percent
                times = []
                for i in range(40):
                    started = time.perf_counter()
                    client.post("/predict", json={"i": i})
                    times.append(time.perf_counter() - started)
                rounds[percent].append(statistics.median(times))
        without, with_shadow = (statistics.median(rounds[p]) for p in (0.0, 100.0))
        # Each copy costs the sidecar a little CPU, on the same core as everything here.
        assert with_shadow <= without * 1.5 + 0.002, (without, with_shadow)
