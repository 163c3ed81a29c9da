"""The workload of every benchmark: a 20-feature JSON predict endpoint and its five variants.

The app is what a team would write: FastAPI, a pydantic model of 20 numeric features,
``POST /predict`` answering ``{"predictions": [p], "confidence": [c], "model_version": "1"}``.
Feature values are drawn from fixed distributions (normal, log-normal, uniform, exponential,
Poisson counts sent as JSON integers); the baseline is built from 50,000 rows of the same
distributions, so drift statistics see realistic, non-drifting traffic.

Variants (each built fresh, with its own Prometheus registry and tracer provider, and no
global OpenTelemetry provider, so FastAPI's own telemetry stays off):

- ``bare``: the app alone;
- ``mlwarden``: ``InferenceMonitor`` with a baseline, ``tracing=False``;
- ``mlwarden+tracing``: the same with an SDK ``TracerProvider`` → ``BatchSpanProcessor`` →
  an exporter that drops spans;
- ``instrumentator``: ``Instrumentator().instrument(app).expose(app)``;
- ``otel-asgi``: ``OpenTelemetryMiddleware`` with the same provider set-up.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "ABLATIONS",
    "FEATURES",
    "MULTI_MODEL",
    "NO_REQUEST_IDS",
    "VARIANTS",
    "DropSpanExporter",
    "Variant",
    "baseline",
    "build",
    "draw",
    "json_bodies",
    "make_app",
    "mlwarden_counts",
    "row_dicts",
]

FEATURES = tuple(f"f{i}" for i in range(20))
VARIANTS = ("bare", "mlwarden", "mlwarden+tracing", "instrumentator", "otel-asgi")
#: mlwarden without request ids (nothing remembered for labels): prices that feature.
NO_REQUEST_IDS = "mlwarden -request ids"
#: mlwarden (tracing off) watching several models: the model read from the path (``/{name}``,
#: so ``/predict`` is model ``predict``), its baseline from a mapping; prices the lookup.
MULTI_MODEL = "mlwarden multi-model"
# mlwarden (tracing off) with one step of its recording switched off, to price each step
# without a profiler's distortion: the method named is replaced by a no-op in a subclass.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "mlwarden -payload": ("_read_payload",),
    "mlwarden -predictions": ("_read_predictions",),
    "mlwarden -both": ("_read_payload", "_read_predictions"),
}
MODEL_NAME, MODEL_VERSION = "bench", "1"
_WEIGHTS = tuple(((-1) ** i) * (0.05 + 0.01 * i) for i in range(20))


# --------------------------------------------------------------------------- data


def draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` rows of the 20 features, by column; every fifth feature is an integer count."""
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(FEATURES):
        kind = i % 5
        if kind == 0:
            values = rng.normal(loc=i, scale=1.0 + i / 10, size=n)
        elif kind == 1:
            values = rng.lognormal(mean=1.0, sigma=0.5, size=n)
        elif kind == 2:
            values = rng.uniform(0.0, 100.0, size=n)
        elif kind == 3:
            values = rng.exponential(scale=2.0 + i / 10, size=n)
        else:
            columns[name] = rng.poisson(lam=3 + i / 5, size=n).astype(np.int64)
            continue
        columns[name] = np.round(values, 4)
    return columns


@functools.cache
def baseline() -> Any:
    """The baseline profile of the 20 features (50,000 reference rows, fixed seed)."""
    from mlwarden.middleware.baseline import build_baseline

    return build_baseline(draw(np.random.default_rng(0), 50_000), source="benchmarks")


def row_dicts(n: int, seed: int) -> list[dict[str, float | int]]:
    """``n`` request payloads as the client would build them (JSON-native values)."""
    columns = {k: v.tolist() for k, v in draw(np.random.default_rng(seed), n).items()}
    return [{name: columns[name][r] for name in FEATURES} for r in range(n)]


def json_bodies(n: int, seed: int) -> list[bytes]:
    """``n`` distinct request bodies, serialised like an HTTP client would."""
    return [json.dumps(row).encode() for row in row_dicts(n, seed)]


# --------------------------------------------------------------------------- the app


def make_app() -> Any:
    """The model server: FastAPI, pydantic validation, a small logistic 'model'."""
    from fastapi import FastAPI
    from pydantic import create_model

    features_model = create_model(  # type: ignore[call-overload]
        "Features", **{name: (float, ...) for name in FEATURES}
    )
    app = FastAPI(title="bench model", docs_url=None, redoc_url=None, openapi_url=None)

    async def predict(payload: Any) -> dict[str, Any]:
        values = payload.model_dump()
        z = sum(w * values[name] for w, name in zip(_WEIGHTS, FEATURES, strict=True))
        p = 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))
        return {
            "predictions": [round(p, 6)],
            "confidence": [round(max(p, 1.0 - p), 6)],
            "model_version": MODEL_VERSION,
        }

    # The body model is made at run time: give FastAPI the class, not a string annotation.
    predict.__annotations__["payload"] = features_model
    app.add_api_route("/predict", predict, methods=["POST"])
    return app


