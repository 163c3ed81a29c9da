"""``mlwarden sidecar``: a real process in front of real upstreams, stopped by its PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import Process, free_port, serve_app, temp_workdir, wait_http


@contextlib.contextmanager
def cli_sidecar(name: str, config: str) -> Iterator[tuple[int, int]]:
    """``mlwarden sidecar`` run with ``config`` (YAML without listen/admin, which are added on
    free ports) until the block ends; yields (proxy port, admin port)."""
    with cli_sidecar_process(name, config) as (_, port, admin_port):
        yield port, admin_port


@contextlib.contextmanager
def cli_sidecar_process(
    name: str, config: str, *, admin: str = ""
) -> Iterator[tuple[Process, int, int]]:
    """:func:`cli_sidecar`, yielding the process too; ``admin`` adds keys to the admin block
    (``"token: ..."``)."""
    workdir = temp_workdir(name)
    port, admin_port = free_port(), free_port()
    cfg = workdir / "sidecar.yaml"
    extra = f", {admin}" if admin else ""
    cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin_port}{extra}}}\n" + config
    )
    proc = Process(
        [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config", str(cfg)],
        name="sidecar",
        workdir=workdir,
    )
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/-/healthy", timeout=20)
        # Up: the model's own paths are the sidecar's to refuse (404), not to forward.
        wait_http(f"http://127.0.0.1:{port}/-/health", timeout=20, expect=404)
        yield proc, port, admin_port
    finally:
        proc.stop()
    assert proc.proc.returncode is not None


def version_app(name: str) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": [1], "version": name, "body": (await request.json())})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/-/health", health)]
    )


def test_sidecar_check_names_bad_keys(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("upstreams:\n  primary: ftp://nowhere\nretry:\n  num_retrys: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config", str(cfg), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "upstreams.primary" in result.stderr and "num_retrys" in result.stderr


def test_sidecar_check_names_a_bad_policy_with_the_other_problems(tmp_path):
    cfg = tmp_path / "bad-policy.yaml"
    cfg.write_text(
        "upstreams:\n  primary: http://127.0.0.1:8001\n  stable: http://127.0.0.1:8002\n"
        "retry:\n  num_retrys: 2\n"
        "policies:\n  - when: 'error_rate >> 0.1'\n    actions: [route_to_fallback]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config", str(cfg), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "retry.num_retrys: unknown key" in result.stderr
    assert "policies[0].when: column" in result.stderr


def test_sidecar_serves_the_primary_and_falls_back_when_it_is_down():
    down_port = free_port()  # nothing listens there
    with (
        serve_app(version_app("stable")) as stable,
        cli_sidecar(
            "sidecar",
            f"upstreams:\n  primary: http://127.0.0.1:{down_port}\n  stable: {stable.url}\n"
            "timeouts: {per_try_timeout_s: 1, total_timeout_s: 3}\n",
        ) as (port, admin_port),
    ):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # The model's own paths are the sidecar's to refuse, not to forward.
            refused = client.get("/-/health")
            assert refused.status_code == 404
            assert refused.headers.get_list("server") == ["mlwarden"]
            assert len(refused.headers.get_list("date")) == 1
            for i in range(5):
                r = client.post("/predict", json={"i": i})
                assert r.status_code == 200, r.text
                assert r.headers["x-mlwarden-upstream"] == "stable"
                assert json.loads(r.content)["body"] == {"i": i}
                # One date and one server header, though the upstream (uvicorn) sent both.
                assert r.headers.get_list("server") == ["mlwarden"]
                assert len(r.headers.get_list("date")) == 1
            labels = client.post("/-/feedback", json={"request_id": "x", "label": 1})
            assert labels.status_code == 404 and "x-mlwarden-upstream" not in labels.headers
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
            assert admin.get("/-/ready").status_code == 200
            status = admin.get("/-/status").json()
            assert status["routing"]["order"] == ["primary", "stable"]
            metrics = admin.get("/metrics").text
            assert 'mlwarden_breaker_state{upstream="stable"} 0.0' in metrics
            assert 'mlwarden_proxy_paths_refused_total{path="/-/feedback"} 1.0' in metrics


def test_the_shadows_metrics_on_the_admin_port_count_what_the_status_shows():
    """Started by the real command, the shadow's families have samples: its metrics are built
    with the sidecar, before the mirror that feeds them."""
    with (
        serve_app(version_app("v1")) as primary,
        serve_app(version_app("v1")) as candidate,
        cli_sidecar(
            "sidecar-shadow",
            f"upstreams:\n  primary: {primary.url}\n  candidate: {candidate.url}\n"
            "routing: {primary: primary, fallbacks: []}\n"
            "shadow: {target: candidate, sample_percent: 100}\n",
        ) as (port, admin_port),
    ):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(20):
                assert client.post("/predict", json={"i": i}).status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                agreed = admin.get("/-/status").json()["shadow"]["comparisons"].get("agree", 0)
                if agreed >= 20:
                    break
                time.sleep(0.1)
            assert agreed >= 20
            metrics = admin.get("/metrics").text
        line = 'mlwarden_shadow_comparisons_total{result="agree",target="candidate"}'
        assert any(
            m.startswith(line) and float(m.split()[-1]) == agreed for m in metrics.splitlines()
        ), [m for m in metrics.splitlines() if m.startswith("mlwarden_shadow")]


class OtlpReceiver:
    """A real OTLP/HTTP traces endpoint: decodes each protobuf export and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, str], object]] = []  # (service, attrs, span)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/traces":
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attrs = {
                            a.key: a.value.string_value or str(a.value.int_value)
                            for a in span.attributes
                        }
                        self.spans.append((resource.get("service.name", ""), attrs, span))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def test_sidecar_exports_its_spans_to_an_otlp_endpoint(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: export soon after each span
    workdir = temp_workdir("sidecar-otlp")
    receiver = OtlpReceiver()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with serve_app(version_app("primary")) as primary, serve_app(receiver) as otlp:
        port, admin_port = free_port(), free_port()
        cfg = workdir / "sidecar.yaml"
        cfg.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
            f"upstreams:\n  primary: {primary.url}\n"
            f"tracing: {{otlp_endpoint: '{otlp.url}', service_name: sidecar-under-test}}\n"
        )
        proc = Process(
            [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config", str(cfg)],
            name="sidecar",
            workdir=workdir,
        )
        try:
            wait_http(f"http://127.0.0.1:{admin_port}/-/healthy", timeout=20)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                r = client.post(
                    "/predict",
                    json={"i": 1},
                    headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
                )
                assert r.status_code == 200
        finally:
            proc.stop()  # SIGTERM: the provider's shutdown flushes what is queued
        kinds = {span.kind: (service, attrs, span) for service, attrs, span in receiver.spans}
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    assert set(kinds) == {Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT}, receiver.spans
    service, server_attrs, server = kinds[Span.SPAN_KIND_SERVER]
    _, client_attrs, attempt = kinds[Span.SPAN_KIND_CLIENT]
    assert service == "sidecar-under-test"
    assert server.trace_id.hex() == trace_id == attempt.trace_id.hex()
    assert attempt.parent_span_id == server.span_id
    assert server_attrs["mlwarden.upstream"] == "primary"
    assert client_attrs["mlwarden.upstream"] == "primary"


def test_sidecar_check_reports_tracing_problems(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "upstreams:\n  primary: http://127.0.0.1:9\n"
        "tracing: {otlp_endpoint: 'collector:4318', sample_ratio: 1.5}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config", str(cfg), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "tracing.otlp_endpoint" in result.stderr and "tracing.sample_ratio" in result.stderr


def slow_app() -> Starlette:
    """Answers ``/slow`` after 1.5 s (bounded), ``/-/health`` at once."""

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(1.5)
        return JSONResponse({"slow": True})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/slow", slow), Route("/-/health", health)])


def test_sigterm_drains_requests_in_flight_flushes_the_ledger_and_exits_0():
    """Kubernetes stops a pod with SIGTERM: the request in flight is answered, nothing new is
    accepted, the ledger's records are on disk, and the exit status is 0 (not 143)."""
    token = "t" * 24
    with (
        serve_app(slow_app()) as upstream,
        cli_sidecar_process(
            "sidecar-drain",
            f"upstreams:\n  primary: {upstream.url}\n  stable: {upstream.url}\n"
            "ledger: {path: ledger.jsonl}\n",
            admin=f"token: {token}",
        ) as (proc, port, admin_port),
    ):
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
            forced = admin.post(
                "/-/route",
                json={"force": "stable"},
                # The admin port trusts no forwarded header: the actor is the connection's.
                headers={"authorization": f"Bearer {token}", "x-forwarded-for": "6.6.6.6"},
            )
            assert forced.status_code == 200, forced.text
        answers: list[httpx.Response] = []
        client = threading.Thread(
            target=lambda: answers.append(httpx.get(f"http://127.0.0.1:{port}/slow", timeout=10))
        )
        client.start()
        time.sleep(0.5)  # the request is in flight at the upstream
        os.kill(proc.pid, signal.SIGTERM)
        client.join(timeout=10)
        assert proc.proc.wait(timeout=15) == 0, proc.log()
        assert [a.status_code for a in answers] == [200]
        assert answers[0].json() == {"slow": True}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/slow", timeout=2)
        log = proc.log()
        assert "SIGTERM: draining requests in flight" in log
        records = [
            json.loads(line)
            for line in (proc.workdir / "ledger.jsonl").read_text().splitlines()
            if line.strip()
        ]
    forced_records = [r for r in records if "forced by" in r.get("reason", "")]
    assert len(forced_records) == 1, records
    assert "forced by 127.0.0.1" in forced_records[0]["reason"]
    assert "6.6.6.6" not in json.dumps(records)


def test_the_admin_port_binds_to_loopback_unless_told(tmp_path):
    from mlwarden.sidecar.config import load_config

    cfg = tmp_path / "s.yaml"
    cfg.write_text("upstreams:\n  primary: http://127.0.0.1:1\n  stable: http://127.0.0.1:2\n")
    assert load_config(cfg).admin.host == "127.0.0.1"
