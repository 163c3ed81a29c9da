"""The container image, really built and run: ``podman build`` of the Dockerfile on a base made
from Debian's packages, then the sidecar container on the host's loopback (``--network host``)
in front of a model server this test starts, probed on ``/-/ready``.

The usual base (``python:3.11-slim``) comes from a container registry, which this project's
machines cannot reach; Debian's packages they can. So the base is made with ``mmdebstrap``
(bookworm: python3 3.11, python3-venv and :data:`BASE_PACKAGES`) and ``podman import``, and kept
in podman's storage under :data:`BASE` for later runs. It carries the host's CA bundle, so that
pip inside the build trusts what pip on the host trusts.

When it runs: a first run (making the base, then a build that downloads every dependency from
the package index) took 75 to 140 seconds on two shared cores, so it is opt-in:
``MLWARDEN_IMAGE_TEST=1`` (``scripts/test`` then installs Debian's ``podman``, ``runc`` and
``mmdebstrap``). Once the base exists, later runs (about 30 to 60 seconds: the image is built
afresh each time and removed at the end; the base stays) run by default;
``MLWARDEN_IMAGE_TEST=0`` skips them. Containers that cannot run here skip the test with what
each runtime answered.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.apps import FakeVersion
from tests.servers import LOOPBACK, free_port, serve_app, wait_http

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/mlwarden:image-test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# python3 and venv; passwd for useradd; libstdc++6 for numpy's wheels (the slim image has it).
BASE_PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates", "libstdc++6")
# The tag follows the recipe: a changed package list makes a new base, not a stale reuse.
BASE = (
    "localhost/mlwarden-base:bookworm-"
    + hashlib.sha256(",".join(BASE_PACKAGES).encode()).hexdigest()[:12]
)


@dataclass(frozen=True)
class Podman:
    """How to run containers here: the runtime and limits that a probe container accepted."""

    binary: str
    global_args: tuple[str, ...]  # e.g. ("--runtime", "runc")
    run_args: tuple[str, ...]  # the --ulimit options

    def __call__(self, *args: str, timeout: float, check: bool = True) -> str:
        """podman's stdout; with ``check=False`` its stdout and stderr (a container's log)."""
        done = subprocess.run(
            [self.binary, *self.global_args, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout if check else done.stdout + done.stderr


def _limits() -> tuple[str, ...]:
    # podman's defaults (nofile 1048576) exceed the hard limits of some machines, where the
    # runtime's setrlimit then fails; the host's own limits always fit.
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    nofile = 1_048_576 if nofile == resource.RLIM_INFINITY else min(nofile, 1_048_576)
    nproc = 32_768 if nproc == resource.RLIM_INFINITY else min(nproc, 32_768)
    return ("--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}")


def _make_base(podman: str, workdir: Path) -> None:
    """Debian bookworm with Python 3.11 and venv, as an image named :data:`BASE`."""
    tarball = workdir / "base.tar"
    copy_ca = f'cp {HOST_CA_BUNDLE} "$1{HOST_CA_BUNDLE}"' if HOST_CA_BUNDLE.exists() else "true"
    made = subprocess.run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=essential",
            "--include=" + ",".join(BASE_PACKAGES),
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
            f"--customize-hook={copy_ca}",
            "bookworm",
            str(tarball),
            DEBIAN_MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if made.returncode != 0:
        pytest.skip(f"mmdebstrap could not make a Debian base:\n{made.stderr[-2000:]}")
    subprocess.run(
        [
            podman,
            "import",
            "--change",
            f"ENV PIP_CERT={HOST_CA_BUNDLE}",
            "--change",
            'CMD ["python3"]',
            str(tarball),
            BASE,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    tarball.unlink()


def _probe(podman: str) -> Podman:
    """A runtime that can run the base here, or a skip that says what each one answered."""
    candidates = [()]
    if shutil.which("runc"):
        # crun refuses machines with controllers on both cgroup hierarchies; runc does not.
        candidates.append(("--runtime", "runc"))
    failures = []
    for global_args in candidates:
        runner = Podman(podman, global_args, _limits())
        done = subprocess.run(
            [
                podman,
                *global_args,
                "run",
                "--rm",
                "--network",
                "host",
                *runner.run_args,
                BASE,
                "python3",
                "-c",
                "import sys, venv; print(sys.version_info[:2])",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0 and "(3, 11)" in done.stdout:
            return runner
        failures.append(
            f"podman {' '.join(global_args) or '(default runtime)'} run: "
            f"{(done.stdout + done.stderr).strip()[-500:]}"
        )
    pytest.skip("containers cannot run on this machine:\n" + "\n".join(failures))


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    wanted = os.environ.get("MLWARDEN_IMAGE_TEST", "")
    if wanted == "0":
        pytest.skip("MLWARDEN_IMAGE_TEST=0")
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip(
            "podman is not installed (MLWARDEN_IMAGE_TEST=1 scripts/test installs Debian's "
            "podman, runc and mmdebstrap)"
        )
    exists = subprocess.run([binary, "image", "exists", BASE], capture_output=True, timeout=60)
    if exists.returncode != 0:
        if wanted != "1":
            pytest.skip(
                f"no base image {BASE} yet: making it and the first build take a minute or two "
                "(downloads from Debian and the package index), so only with "
                "MLWARDEN_IMAGE_TEST=1"
            )
        if shutil.which("mmdebstrap") is None:
            pytest.skip("mmdebstrap is not installed (scripts/test installs Debian's)")
        if os.geteuid() != 0:
            pytest.skip("making the Debian base needs root (mmdebstrap --mode=root)")
        _make_base(binary, tmp_path_factory.mktemp("base"))
    return _probe(binary)


@pytest.fixture(scope="module")
def image(podman: Podman) -> Iterator[str]:
    podman(
        "build",
        "--format",
        "docker",  # keeps the HEALTHCHECK (the OCI format has none)
        "--network",
        "host",  # pip in the build stage reaches the package index
        "--layers=false",  # no intermediate images left behind; the base is the cache
        *podman.run_args,
        "--build-arg",
        f"BASE={BASE}",
        "--tag",
        IMAGE,
        str(ROOT),
        timeout=420,
    )
    try:
        yield IMAGE
    finally:
        podman("rmi", "--force", IMAGE, timeout=120, check=False)


def _layer_paths(podman: Podman, image: str) -> Iterator[str]:
    """Every path in every layer of ``image``, as ``podman save`` writes them."""
    proc = subprocess.Popen(
        [podman.binary, *podman.global_args, "save", "--format", "docker-archive", image],
        stdout=subprocess.PIPE,
    )
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if not member.isfile() or not member.name.endswith(".tar"):
                    continue
                with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as layer:
                    for entry in layer:
                        yield entry.name.removeprefix("./")
    finally:
        proc.stdout.close()
        proc.wait(timeout=120)


def test_no_layer_of_the_image_holds_wheels_or_sources(podman: Podman, image: str) -> None:
    paths = list(_layer_paths(podman, image))
    assert any(p.startswith("opt/mlwarden/bin/mlwarden") for p in paths), "no mlwarden script"
    # The base's own python-wheels (Debian's pip and setuptools for venv) are not ours.
    leftovers = [
        p
        for p in paths
        if p.startswith(("wheels/", "src/"))
        or (p.endswith(".whl") and not p.startswith("usr/share/python-wheels/"))
    ]
    assert leftovers == []


def test_the_image_runs_as_its_user_with_the_sidecar_by_default(podman: Podman, image: str) -> None:
    fmt = "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}"
    user, entrypoint, cmd = podman("image", "inspect", "--format", fmt, image, timeout=60).split()
    assert user == "10001"
    assert entrypoint == '["mlwarden"]'
    assert cmd == '["sidecar","--config","/etc/mlwarden/sidecar.yaml"]'


def test_the_sidecar_container_proxies_to_a_model_on_the_host_and_is_ready(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    proxy_port, admin_port = free_port(), free_port()
    name = f"mlwarden-image-test-{uuid.uuid4().hex[:8]}"
    with serve_app(FakeVersion("primary", label="yes")) as model:
        config = tmp_path / "sidecar.yaml"
        config.write_text(
            f"upstreams:\n  primary: {model.url}\n"
            f"listen:\n  host: {LOOPBACK}\n  port: {proxy_port}\n"
            f"admin:\n  host: {LOOPBACK}\n  port: {admin_port}\n"
            "ledger:\n  path: /var/lib/mlwarden/ledger.jsonl\n",
            encoding="utf-8",
        )
        config.chmod(0o644)  # read by the image's user, uid 10001
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",  # the container's loopback is the host's: the model and the probes
            *podman.run_args,
            "--volume",
            f"{config}:/etc/mlwarden/sidecar.yaml:ro",
            image,
            timeout=120,
        )
        try:
            try:
                wait_http(f"http://{LOOPBACK}:{admin_port}/-/ready", timeout=60)
            except TimeoutError:
                logs = podman("logs", name, timeout=30, check=False)
                raise AssertionError(f"the sidecar never got ready; its log:\n{logs}") from None
            with httpx.Client(trust_env=False, timeout=10) as client:
                answer = client.post(f"http://{LOOPBACK}:{proxy_port}/predict", json={"x": 1})
                healthy = client.get(f"http://{LOOPBACK}:{admin_port}/-/healthy")
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-mlwarden-upstream"] == "primary"
            assert answer.json() == {"predictions": ["yes"]}
            assert healthy.status_code == 200
            # The image's healthcheck command (``python`` is the venv's: a Debian base has
            # only python3), run in the container against the admin port of this config.
            fmt = "{{json .HealthCheck.Test}}"
            test = json.loads(podman("image", "inspect", "--format", fmt, image, timeout=60))
            assert test[0] == "CMD" and "127.0.0.1:9901/-/healthy" in test[-1], test
            command = [*test[1:-1], test[-1].replace(":9901/", f":{admin_port}/")]
            podman("exec", name, *command, timeout=60)
        finally:
            podman("stop", "--time", "10", name, timeout=60, check=False)
            podman("rm", "--force", name, timeout=60, check=False)