# --------------------------------------------------------------------------- tracing


class DropSpanExporter(SpanExporter):
    """A ``SpanExporter`` whose ``export`` returns ``SUCCESS`` and keeps nothing.

    The export path runs (batching, the worker thread) without an exporter's I/O.
    """

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _tracer_provider() -> tuple[Any, Any]:
    exporter = DropSpanExporter()
    # Not set globally: FastAPI 0.165 instruments itself as soon as a global SDK provider
    # exists, which would add its own spans to every variant.
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    """One variant's ASGI app, and what to check and close after a run."""

    name: str
    app: Any
    registry: Any = None
    provider: Any = None
    exporter: Any = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
        for closer in self.closers:
            closer()

    def spans_exported(self) -> int | None:
        if self.provider is None:
            return None
        self.provider.force_flush()
        return int(self.exporter.exported)


def build(name: str) -> Variant:
    """A fresh instance of variant ``name`` (one of :data:`VARIANTS`)."""
    from prometheus_client import CollectorRegistry

    app = make_app()
    if name == "bare":
        return Variant(name, app)
    if name == MULTI_MODEL:
        from mlwarden.middleware import InferenceMonitor

        registry = CollectorRegistry()
        app.add_middleware(
            InferenceMonitor,
            model_paths=["/{name}"],
            baselines={"predict": baseline()},
            model_version=MODEL_VERSION,
            confidence_path="confidence",
            registry=registry,
            tracing=False,
        )
        return Variant(name, app, registry=registry)
    if name in ("mlwarden", "mlwarden+tracing", NO_REQUEST_IDS) or name in ABLATIONS:
        from mlwarden.middleware import InferenceMonitor

        monitor: type = InferenceMonitor
        if name in ABLATIONS:
            monitor = _without(InferenceMonitor, ABLATIONS[name])
        registry = CollectorRegistry()
        tracing = name == "mlwarden+tracing"
        provider, exporter = _tracer_provider() if tracing else (None, None)
        app.add_middleware(
            monitor,
            model_name=MODEL_NAME,
            model_version=MODEL_VERSION,
            baseline=baseline(),
            confidence_path="confidence",
            registry=registry,
            tracing=tracing,
            tracer_provider=provider,
            **({"request_id_header": None} if name == NO_REQUEST_IDS else {}),
        )
        return Variant(name, app, registry=registry, provider=provider, exporter=exporter)
    if name == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        registry = CollectorRegistry()
        Instrumentator(registry=registry).instrument(app).expose(app)
        return Variant(name, app, registry=registry)
    if name == "otel-asgi":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        provider, exporter = _tracer_provider()
        app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
        return Variant(name, app, provider=provider, exporter=exporter)
    raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")


def _without(monitor: type, methods: tuple[str, ...]) -> type:
    missing = [m for m in methods if not callable(getattr(monitor, m, None))]
    if missing:
        raise AttributeError(f"InferenceMonitor has no {missing}: update ABLATIONS")

    def skip(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    return type(f"{monitor.__name__}Without", (monitor,), dict.fromkeys(methods, skip))


def mlwarden_counts(variant: Variant) -> dict[str, float]:
    """What the mlwarden variants recorded: proof that features and predictions were read."""
    if not variant.name.startswith("mlwarden") or variant.registry is None:
        return {}
    model = "predict" if variant.name == MULTI_MODEL else MODEL_NAME
    labels = {"model": model, "version": MODEL_VERSION}
    get = variant.registry.get_sample_value
    out = {
        "rows_scored": get("mlwarden_rows_scored_total", labels) or 0.0,
        "confidences": get("mlwarden_prediction_confidence_count", labels) or 0.0,
        "drift_evaluations": get("mlwarden_drift_evaluations_total", labels) or 0.0,
        "payload_errors": 0.0,
        "predictions_skipped": 0.0,
    }
    for metric in variant.registry.collect():
        for sample in metric.samples:
            if sample.name == "mlwarden_payload_errors_total":
                out["payload_errors"] += sample.value
            elif sample.name == "mlwarden_predictions_skipped_total":
                out["predictions_skipped"] += sample.value
    return out
