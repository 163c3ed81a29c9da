"""The demo's model server: a churn classifier trained at start, served with the middleware.

``python -m mlwarden.sidecar.demo.model --version v1 --port 8001`` draws synthetic customers
(:func:`customers`), labels them with a fixed "world" (:func:`churn_probability`, which no
model sees), trains a logistic regression on them with numpy (:class:`ChurnModel`), profiles
the same rows as the middleware's drift baseline, and serves
``POST /v1/models/churn:predict`` (KServe v1: ``{"instances": [...]}``) under uvicorn on
loopback with :class:`~mlwarden.middleware.InferenceMonitor` added, as a team would add it.

A demo-only route injects the "candidate errors" fault: ``POST /-/demo/fault`` with
``{"error_rate": 0.4}`` makes that share of predictions answer 500. A fault switch is not
something a model server should have; it lives here, in the demo, and nowhere else.
"""

from __future__ import annotations

import argparse
import math
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.middleware import InferenceMonitor
from mlwarden.middleware.baseline import BaselineProfile, build_baseline

__all__ = [
    "FEATURES",
    "MODEL_PATH",
    "PLANS",
    "ChurnModel",
    "churn_probability",
    "customers",
    "make_model_app",
    "parse_shift",
]

MODEL_PATH = "/v1/models/churn:predict"
FAULT_PATH = "/-/demo/fault"
PLANS = ("basic", "plus", "pro")
FEATURES = {
    # name: (mean, std) of the numeric features in the training population
    "age": (41.0, 11.0),
    "tenure_months": (28.0, 14.0),
    "monthly_charges": (64.0, 18.0),
    "support_calls": (1.5, 1.2),
}
CLASSES = ("churn", "stay")


def customers(rows: int, seed: int, *, shift: dict[str, float] | None = None) -> list[dict]:
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


def churn_probability(row: dict[str, Any]) -> float:
    """The world's answer (unknown to the models): the chance that this customer churns."""
    z = (
        -1.2
        + 0.035 * (float(row.get("monthly_charges") or 0) - 64)
        - 0.05 * (float(row.get("tenure_months") or 0) - 28)
        + 0.45 * (float(row.get("support_calls") or 0) - 1.5)
        + (0.4 if row.get("plan") == "basic" else 0.0)
    )
    return 1.0 / (1.0 + math.exp(-z))


def churned(rows: list[dict], seed: int) -> np.ndarray:
    """What really happened to each customer: 1 churned, 0 stayed (drawn from the world)."""
    rng = random.Random(seed)
    return np.array([1.0 if rng.random() < churn_probability(r) else 0.0 for r in rows])


@dataclass(frozen=True, slots=True)
class ChurnModel:
    """L2-regularised logistic regression on standardised numeric features + one-hot plan."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # intercept first

    @staticmethod
    def design(rows: list[dict]) -> np.ndarray:
        numeric = np.array([[float(r.get(n) or 0.0) for n in FEATURES] for r in rows])
        plans = np.array([[1.0 if r.get("plan") == p else 0.0 for p in PLANS[1:]] for r in rows])
        return np.hstack([numeric, plans]) if len(rows) else np.empty((0, len(FEATURES) + 2))

    @classmethod
    def train(
        cls, rows: list[dict], labels: np.ndarray, *, l2: float = 1.0, iterations: int = 25
    ) -> ChurnModel:
        """Newton's method (iteratively reweighted least squares) to convergence."""
        x = cls.design(rows)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
        w = np.zeros(z.shape[1])
        penalty = l2 * np.eye(z.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(z @ w)))
            gradient = z.T @ (p - labels) + penalty @ w
            hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if float(np.abs(step).max()) < 1e-8:
                break
        return cls(mean=mean, scale=scale, weights=w)

    def probabilities(self, rows: list[dict]) -> np.ndarray:
        x = (self.design(rows) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(self.weights[0] + x @ self.weights[1:])))

    def accuracy(self, rows: list[dict], labels: np.ndarray) -> float:
        return float(((self.probabilities(rows) >= 0.5) == (labels == 1.0)).mean())


def parse_shift(text: str) -> dict[str, float]:
    """``"monthly_charges=1.5,age=-1"`` → {feature: standard deviations}."""
    shift: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in FEATURES:
            raise ValueError(
                f"--shift: expected feature=stds with a feature among "
                f"{', '.join(FEATURES)}, got {part!r}"
            )
        shift[name] = float(value)
    return shift


