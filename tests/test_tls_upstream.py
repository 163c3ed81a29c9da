"""https upstreams: a real uvicorn serving TLS with a private CA made by openssl for the test."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.config import SidecarConfig
from tests.servers import LOOPBACK, serve_app
from tests.test_proxy import Upstream

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={LOOPBACK}",
            "-addext",
            f"subjectAltName=IP:{LOOPBACK}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextlib.contextmanager
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[tuple[Upstream, str]]:
    cert, key = certificate
    app = Upstream()
    with serve_app(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as served:
        yield app, f"https://{LOOPBACK}:{served.port}"


def config(url: str, stable: str, **upstream: object) -> SidecarConfig:
    return SidecarConfig.from_mapping(
        {
            "upstreams": {"primary": {"url": url, **upstream}, "stable": stable},
            "health_checks": {"interval_s": 0.2, "timeout_s": 0.1, "unhealthy_threshold": 1},
            "retry": {"num_retries": 0},
        },
        environ={},
    )


def test_an_https_upstream_with_its_ca_file_is_proxied_and_health_checked(certificate) -> None:
    cert, _ = certificate
    with tls_upstream(certificate) as (primary, url), serve_app(Upstream()) as stable:
        proxy = Sidecar(config(url, stable.url, ca_file=str(cert)))
        with (
            serve_app(proxy.proxy, proxy_headers=False) as served,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
        ):
            for i in range(3):
                response = client.post(f"/predict?i={i}", content=b"x" * 100_000)
                assert response.status_code == 200
                assert response.headers["x-mlwarden-upstream"] == "primary"
                assert response.content == b"x" * 100_000
            assert primary.hits == 3
            assert proxy.pools["primary"].connections == 1  # kept alive over TLS
            health = proxy.health
            assert health is not None
            for _ in range(50):  # at most 5 s
                if health.state("primary").checks >= 2:
                    break
                time.sleep(0.1)
            state = health.state("primary")
            assert state.healthy and state.last_status_code == 200, state


def test_an_untrusted_certificate_is_a_connect_failure_and_traffic_falls_back(certificate) -> None:
    with tls_upstream(certificate) as (primary, url), serve_app(Upstream()) as stable_app:
        proxy = Sidecar(config(url, stable_app.url), health_checks=False)
        with (
            serve_app(proxy.proxy, proxy_headers=False) as served,
            httpx.Client(base_url=served.url, trust_env=False, timeout=10) as client,
        ):
            response = client.post("/predict", content=b"{}")
            assert response.status_code == 200
            assert response.headers["x-mlwarden-upstream"] == "stable"
            assert primary.hits == 0


def test_ca_file_is_checked_at_start_up(tmp_path, certificate) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping(
            {
                "upstreams": {
                    "a": {"url": "https://127.0.0.1:1", "ca_file": str(tmp_path / "missing.pem")},
                    "b": {"url": "https://127.0.0.1:2", "ca_file": str(not_pem)},
                    "c": {"url": "http://127.0.0.1:3", "ca_file": str(certificate[0])},
                }
            },
            environ={},
        )
    text = str(info.value)
    assert "upstreams.a.ca_file: no such file" in text
    assert "upstreams.b.ca_file" in text and "not a readable PEM file" in text
    assert "upstreams.c.ca_file: applies to https:// URLs only" in text
