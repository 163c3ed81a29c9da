"""``mlwarden_build_info``: which mlwarden a process runs, on which Python.

The ``<name>_build_info`` convention of Prometheus exporters (``prometheus_build_info``,
``go_build_info``): a gauge at 1 whose labels say the build, so that a query can count the
processes per version or join the version onto other series. Labels: ``version`` (the
installed distribution's, ``unknown`` when not installed), ``revision`` (the commit, known when
pip installed from a git URL, else ``unknown``) and ``python_version`` (like ``goversion``).
Both the middleware's and the sidecar's exposition carry it, once per registry.
"""

from __future__ import annotations

import json
import platform
import threading
import weakref
from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["BUILD_INFO", "build_labels", "register_build_info"]

BUILD_INFO = "mlwarden_build_info"
_LABELS = ("version", "revision", "python_version")
_UNKNOWN = "unknown"

_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_lock = threading.Lock()


def build_labels(distribution: str = "mlwarden") -> dict[str, str]:
    """The labels of ``mlwarden_build_info`` for ``distribution`` as installed here."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return {"version": _UNKNOWN, "revision": _UNKNOWN, "python_version": _python()}
    return {
        "version": dist.version or _UNKNOWN,
        "revision": _revision(dist),
        "python_version": _python(),
    }


def register_build_info(registry: CollectorRegistry) -> None:
    """Add ``mlwarden_build_info`` to ``registry`` unless it is there already (the
    middleware's and the sidecar's metrics may share one registry)."""
    with _lock:
        if registry in _registered:
            return
        gauge = Gauge(
            BUILD_INFO,
            "The mlwarden build this process runs (always 1): version, revision, Python.",
            _LABELS,
            registry=registry,
            multiprocess_mode="max",
        )
        labels = build_labels()
        gauge.labels(*(labels[name] for name in _LABELS)).set(1)
        _registered.add(registry)


def _python() -> str:
    return platform.python_version()


def _revision(dist: metadata.Distribution) -> str:
    # PEP 610: pip records the commit of a VCS install in direct_url.json.
    try:
        text = dist.read_text("direct_url.json")
        commit = json.loads(text)["vcs_info"]["commit_id"] if text else None
    except (ValueError, KeyError, TypeError):
        commit = None
    return commit if isinstance(commit, str) and commit else _UNKNOWN
