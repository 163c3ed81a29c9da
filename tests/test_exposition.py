"""Both expositions as a scraper reads them: a monitored model server's ``/metrics`` and the
sidecar's admin ``/metrics``, served on loopback after some traffic. promtool's linter finds
nothing in either, both carry ``mlwarden_build_info``, and the README's metric tables list
exactly the families they export."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.build_info import build_labels, register_build_info
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.sidecar.metrics import SidecarMetrics
from tests.servers import serve_app
from tests.support import make_baseline, reference_rows, segment
from tests.test_dashboards import boom, predict
from tests.test_dashboards import sidecar as full_sidecar

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "exposition-labeller-token-0123"
MV = {"model": "churn", "version": "1"}
OPENMETRICS = {"accept": "application/openmetrics-text; version=1.0.0"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (scripts/test installs Debian's prometheus)")
    return path


def lint(exposition: bytes) -> tuple[int, str]:
    """promtool's verdict on an exposition in the text format: exit code, what it said."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=exposition, capture_output=True, timeout=60
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace").strip()


@dataclass(frozen=True)
class Scraped:
    text: bytes  # the Prometheus text format
    openmetrics: bytes


@dataclass(frozen=True)
class Expositions:
    model: Scraped
    sidecar: Scraped


def model_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/boom/predict", boom, methods=["POST"]),
        ]
    )
    app.add_middleware(
        InferenceMonitor,
        model_name=MV["model"],
        model_version=MV["version"],
        registry=CollectorRegistry(),
        baseline=make_baseline(segments=True),
        prediction_classes=("yes", "no"),
        drift_every_rows=50,
        drift_interval_s=0.5,
        feedback_token=TOKEN,
        tracer_provider=TracerProvider(),
    )
    return app


def scrape(client: httpx.Client) -> Scraped:
    text = client.get("/metrics")
    openmetrics = client.get("/metrics", headers=OPENMETRICS)
    assert text.headers["content-type"].startswith("text/plain")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    return Scraped(text.content, openmetrics.content)


def drive_model(client: httpx.Client) -> None:
    """Bounded traffic touching every kind of series, then a drift evaluation seen."""
    rows = reference_rows(300, seed=8)
    for i in range(30):
        batch = [dict(r, segment=segment(i + k)) for k, r in enumerate(rows[i * 10 : i * 10 + 10])]
        r = client.post("/predict", json={"instances": batch})
        assert r.status_code == 200
        rid = r.headers.get("x-request-id", "")
        labels = [{"request_id": f"{rid}#0", "label": "yes"}]
        client.post("/-/feedback", json=labels, headers={"authorization": f"Bearer {TOKEN}"})
        if i % 10 == 0:
            client.post("/predict", content=b"{not json")
            # on a connection of its own: the server closes the one an exception went through
            with httpx.Client(base_url=client.base_url, trust_env=False, timeout=10) as once:
                assert once.post("/boom/predict", json={"instances": batch}).status_code == 500
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        chi2 = sample(scrape(client).text, "mlwarden_feature_chi2_statistic", feature="segment")
        if chi2 is not None and chi2 == chi2:  # NaN until the first evaluation
            return
        time.sleep(0.2)
    raise AssertionError("no drift evaluation within 15 s")


@pytest.fixture(scope="module")
def expositions() -> Iterator[Expositions]:
    with (
        serve_app(model_app()) as model,
        httpx.Client(base_url=model.url, trust_env=False, timeout=10) as model_client,
        full_sidecar(model.url) as (side_url, admin),
        httpx.Client(base_url=side_url, trust_env=False, timeout=10) as side,
        httpx.Client(base_url=admin.url, trust_env=False, timeout=10) as admin_client,
    ):
        drive_model(model_client)
        for i in range(20):
            side.post("/predict", content=b'{"x": 1}', headers={"x-user": f"u{i}"})
        side.get("/metrics")  # refused on the public port, counted by path
        # The fleet's drift verdict (on the model's counts) is judged within a pass or two.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            drift = admin_client.get("/-/status").json()["fleet"]["drift"]
            if (drift["verdict"] or {}).get("enough_data"):
                break
            time.sleep(0.2)
        yield Expositions(scrape(model_client), scrape(admin_client))


