"""Run inside a framework's own venv: train the two models, or serve the framework's real app.

``python serve.py train DIR`` fits two small LogisticRegressions with different feature counts
(``narrow``: 3 features, ``wide``: 5) in this venv's scikit-learn, saves them as joblib files,
their baselines as ``<model>.json`` and the predictions the models themselves give on a fixed
probe as ``expected.json``.

``python serve.py serve {mlserver,kserve} DIR --bare-port P --wrapped-port Q
[--metrics-port R]`` builds the framework's own ASGI app in this process (no CLI, no process
manager) with both models loaded, and serves it twice on 127.0.0.1 from one event loop: as
it is on the bare port, and wrapped in ``InferenceMonitor`` on the wrapped port, so both
ports answer from the same loaded models. MLServer serves its metrics on a separate app
(its metrics server), served on ``--metrics-port``. The middleware watches ``narrow`` only
(one model per middleware for now).

This file imports nothing from the test suite: the framework venvs hold the framework, the
middleware and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

import numpy as np

MODELS = {"narrow": 3, "wide": 5}
PROBE_ROWS = 4
HOST = "127.0.0.1"


def _data(name: str, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    width = MODELS[name]
    rng = np.random.default_rng(width)
    x = rng.normal(0.0, 1.0, (n, width))
    y = (x @ rng.normal(0.0, 1.0, width) > 0).astype(int)
    return x, y


def probe(name: str) -> list[list[float]]:
    """The rows every test sends to ``name`` (the same in the test process and here)."""
    x, _ = _data(name)
    return np.round(x[:PROBE_ROWS], 6).tolist()


def train(directory: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    from mlwarden.middleware.baseline import build_baseline

    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name in MODELS:
        x, y = _data(name)
        model = LogisticRegression().fit(x, y)
        joblib.dump(model, directory / f"{name}.joblib")
        columns = {f"f{i}": x[:, i] for i in range(x.shape[1])}
        profile = build_baseline(columns, source=f"frameworks:{name}")
        profile.save(directory / f"{name}.json")
        expected[name] = model.predict(np.asarray(probe(name))).tolist()
    (directory / "expected.json").write_text(json.dumps(expected))


def wrap(app, directory: Path):
    """One monitor for both models: each request's model from its path (OIP v2, KServe v1),
    each model's baseline ``<model>.json`` from ``directory``."""
    from mlwarden.middleware import InferenceMonitor

    return InferenceMonitor(app, baselines=str(directory), model_version="1")


async def mlserver_apps(directory: Path, metrics_port: int) -> tuple[object, object]:
    """MLServer's REST app (``mlserver.rest.app.create_app``) with both models loaded in its
    model registry, and its metrics server's app: wired as ``mlserver.MLServer`` wires them,
    without the process-level parts (signal handlers, gRPC server, parallel workers)."""
    from mlserver.handlers import DataPlane, ModelRepositoryHandlers
    from mlserver.metrics import MetricsServer
    from mlserver.registry import MultiModelRegistry
    from mlserver.repository.factory import ModelRepositoryFactory
    from mlserver.rest.app import create_app
    from mlserver.settings import ModelParameters, ModelSettings, Settings
    from mlserver_sklearn import SKLearnModel

    settings = Settings(
        host=HOST,
        parallel_workers=0,
        metrics_endpoint="/metrics",
        metrics_port=metrics_port,
        model_repository_root=str(directory),
        load_models_at_startup=False,
    )
    registry = MultiModelRegistry()
    data_plane = DataPlane(settings=settings, model_registry=registry)
    handlers = ModelRepositoryHandlers(
        repository=ModelRepositoryFactory.resolve_model_repository(settings),
        model_registry=registry,
    )
    app = create_app(settings, data_plane=data_plane, model_repository_handlers=handlers)
    for name in MODELS:
        await registry.load(
            ModelSettings(
                name=name,
                implementation=SKLearnModel,
                parameters=ModelParameters(uri=str(directory / f"{name}.joblib"), version="1"),
            )
        )
    # MetricsServer builds its app in __init__ (what MLServer.start serves on metrics_port).
    return app, MetricsServer(settings)._app


def kserve_app(directory: Path) -> object:
    """KServe's ModelServer app (``kserve.model_server.app``) with its endpoints registered by
    its RESTServer, and two ``kserve.Model`` subclasses serving the joblib files."""
    import joblib
    import kserve
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer
    from kserve.utils.utils import get_predict_input, get_predict_response

    class SKLearn(kserve.Model):
        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            self.path = path
            self.model = None

        def load(self) -> bool:
            self.model = joblib.load(self.path)
            self.ready = True
            return self.ready

        async def predict(self, payload, headers=None, response_headers=None):
            # What KServe's own sklearnserver does with either protocol's payload.
            labels = self.model.predict(get_predict_input(payload))
            return get_predict_response(payload, labels, self.name)

    server = kserve.ModelServer(enable_grpc=False, workers=1)
    for name in MODELS:
        model = SKLearn(name, directory / f"{name}.joblib")
        model.load()
        server.register_model(model)
    rest = RESTServer(
        "kserve.model_server:app",
        server.dataplane,
        server.model_repository_extension,
        http_port=0,
    )
    rest.create_application()
    return app


def _server(app, port: int, *, lifespan: str):
    import uvicorn

    config = uvicorn.Config(
        app, host=HOST, port=port, lifespan=lifespan, log_level="warning", access_log=False
    )
    return uvicorn.Server(config)


async def serve(args: argparse.Namespace) -> None:
    directory = Path(args.directory)
    extra = []
    if args.framework == "mlserver":
        app, metrics_app = await mlserver_apps(directory, args.metrics_port)
        extra.append(_server(metrics_app, args.metrics_port, lifespan="off"))
    else:
        app = kserve_app(directory)
    servers = [
        # The app's own lifespan runs once, under the wrapped port's server.
        _server(app, args.bare_port, lifespan="off"),
        _server(wrap(app, directory), args.wrapped_port, lifespan="on"),
        *extra,
    ]
    await asyncio.gather(*(s.serve() for s in servers))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="serve.py")
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train")
    t.add_argument("directory")
    s = commands.add_parser("serve")
    s.add_argument("framework", choices=("mlserver", "kserve"))
    s.add_argument("directory")
    s.add_argument("--bare-port", type=int, required=True)
    s.add_argument("--wrapped-port", type=int, required=True)
    s.add_argument("--metrics-port", type=int, default=0)
    args = parser.parse_args(argv)
    # KServe parses sys.argv when kserve.model_server is imported: leave it nothing of ours.
    sys.argv = sys.argv[:1]
    logging.basicConfig(level=logging.WARNING)
    if args.command == "train":
        train(Path(args.directory))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
