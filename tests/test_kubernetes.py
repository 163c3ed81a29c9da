"""deploy/kubernetes/: the model server and the mlwarden sidecar in one pod.

The manifests are checked three ways: against the Kubernetes schemas (``kubernetes-validate
--strict``, which rejects unknown fields), field by field for what the pod depends on, and the
ConfigMap's embedded sidecar configuration with ``mlwarden sidecar --check``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlwarden.sidecar.settings import load_sidecar_config

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
MANIFESTS = (
    "admin-service.yaml",
    "configmap.yaml",
    "deployment.yaml",
    "networkpolicy.yaml",
    "secret.example.yaml",
    "service.yaml",
)
# Native sidecar containers (initContainers with restartPolicy: Always) are on by default from
# Kubernetes 1.29.
OLDEST_KUBERNETES = "1.29.0"
ADMIN_TOKEN = "k8s-test-token-0123456789abcdef"


def _objects() -> list[dict[str, Any]]:
    objects = []
    for name in MANIFESTS:
        with (KUBE / name).open(encoding="utf-8") as f:
            objects.extend(doc for doc in yaml.safe_load_all(f) if doc is not None)
    return objects


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        o
        for o in _objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    return found


def _pod() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]


def _sidecar() -> dict[str, Any]:
    (sidecar,) = _pod()["spec"]["initContainers"]
    return sidecar


def _model() -> dict[str, Any]:
    (model,) = _pod()["spec"]["containers"]
    return model


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's port, named ports resolved against the container."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    get = container[kind]["httpGet"]
    return get["path"], _port(container, get["port"])


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def _embedded_config(tmp_path: Path) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(_one("ConfigMap")["data"]["sidecar.yaml"], encoding="utf-8")
    return path


def test_every_manifest_is_commented_yaml_naming_its_kind():
    assert sorted(p.name for p in KUBE.iterdir()) == sorted(MANIFESTS)
    for name in MANIFESTS:
        text = (KUBE / name).read_text(encoding="utf-8")
        assert text.startswith("# "), f"{name}: no leading comment"
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        assert docs, name
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
            assert doc["metadata"]["name"], name


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, None], ids=["oldest", "newest"])
def test_manifests_pass_strict_kubernetes_schema_validation(version):
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    # Without -k: the newest Kubernetes version the installed package ships schemas for.
    versions = [] if version is None else ["--kubernetes-version", version]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            *versions,
            *(str(KUBE / name) for name in MANIFESTS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sidecar_is_a_native_sidecar_reading_the_configmap():
    pod, sidecar = _pod()["spec"], _sidecar()
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "mlwarden:0.1.0"
    assert sidecar["args"] == ["sidecar", "--config", "/etc/mlwarden/sidecar.yaml"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    config = mounts["/etc/mlwarden"]
    assert config["readOnly"] is True
    assert volumes[config["name"]]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/var/lib/mlwarden"]["name"]]


def test_the_model_container_is_probed_on_health_endpoints_without_restarts_on_its_verdict():
    model = _model()
    assert model["image"] == "registry.example/churn-model:3"
    assert [p["containerPort"] for p in model["ports"]] == [8000]
    # Started: the middleware's report answers (the sidecar's health checks read it).
    assert _probe(model, "startupProbe") == ("/-/health", 8000)
    # Not the health report: a failing verdict must not take the sidecar out with the pod,
    # nor restart a drifting model; and never /metrics (a scrape is no probe).
    assert _probe(model, "readinessProbe") == ("/v2/health/ready", 8000)
    assert _probe(model, "livenessProbe") == ("/v2/health/live", 8000)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _probe(model, kind)[0] != "/metrics", kind


def test_the_sidecar_is_probed_on_its_admin_port():
    sidecar = _sidecar()
    assert sorted(p["containerPort"] for p in sidecar["ports"]) == [8080, 9901]
    assert _probe(sidecar, "readinessProbe") == ("/-/ready", 9901)
    assert _probe(sidecar, "livenessProbe") == ("/-/healthy", 9901)
    # The model container starts after this passes: /-/ready would wait for the model itself.
    assert _probe(sidecar, "startupProbe") == ("/-/healthy", 9901)


@pytest.mark.parametrize("container", [_sidecar, _model], ids=["sidecar", "model"])
def test_each_container_requests_cpu_and_memory_and_limits_memory(container):
    resources = container()["resources"]
    assert resources["requests"].keys() == {"cpu", "memory"}
    assert "memory" in resources["limits"]
    assert _mebibytes(resources["requests"]["memory"]) <= _mebibytes(resources["limits"]["memory"])


def test_the_sidecar_has_no_cpu_limit_to_throttle_the_proxy():
    assert _sidecar()["resources"]["limits"].keys() == {"memory"}


@pytest.mark.parametrize("container", [_sidecar, _model], ids=["sidecar", "model"])
def test_each_container_runs_as_a_locked_down_non_root_user(container):
    effective = {**_pod()["spec"]["securityContext"], **container().get("securityContext", {})}
    assert effective["runAsNonRoot"] is True
    assert effective["runAsUser"] == 10001
    assert effective["readOnlyRootFilesystem"] is True
    assert effective["allowPrivilegeEscalation"] is False
    assert effective["capabilities"]["drop"] == ["ALL"]


def test_the_admin_token_comes_from_an_optional_secret_whose_example_leaves_it_empty():
    (env,) = [e for e in _sidecar()["env"] if e["name"] == "MLWARDEN_ADMIN_TOKEN"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True
    secret = _one("Secret")
    assert secret["metadata"]["name"] == ref["name"]
    # Empty: applying the example as it is never installs a published token.
    assert secret["stringData"] == {ref["key"]: ""}
    assert "EXAMPLE" in (KUBE / "secret.example.yaml").read_text(encoding="utf-8")


def test_the_client_service_reaches_the_proxy_port_only():
    service, pod, sidecar = _one("Service", "churn-model"), _pod(), _sidecar()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: _port(sidecar, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": 8080}  # neither the admin port nor the model's


def test_the_admin_port_has_its_own_headless_service():
    service, pod, sidecar = _one("Service", "churn-model-admin"), _pod(), _sidecar()
    assert service["spec"]["clusterIP"] == "None"  # every pod an endpoint, no random pod
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: _port(sidecar, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"admin": 9901}
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "mlwarden-admin"


def test_the_network_policy_opens_the_proxy_to_clients_and_metrics_to_monitoring_only():
    policy, pod = _one("NetworkPolicy")["spec"], _pod()
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    containers = {p["name"]: c for c in (_sidecar(), _model()) for p in c["ports"]}

    def ports(rule: dict) -> set[int]:
        return {_port(containers[p["port"]], p["port"]) for p in rule["ports"]}

    anyone, monitoring = policy["ingress"]
    assert "from" not in anyone and ports(anyone) == {8080}
    (source,) = monitoring["from"]
    assert source == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    # the sidecar's metrics and the model's; the model's port to nobody else
    assert ports(monitoring) == {9901, 8000}


def test_pod_annotations_point_prometheus_at_the_sidecar_metrics():
    annotations = _pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9901"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert 9901 in [p["containerPort"] for p in _sidecar()["ports"]]


def test_the_configmap_config_passes_the_sidecar_check(tmp_path):
    script = Path(sys.executable).with_name("mlwarden")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mlwarden.sidecar.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWARDEN", "OTEL_"))}
    env["MLWARDEN_ADMIN_TOKEN"] = ADMIN_TOKEN  # as the Secret supplies it in the pod
    config = _embedded_config(tmp_path)
    result = subprocess.run(
        [*command, "sidecar", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid; routing primary → stable; listening on 0.0.0.0:8080" in result.stdout


def test_the_configmap_config_matches_the_pod_it_runs_in(tmp_path):
    config = load_sidecar_config(_embedded_config(tmp_path), environ={})
    assert {u.name: u.url for u in config.upstreams} == {
        "primary": "http://127.0.0.1:8000",
        "stable": "http://model-stable:8000",
    }
    assert config.routing.order == ("primary", "stable")
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert (config.admin.host, config.admin.port) == ("0.0.0.0", 9901)
    assert config.admin.token == ""  # the token comes from the Secret, never the ConfigMap
    assert config.ledger.path == "/var/lib/mlwarden/ledger.jsonl"
    ledger = {v["name"]: v for v in _pod()["spec"]["volumes"]}["mlwarden-ledger"]
    on_disk = config.ledger.max_bytes * (config.ledger.backups + 1)
    assert _mebibytes(ledger["emptyDir"]["sizeLimit"]) * 2**20 > on_disk


def test_three_replicas_form_one_fleet_named_by_their_pods(tmp_path):
    assert _one("Deployment")["spec"]["replicas"] == 3
    config = load_sidecar_config(_embedded_config(tmp_path), environ={})
    assert config.fleet is not None
    assert config.fleet.redis_url == "redis://redis:6379/0"
    assert (config.fleet.name, config.fleet.lease_ttl_s) == ("churn-model", 10.0)
    env = {e["name"]: e for e in _sidecar()["env"]}
    replica = env["MLWARDEN__FLEET__REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert replica == "metadata.name"
