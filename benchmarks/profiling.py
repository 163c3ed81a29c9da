"""Where the mlwarden variants spend their time: cProfile over the in-process loop.

Each profiled variant is warmed up, then ``n`` requests run under ``cProfile``. Reported per
request: the middleware's own share (cumulative time in ``InferenceMonitor.__call__`` minus the
time in the app it wraps), the mlwarden functions by cumulative time, and the hottest
functions overall by own time. cProfile adds a fixed cost to every Python call, so these
figures are larger than the unprofiled ones of the in-process table: read them as shares.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import inprocess, workload

__all__ = ["Profile", "run_profiles"]

_MIDDLEWARE_DIR = str(Path(__file__).resolve().parent.parent / "middleware")

_Key = tuple[str, int, str]


@dataclass
class Row:
    function: str
    calls_per_request: float
    own_us: float
    cumulative_us: float


@dataclass
class Profile:
    variant: str
    requests: int
    total_us: float
    middleware_us: float | None = None
    inner_app_us: float | None = None
    mlwarden: list[Row] = field(default_factory=list)
    hottest: list[Row] = field(default_factory=list)
    text: str = ""


def _label(key: _Key) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    short = filename
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in filename:
            short = filename.split(marker, 1)[1]
            break
    return f"{short}:{line}({name})"


def _find_monitor(app: Any) -> Any:
    from mlwarden.middleware.monitor import InferenceMonitor

    node = getattr(app, "middleware_stack", None)
    for _ in range(32):
        if node is None or isinstance(node, InferenceMonitor):
            return node
        node = getattr(node, "app", None)
    return None


def _code_key(function: Any) -> _Key:
    code = function.__code__
    return (code.co_filename, code.co_firstlineno, code.co_name)


async def _profile_one(name: str, n: int, warmup: int) -> Profile:
    driver = inprocess.Driver(workload.build(name), workload.json_bodies(4096, seed=8))
    profiler = cProfile.Profile()
    try:
        await driver.startup()
        await driver.run(warmup)
        if driver.variant.provider is not None:
            await asyncio.to_thread(driver.variant.provider.force_flush)
        profiler.enable()
        await driver.run(n)
        profiler.disable()
        monitor = _find_monitor(driver.app)
    finally:
        try:
            await driver.shutdown()
        finally:
            driver.variant.close()

    stats = pstats.Stats(profiler)
    table: dict[_Key, tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    result = Profile(name, n, total / n * 1e6)
    if monitor is not None:
        outer = table.get(_code_key(type(monitor).__call__))
        inner = table.get(_code_key(type(monitor.app).__call__))
        if outer and inner:
            result.middleware_us = (outer[3] - inner[3]) / n * 1e6
            result.inner_app_us = inner[3] / n * 1e6

    def row(key: _Key) -> Row:
        _, calls, own, cumulative, _ = table[key]
        return Row(_label(key), calls / n, own / n * 1e6, cumulative / n * 1e6)

    ours = [k for k in table if k[0].startswith(_MIDDLEWARE_DIR)]
    result.mlwarden = sorted((row(k) for k in ours), key=lambda r: -r.cumulative_us)[:25]
    result.hottest = sorted((row(k) for k in table), key=lambda r: -r.own_us)[:20]
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
    result.text = out.getvalue()
    return result


def run_profiles(
    *, n: int, warmup: int, names: tuple[str, ...] = ("bare", "mlwarden", "mlwarden+tracing")
) -> list[Profile]:
    return [inprocess.run_async(_profile_one(name, n, warmup)) for name in names]