@dataclass(slots=True)
class Trained:
    model: ChurnModel
    baseline: BaselineProfile
    holdout_accuracy: float


def train(seed: int, rows: int, shift: dict[str, float] | None = None) -> Trained:
    """A model and its drift baseline from the same synthetic training rows."""
    data = customers(rows, seed, shift=shift)
    model = ChurnModel.train(data, churned(data, seed + 1))
    holdout = customers(1_000, seed + 2, shift=shift)
    columns = {name: np.array([r[name] for r in data]) for name in (*FEATURES, "plan")}
    baseline = build_baseline(columns, source=f"demo training data (seed {seed}, {rows} rows)")
    return Trained(model, baseline, model.accuracy(holdout, churned(holdout, seed + 3)))


def make_model_app(
    model: ChurnModel, baseline: BaselineProfile, *, version: str, seed: int = 0, **options: Any
) -> Starlette:
    """The model server, with the middleware added as a team would add it."""
    fault = {"error_rate": 0.0}
    rng = random.Random(seed)

    async def predict(request: Request) -> JSONResponse:
        payload = await request.json()
        if fault["error_rate"] and rng.random() < fault["error_rate"]:
            return JSONResponse({"error": "model failed (injected fault)"}, status_code=500)
        rows = payload.get("instances", [])
        predictions = []
        for p in model.probabilities(rows).tolist():
            label = CLASSES[0] if p >= 0.5 else CLASSES[1]
            predictions.append({"label": label, "probability": round(max(p, 1 - p), 4)})
        return JSONResponse({"predictions": predictions, "model_version": version})

    async def set_fault(request: Request) -> JSONResponse:
        body = await request.json()
        rate = body.get("error_rate") if isinstance(body, dict) else None
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            return JSONResponse(
                {"error": "error_rate: expected a number from 0 to 1"}, status_code=400
            )
        fault["error_rate"] = float(rate)
        return JSONResponse(fault)

    app = Starlette(
        routes=[
            Route(MODEL_PATH, predict, methods=["POST"]),
            Route(FAULT_PATH, set_fault, methods=["POST"]),
        ]
    )
    app.add_middleware(
        InferenceMonitor,
        model_name="churn",
        model_version=version,
        baseline=baseline,
        prediction_classes=list(CLASSES),
        **options,
    )
    return app


def bind_when_free(port: int, timeout_s: float) -> socket.socket:
    """A listening socket on 127.0.0.1:``port``, retried while the old server still holds it.

    This is how the demo redeploys a retrained model with next to no downtime: the new
    process trains first, then takes the port over the moment the old one lets it go.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        sock.listen(1024)
        sock.set_inheritable(True)
        return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The mlwarden demo's model server.")
    parser.add_argument("--version", required=True, help="the model version it reports")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rows", type=int, default=4_000, help="training rows")
    parser.add_argument(
        "--shift",
        type=parse_shift,
        default={},
        help="train on shifted data, e.g. monthly_charges=1.5 (a retrain)",
    )
    parser.add_argument(
        "--window-rows",
        type=int,
        default=400,
        help="rows in the drift window (small: the demo is short)",
    )
    parser.add_argument(
        "--trained-file",
        type=Path,
        default=None,
        help="written once the model is trained, before the port is bound",
    )
    parser.add_argument(
        "--take-over-s",
        type=float,
        default=0.0,
        help="wait up to this long for the port to be free (a redeploy)",
    )
    args = parser.parse_args(argv)
    trained = train(args.seed, args.rows, args.shift)
    print(
        f"model {args.version}: trained on {args.rows} rows"
        + (f" shifted {args.shift}" if args.shift else "")
        + f", holdout accuracy {trained.holdout_accuracy:.3f}",
        flush=True,
    )
    app = make_model_app(
        trained.model,
        trained.baseline,
        version=args.version,
        seed=args.seed,
        window_rows=args.window_rows,
        window_seconds=20.0,
        drift_interval_s=1.0,
        drift_every_rows=100,
        health={"window_s": 8.0},
    )
    if args.trained_file is not None:
        args.trained_file.write_text(f"{trained.holdout_accuracy:.4f}\n")
    sock = bind_when_free(args.port, args.take_over_s)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