def families(text: bytes) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def sample(text: bytes, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def exported(text: bytes) -> set[str]:
    """The metric families of an exposition in the text format (counters without
    ``_total``; the ``_created`` series, written there as gauges of their own, left out)."""
    names = set()
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if not (kind == "gauge" and name.endswith("_created")):
                names.add(name.removesuffix("_total"))
    return names


# -- promtool ------------------------------------------------------------------------------------


def test_promtool_reports_problems_it_is_shown() -> None:
    code, said = lint(b"# TYPE requests_milliseconds counter\nrequests_milliseconds 1\n")
    assert code != 0 and "no help text" in said and '"_total" suffix' in said


def test_promtool_finds_no_problem_in_the_model_servers_metrics(expositions: Expositions) -> None:
    assert b"mlwarden_request_duration_seconds_created" in expositions.model.text
    assert lint(expositions.model.text) == (0, "")


def test_promtool_finds_no_problem_in_the_sidecars_metrics(expositions: Expositions) -> None:
    assert b"mlwarden_proxy_request_duration_seconds_created" in expositions.sidecar.text
    assert lint(expositions.sidecar.text) == (0, "")


@pytest.mark.parametrize("side", ["model", "sidecar"])
def test_the_openmetrics_exposition_passes_the_strict_parser(
    expositions: Expositions, side: str
) -> None:
    # promtool reads the text format only; prometheus_client's OpenMetrics parser is strict
    # (types, _created, exemplars, the closing # EOF).
    scraped: Scraped = getattr(expositions, side)
    parsed = list(openmetrics_families(scraped.openmetrics.decode()))
    assert {f.name for f in parsed} >= {"mlwarden_build_info"}
    if side == "model":  # the request histograms carry trace-id exemplars
        assert any(s.exemplar for f in parsed for s in f.samples)


# -- what they export ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["model", "sidecar"])
def test_both_expositions_carry_the_build_info_in_both_formats(
    expositions: Expositions, side: str
) -> None:
    scraped: Scraped = getattr(expositions, side)
    (info,) = families(scraped.text)["mlwarden_build_info"]
    assert info.value == 1
    assert info.labels == {
        "version": metadata.version("mlwarden"),
        "revision": build_labels()["revision"],
        "python_version": platform.python_version(),
    }
    assert b"# TYPE mlwarden_build_info gauge\nmlwarden_build_info{" in scraped.openmetrics


def test_drift_statistics_have_one_name_each(expositions: Expositions) -> None:
    text = expositions.model.text
    for feature in ("f0", "segment"):
        assert sample(text, "mlwarden_feature_psi", feature=feature) is not None
    assert sample(text, "mlwarden_feature_ks_distance", feature="f0") is not None
    assert sample(text, "mlwarden_feature_ks_distance", feature="segment") is None
    assert sample(text, "mlwarden_feature_chi2_statistic", feature="segment") is not None
    assert sample(text, "mlwarden_feature_chi2_statistic", feature="f0") is None
    assert 0 <= sample(text, "mlwarden_feature_ks_distance", feature="f0") <= 1
    assert b"mlwarden_feature_drift_score" not in text


def test_the_canary_weight_is_a_ratio(expositions: Expositions) -> None:
    text = expositions.sidecar.text
    ratio = sample(text, "mlwarden_canary_weight_ratio", candidate="candidate")
    assert ratio is not None and 0 < ratio <= 1
    assert b"weight_percent" not in text


def test_the_readme_tables_list_exactly_the_exported_metrics(expositions: Expositions) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = {
        name.removesuffix("_total")
        for name in re.findall(r"^\| `(mlwarden_[a-z0-9_]+)` \|", readme, flags=re.MULTILINE)
    }
    exports = exported(expositions.model.text) | exported(expositions.sidecar.text)
    assert sorted(exports - documented) == [], "exported but not in the README's tables"
    assert sorted(documented - exports) == [], "in the README's tables but not exported"


# -- build info --------------------------------------------------------------------------------


def test_the_build_info_of_a_distribution_that_is_not_installed_says_unknown() -> None:
    labels = build_labels("mlwarden-not-installed-anywhere")
    assert labels == {
        "version": "unknown",
        "revision": "unknown",
        "python_version": platform.python_version(),
    }


def test_a_registry_shared_by_the_middleware_and_the_sidecar_has_one_build_info() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    SidecarMetrics(registry)
    register_build_info(registry)
    infos = [s for m in registry.collect() for s in m.samples if s.name == "mlwarden_build_info"]
    assert len(infos) == 1 and infos[0].value == 1
