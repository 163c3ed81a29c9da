"""Session fixtures for the ``frameworks`` tests: the framework venvs (built once, reused),
and at most one server per framework for the whole session, each stopped by its PID."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.frameworks.venvs import (
    FrameworkServer,
    FrameworkVenv,
    ensure_venvs,
    start_server,
    unavailable,
)
from tests.servers import temp_workdir


class Servers:
    """Starts a framework's server on first use; stops every one it started."""

    def __init__(self) -> None:
        self._venvs: dict[str, FrameworkVenv] | None = None
        self._problems: dict[str, str] = {}
        self._started: dict[str, tuple[FrameworkServer, object]] = {}

    def get(self, name: str) -> FrameworkServer:
        if name not in self._started:
            if self._venvs is None:
                self._venvs, self._problems = ensure_venvs()
            if name in self._problems:
                unavailable(self._problems[name])
            workdir = temp_workdir(f"fw-{name}")
            self._started[name] = (start_server(self._venvs[name], workdir), workdir)
        return self._started[name][0]

    def stop(self) -> None:
        for server, workdir in self._started.values():
            server.process.stop()
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(params=["mlserver", "kserve"])
def framework(request: pytest.FixtureRequest, servers: Servers) -> FrameworkServer:
    """MLServer's or KServe's real app with two models, bare and wrapped in the middleware."""
    return servers.get(request.param)


@pytest.fixture
def kserve(servers: Servers) -> FrameworkServer:
    return servers.get("kserve")


@pytest.fixture
def mlserver(servers: Servers) -> FrameworkServer:
    return servers.get("mlserver")
