"""The proxy's per-request metrics and limits, against real upstreams on loopback.

Upstreams are the echo/503/hang apps of ``test_proxy``; the proxy is served by uvicorn with a
:class:`SidecarMetrics` in a private registry, read back with ``get_sample_value``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.signals.outcomes import status_class
from tests.servers import serve_app
from tests.test_proxy import Upstream, dead_url, make_config, two_upstreams


class Measured:
    def __init__(self, proxy: Sidecar, registry: CollectorRegistry, client: httpx.Client) -> None:
        self.proxy = proxy
        self.registry = registry
        self.client = client

    def value(self, name: str, **labels: str) -> float:
        """A sample, once the requests in flight are done (the client has its answer a moment
        before the proxy reports it)."""
        for _ in range(200):  # at most 2 s
            if self.proxy.proxy.open_requests == 0:
                break
            time.sleep(0.01)
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.contextmanager
def measured(cfg: SidecarConfig, **kwargs: Any) -> Iterator[Measured]:
    registry = CollectorRegistry()
    proxy = Sidecar(cfg, registry=registry, **kwargs)
    with (
        serve_app(proxy.proxy, proxy_headers=False) as served,
        httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
    ):
        yield Measured(proxy, registry, client)


def test_status_class_is_bounded() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 999, 42)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "5xx",
        "5xx",
    ]


def test_answered_requests_are_counted_timed_and_leave_nothing_in_flight() -> None:
    with (
        two_upstreams() as (_, _, p_url, s_url),
        measured(make_config(p_url, s_url), health_checks=False) as m,
    ):
        for _ in range(5):
            assert m.client.post("/predict", content=b"{}").status_code == 200
        assert m.value("mlwarden_proxy_requests_total", upstream="primary", code="2xx") == 5
        assert m.value("mlwarden_upstream_requests_total", upstream="primary", outcome="2xx") == 5
        assert m.value("mlwarden_proxy_request_duration_seconds_count", upstream="primary") == 5
        assert m.value("mlwarden_upstream_request_duration_seconds_count", upstream="primary") == 5
        assert 0 < m.value("mlwarden_proxy_request_duration_seconds_sum", upstream="primary") < 5
        assert m.value("mlwarden_proxy_requests_in_flight") == 0
        # Series exist at 0 before anything happened to them.
        assert (
            m.registry.get_sample_value(
                "mlwarden_proxy_requests_total", {"upstream": "stable", "code": "5xx"}
            )
            == 0
        )


def test_a_503_is_retried_then_falls_back_and_every_step_is_counted() -> None:
    with (
        two_upstreams("503") as (_, _, p_url, s_url),
        measured(
            make_config(p_url, s_url, breaker={"consecutive_5xx": 50}), health_checks=False
        ) as m,
    ):
        response = m.client.post("/predict", content=b"{}")
        assert response.headers["x-mlwarden-upstream"] == "stable"
        # num_retries=1: two attempts on the primary, one retry, then the fallback.
        assert m.value("mlwarden_upstream_requests_total", upstream="primary", outcome="5xx") == 2
        assert m.value("mlwarden_retries_total", upstream="primary", reason="status_503") == 1
        assert (
            m.value(
                "mlwarden_fallbacks_total",
                **{"from": "primary", "to": "stable", "reason": "retries_exhausted"},
            )
            == 1
        )
        assert m.value("mlwarden_proxy_requests_total", upstream="stable", code="2xx") == 1
        assert m.value("mlwarden_proxy_requests_total", upstream="primary", code="5xx") == 0


def test_a_dead_primary_counts_connect_errors_then_breaker_open_fallbacks() -> None:
    with (
        two_upstreams() as (_, stable, _, s_url),
        measured(make_config(dead_url(), s_url), health_checks=False) as m,
    ):
        for _ in range(4):
            assert m.client.post("/predict", content=b"{}").status_code == 200
        assert stable.hits == 4
        # consecutive_5xx=2: the first request's two connect errors open the breaker.
        assert (
            m.value("mlwarden_upstream_requests_total", upstream="primary", outcome="connect_error")
            == 2
        )
        assert m.value("mlwarden_retries_total", upstream="primary", reason="connect_error") == 1
        assert (
            m.value(
                "mlwarden_fallbacks_total",
                **{"from": "primary", "to": "stable", "reason": "retries_exhausted"},
            )
            == 1
        )
        assert (
            m.value(
                "mlwarden_fallbacks_total",
                **{"from": "primary", "to": "stable", "reason": "breaker_open"},
            )
            == 3
        )
        assert m.value("mlwarden_breaker_state", upstream="primary") == 2


def test_nothing_to_answer_is_counted_as_the_sidecars_own_5xx() -> None:
    cfg = make_config(dead_url(), dead_url())
    with measured(cfg, health_checks=False) as m:
        assert m.client.post("/predict", content=b"{}").status_code == 503
        assert m.value("mlwarden_proxy_requests_total", upstream="none", code="5xx") == 1


def test_a_refused_oversize_body_is_counted_as_4xx_of_the_sidecar() -> None:
    with (
        two_upstreams() as (primary, _, p_url, s_url),
        measured(
            make_config(p_url, s_url, limits={"max_request_bytes": 100}), health_checks=False
        ) as m,
    ):
        assert m.client.post("/predict", content=b"x" * 101).status_code == 413
        assert primary.hits == 0
        assert m.value("mlwarden_proxy_requests_total", upstream="none", code="4xx") == 1


def test_health_probes_are_counted_by_result() -> None:
    with two_upstreams() as (_, _, p_url, _):
        cfg = make_config(p_url, dead_url(), health_checks={"interval_s": 0.1, "timeout_s": 0.05})
        with measured(cfg) as m:
            for _ in range(100):  # at most 5 s
                if (
                    m.value(
                        "mlwarden_health_checks_total", upstream="stable", result="connect_error"
                    )
                    >= 2
                ):
                    break
                time.sleep(0.05)
            assert m.value("mlwarden_health_checks_total", upstream="primary", result="ok") >= 2
            assert (
                m.value("mlwarden_health_checks_total", upstream="stable", result="connect_error")
                >= 2
            )
            assert m.value("mlwarden_health_check_duration_seconds_count", upstream="primary") >= 2


def test_an_unhealthy_primary_is_skipped_and_the_fallback_says_why() -> None:
    with two_upstreams() as (primary, stable, p_url, s_url):
        cfg = make_config(p_url, s_url, health_checks={"interval_s": 30, "timeout_s": 1})
        with measured(cfg) as m:
            health = m.proxy.health
            assert health is not None
            state = health.state("primary")
            for _ in range(100):  # the first probe runs at start-up; the next in 30 s
                if state.checks:
                    break
                time.sleep(0.02)
            assert state.checks == 1
            state.healthy = False  # as after unhealthy_threshold failed probes
            response = m.client.post("/predict", content=b"{}")
            assert response.headers["x-mlwarden-upstream"] == "stable"
            assert (primary.hits, stable.hits) == (0, 1)
            assert (
                m.value(
                    "mlwarden_fallbacks_total",
                    **{"from": "primary", "to": "stable", "reason": "unhealthy"},
                )
                == 1
            )
            assert m.value("mlwarden_upstream_healthy", upstream="primary") == 0


def test_requests_beyond_max_concurrent_are_shed_with_503_at_once() -> None:
    with two_upstreams("hang") as (_, _, p_url, s_url):
        cfg = make_config(
            p_url,
            s_url,
            limits={"max_concurrent_requests": 2},
            timeouts={"per_try_timeout_s": 1.0, "total_timeout_s": 1.0},
        )
        with (
            measured(cfg, health_checks=False) as m,
            concurrent.futures.ThreadPoolExecutor(4) as pool,
        ):
            futures = [pool.submit(m.client.post, "/predict", content=b"{}") for _ in range(2)]
            # Wait until both are in flight, then one more must be refused without waiting.
            for _ in range(200):  # at most 2 s
                if m.proxy.in_flight == 2:
                    break
                time.sleep(0.01)
            assert m.registry.get_sample_value("mlwarden_proxy_requests_in_flight") == 2
            shed = m.client.post("/predict", content=b"{}")
            assert shed.status_code == 503
            assert shed.headers["x-mlwarden-overloaded"] == "true"
            assert shed.json()["max_concurrent_requests"] == 2
            assert shed.elapsed.total_seconds() < 0.5
            for future in futures:
                future.result()
        assert m.value("mlwarden_proxy_requests_in_flight") == 0


def test_slow_bodies_hold_no_slot_and_are_closed_with_408() -> None:
    """Four clients sending their bodies a byte at a time hold connections, never the two
    slots of max_concurrent_requests: a legitimate request is answered meanwhile, and each
    slow body is answered 408 (connection closed) once request_body_timeout_s has passed."""
    with two_upstreams() as (_, _, p_url, s_url):
        cfg = make_config(
            p_url,
            s_url,
            limits={"max_concurrent_requests": 2},
            timeouts={"request_body_timeout_s": 1.0},
        )
        with measured(cfg, health_checks=False) as m:
            host, port = m.client.base_url.host, m.client.base_url.port
            slow = []
            for _ in range(4):
                sock = socket.create_connection((host, port), timeout=5)
                sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
                slow.append(sock)
            time.sleep(0.2)
            assert m.proxy.in_flight == 0
            legit = m.client.post("/predict", json={"ok": 1})
            assert legit.status_code == 200, legit.text
            answers = []
            for sock in slow:
                with sock:
                    data = b""
                    while chunk := sock.recv(65536):  # the sidecar closes: recv returns b""
                        data += chunk
                    answers.append(data)
            assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
            assert all(b"request body too slow" in a for a in answers)
            assert m.value("mlwarden_proxy_requests_total", upstream="none", code="4xx") >= 4


class Big:
    """Answers ``size`` bytes, declared (content-length) or streamed (chunked)."""

    def __init__(self, size: int, *, declared: bool) -> None:
        self.size = size
        self.declared = declared

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(self.size).encode())] if self.declared else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = b"x" * 65536
        left = self.size
        while left > 0:
            part = chunk[:left]
            left -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": left > 0})


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "streamed"])
def test_an_upstream_response_above_max_response_bytes_is_not_passed_on(declared: bool) -> None:
    with serve_app(Big(1_000_000, declared=declared)) as big, serve_app(Upstream()) as ok:
        cfg = make_config(big.url, ok.url, limits={"max_response_bytes": 100_000})
        with measured(cfg, health_checks=False) as m:
            if declared:
                response = m.client.get("/big")
                assert response.status_code == 502
                assert response.json()["error"] == "upstream response too large"
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    m.client.get("/big")  # cut mid-body: the client sees the truncation
            assert m.value("mlwarden_proxy_requests_total", upstream="primary", code="5xx") == 1
            assert (
                m.value("mlwarden_upstream_requests_total", upstream="primary", outcome="reset")
                == 1
            )
            # The cut connection was not pooled: the next request gets the same treatment.
            if declared:
                assert m.client.get("/big").status_code == 502
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    m.client.get("/big")
            assert m.proxy.pools["primary"].idle_connections == 0


class Raising(Listener):
    def request_finished(self, upstream: str | None, status: int, duration_s: float) -> None:
        raise RuntimeError("a listener bug")


def test_a_raising_listener_is_logged_and_requests_go_on(caplog) -> None:
    with (
        two_upstreams() as (_, _, p_url, s_url),
        measured(make_config(p_url, s_url), health_checks=False, events=Raising()) as m,
    ):
        assert m.client.post("/predict", content=b"{}").status_code == 200
        assert m.value("mlwarden_proxy_requests_total", upstream="primary", code="2xx") == 1
    assert "listener" in caplog.text


class BusyFor:
    """503 with ``Retry-After: 30``: come back later than any deadline here."""

    def __init__(self) -> None:
        self.hits = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.hits += 1
        await send(
            {"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"30")]}
        )
        await send({"type": "http.response.body", "body": b"busy"})


def test_a_retry_after_beyond_the_deadline_moves_on_to_the_fallback_at_once() -> None:
    busy = BusyFor()
    with (
        serve_app(busy) as p,
        serve_app(Upstream()) as s,
        measured(make_config(p.url, s.url), health_checks=False) as m,
    ):
        response = m.client.post("/predict", content=b"{}")
        assert response.status_code == 200
        assert response.headers["x-mlwarden-upstream"] == "stable"
        assert response.elapsed.total_seconds() < 1.0  # no wait for the Retry-After
        assert busy.hits == 1
        assert (
            m.value(
                "mlwarden_fallbacks_total",
                **{"from": "primary", "to": "stable", "reason": "retry_too_late"},
            )
            == 1
        )


def test_with_no_fallback_the_busy_answer_goes_to_the_client_as_sent() -> None:
    busy = BusyFor()
    with serve_app(busy) as p:
        cfg = SidecarConfig.from_mapping({"upstreams": {"primary": p.url}}, environ={})
        with measured(cfg, health_checks=False) as m:
            response = m.client.post("/predict", content=b"{}")
            assert (response.status_code, response.headers["retry-after"]) == (503, "30")
            assert busy.hits == 1
