"""``mlwarden sidecar``: a real process in front of real upstreams, stopped by its PID."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import Process, free_port, serve_app, temp_workdir, wait_http


def version_app(name: str) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": [1], "version": name, "body": (await request.json())})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                             Route("/-/health", health)])


def test_sidecar_check_names_bad_keys(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("upstreams:\n  primary: ftp://nowhere\nretry:\n  num_retrys: 2\n")
    result = subprocess.run([sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar",
                             "--config", str(cfg), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "upstreams.primary" in result.stderr and "num_retrys" in result.stderr


def test_sidecar_serves_the_primary_and_falls_back_when_it_is_down():
    workdir = temp_workdir("sidecar")
    down_port = free_port()  # nothing listens there
    with serve_app(version_app("stable")) as stable:
        port, admin_port = free_port(), free_port()
        cfg = workdir / "sidecar.yaml"
        cfg.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
            f"upstreams:\n  primary: http://127.0.0.1:{down_port}\n  stable: {stable.url}\n"
            "timeouts: {per_try_timeout_s: 1, total_timeout_s: 3}\n"
        )
        proc = Process([sys.executable, "-m", "mlwarden.sidecar.cli", "sidecar", "--config",
                        str(cfg)], name="sidecar", workdir=workdir)
        try:
            wait_http(f"http://127.0.0.1:{port}/-/health", timeout=20)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for i in range(5):
                    r = client.post("/predict", json={"i": i})
                    assert r.status_code == 200, r.text
                    assert r.headers["x-mlwarden-upstream"] == "stable"
                    assert json.loads(r.content)["body"] == {"i": i}
            wait_http(f"http://127.0.0.1:{admin_port}/-/healthy", timeout=20)
            with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
                assert admin.get("/-/ready").status_code == 200
                status = admin.get("/-/status").json()
                assert status["routing"]["order"] == ["primary", "stable"]
                assert 'mlwarden_breaker_state{upstream="stable"} 0.0' in admin.get(
                    "/metrics").text
        finally:
            proc.stop()
        assert proc.proc.returncode is not None
