"""``mlwarden demo``: an example model server wrapped by the middleware, under traffic.

The model is a small churn classifier served by Starlette under uvicorn on loopback. Its
baseline is profiled from the same seeded training data it was "trained" on. The demo sends one
phase of traffic drawn from that distribution and one with ``monthly_charges`` shifted by one
standard deviation, and prints what the middleware measured after each.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from typing import Any

import httpx
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.baseline import BaselineProfile, build_baseline

__all__ = ["make_model_app", "run_demo", "training_data"]

MODEL_PATH = "/v1/models/churn:predict"
PLANS = ("basic", "plus", "pro")
FEATURES = {
    # name: (mean, std) of the numeric features
    "age": (41.0, 11.0),
    "tenure_months": (28.0, 14.0),
    "monthly_charges": (64.0, 18.0),
    "support_calls": (1.5, 1.2),
}


def training_data(rows: int, seed: int, *, shift: dict[str, float] | None = None) -> list[dict]:
    """Synthetic customers; ``shift`` adds that many standard deviations to a feature."""
    rng = random.Random(seed)
    shift = shift or {}
    out = []
    for _ in range(rows):
        row: dict[str, Any] = {}
        for name, (mean, std) in FEATURES.items():
            value = rng.gauss(mean + shift.get(name, 0.0) * std, std)
            row[name] = round(max(value, 0.0), 2)
        row["plan"] = rng.choices(PLANS, weights=(0.55, 0.3, 0.15))[0]
        out.append(row)
    return out


def demo_baseline(seed: int) -> BaselineProfile:
    rows = training_data(5_000, seed)
    columns = {name: np.array([r[name] for r in rows]) for name in (*FEATURES, "plan")}
    return build_baseline(columns, source="mlwarden demo training data")


def _churn_probability(row: dict[str, Any]) -> float:
    z = (
        -1.2
        + 0.035 * (float(row.get("monthly_charges") or 0) - 64)
        - 0.05 * (float(row.get("tenure_months") or 0) - 28)
        + 0.45 * (float(row.get("support_calls") or 0) - 1.5)
        + (0.4 if row.get("plan") == "basic" else 0.0)
    )
    return 1.0 / (1.0 + math.exp(-z))


async def _predict(request: Request) -> JSONResponse:
    payload = await request.json()
    predictions = []
    for row in payload.get("instances", []):
        p = _churn_probability(row)
        label = "churn" if p >= 0.5 else "stay"
        predictions.append({"label": label, "probability": round(max(p, 1 - p), 4)})
    return JSONResponse({"predictions": predictions})


def make_model_app(baseline: BaselineProfile, **options: Any) -> Starlette:
    """The example model server with the middleware added, as a team would add it."""
    app = Starlette(routes=[Route(MODEL_PATH, _predict, methods=["POST"])])
    app.add_middleware(
        InferenceMonitor, model_name="churn", model_version="1", baseline=baseline,
        prediction_classes=["churn", "stay"], **options,
    )
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _send_phase(client: httpx.AsyncClient, rows: list[dict], rng: random.Random) -> int:
    sent = i = 0
    while i < len(rows):
        size = rng.randint(1, 4)
        batch, i = rows[i:i + size], i + size
        response = await client.post(MODEL_PATH, json={"instances": batch})
        response.raise_for_status()
        sent += 1
    return sent


def _print_report(title: str, health: dict[str, Any], elapsed: float, sent: int) -> None:
    window, drift = health["window"], health["drift"]
    lat = window["latency_seconds"]
    print(f"\n== {title}: {sent} requests in {elapsed:.2f}s ==")
    print(f"health: {health['status']}" + (f" ({'; '.join(health['reasons'])})"
                                            if health["reasons"] else ""))
    print(f"window: {window['requests']} requests, error rate {window['error_rate']:.3f}, "
          f"latency p50 {lat['p50'] * 1000:.2f} ms, p99 {lat['p99'] * 1000:.2f} ms, "
          f"mean confidence {window['mean_confidence']:.3f}")
    verdict = ("DETECTED in " + ", ".join(drift["drifted_features"])
               if drift["detected"] else "none")
    print(f"drift: {verdict} ({drift.get('rows', 0)} rows in the window)")
    print(f"  {'feature':<16}{'mean':>10}{'psi':>9}{'ks':>8}{'chi2':>10}  drifted")
    for f in drift.get("features", []):
        scores = f.get("scores", {})

        def fmt(key: str, width: int, scores: dict = scores) -> str:
            v = scores.get(key)
            return f"{v:>{width}.3f}" if v is not None else " " * (width - 1) + "-"

        mean = f.get("mean")
        mean_s = f"{mean:>10.2f}" if mean is not None else " " * 9 + "-"
        print(f"  {f['name']:<16}{mean_s}{fmt('psi', 9)}{fmt('ks', 8)}{fmt('chi2', 10)}  "
              f"{'YES' if f['drifted'] else 'no'}")


async def _demo(requests: int, port: int, seed: int) -> int:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    baseline = demo_baseline(seed)
    rows_per_phase = requests * 5 // 2
    # The window holds one phase, so that phase 2's verdict is about phase 2's traffic.
    app = make_model_app(baseline, registry=registry, drift_interval_s=3600.0,
                         window_rows=rows_per_phase)
    port = port or _free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="on",
    ))
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if serving.done() or time.monotonic() > deadline:
            await serving
            print("mlwarden demo: the model server did not start")
            return 1
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    print(f"example model server on {base}{MODEL_PATH} with the mlwarden middleware")
    print(f"baseline: {len(baseline.features)} features profiled from {baseline.rows} rows")
    monitor = _find_monitor(app)
    rng = random.Random(seed)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for title, shift in (("phase 1: traffic like the training data", None),
                                 ("phase 2: monthly_charges shifted by +1 std",
                                  {"monthly_charges": 1.0})):
                rows = training_data(rows_per_phase, seed + 1 + len(title), shift=shift)
                started = time.perf_counter()
                sent = await _send_phase(client, rows, rng)
                elapsed = time.perf_counter() - started
                if monitor is not None and monitor.worker is not None:
                    monitor.worker.evaluate_now()
                health = (await client.get("/-/health")).json()
                _print_report(title, health, elapsed, sent)
            metrics = (await client.get("/metrics")).text
        shown = [line for line in metrics.splitlines()
                 if line.startswith(("mlwarden_rows_scored_total", "mlwarden_drift_detected",
                                     "mlwarden_predicted_class_total"))]
        print("\n/metrics (excerpt):\n  " + "\n  ".join(shown))
    finally:
        server.should_exit = True
        await serving
    return 0


def _find_monitor(app: Starlette) -> InferenceMonitor | None:
    node: Any = app.middleware_stack
    for _ in range(16):
        if isinstance(node, InferenceMonitor):
            return node
        node = getattr(node, "app", None)
    return None


def run_demo(*, requests: int = 400, port: int = 0, seed: int = 7) -> int:
    return asyncio.run(_demo(max(requests, 20), port, seed))
