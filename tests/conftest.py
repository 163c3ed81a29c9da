from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.servers import VictoriaMetrics, start_victoria_metrics, temp_workdir


@pytest.fixture(scope="session")
def victoria_metrics() -> Iterator[VictoriaMetrics]:
    """One victoria-metrics server for the session (the InfluxDB v2 write API)."""
    workdir = temp_workdir("vm")
    vm = start_victoria_metrics(workdir)
    try:
        yield vm
    finally:
        vm.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
