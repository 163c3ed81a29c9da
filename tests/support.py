"""Shared helpers for the tests: baselines, traffic, registry inspection."""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import CollectorRegistry

from mlwarden.middleware.baseline import BaselineProfile, build_baseline
from tests.apps import FEATURES

MEANS = {name: 10.0 * i for i, name in enumerate(FEATURES)}
STDS = {name: 1.0 + i for i, name in enumerate(FEATURES)}


def reference_rows(n: int, seed: int = 0, shift: dict[str, float] | None = None) -> list[dict]:
    """Rows drawn from the baseline distribution; ``shift`` moves a feature by k std."""
    rng = np.random.default_rng(seed)
    shift = shift or {}
    cols = {
        name: rng.normal(MEANS[name] + shift.get(name, 0.0) * STDS[name], STDS[name], n)
        for name in FEATURES
    }
    return [{name: float(cols[name][i]) for name in FEATURES} for i in range(n)]


#: A categorical feature for the tests that need one (the chi-square statistic), in shares
#: of 5, 3 and 2 tenths.
SEGMENTS = ("retail",) * 5 + ("business",) * 3 + ("public",) * 2


def segment(i: int) -> str:
    """The ``i``-th row's segment: every ten rows hold the baseline's shares."""
    return SEGMENTS[i % len(SEGMENTS)]


def make_baseline(n: int = 20_000, seed: int = 12345, *, segments: bool = False) -> BaselineProfile:
    """The numeric features ``f0``…``f4``; with ``segments``, a categorical ``segment`` too."""
    rng = np.random.default_rng(seed)
    columns: dict = {name: rng.normal(MEANS[name], STDS[name], n) for name in FEATURES}
    if segments:
        columns["segment"] = np.array([segment(i) for i in range(n)], dtype=object)
    return build_baseline(columns, source="tests")


def settled_series(
    registry: CollectorRegistry, *, timeout: float = 5.0
) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """The series once the server has finished recording: the middleware records after the
    response's last byte, so a client may read a response before its request is counted."""
    deadline = time.monotonic() + timeout
    current = series(registry)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        latest = series(registry)
        if latest == current:
            return latest
        current = latest
    return current


def series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every sample's name and labels: the series a scrape would see."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for metric in registry.collect()
        for sample in metric.samples
    }
