"""The same sidecar served by another HTTP server, for the side-by-side serving-layer benchmark.

``MLWARDEN_BENCH_SIDECAR_CONFIG=FILE python3 -m benchmarks.serve_sidecar uvicorn`` serves the
proxy of a sidecar built from FILE (as ``mlwarden sidecar`` builds it) with uvicorn (httptools,
uvloop), on the config's ``listen`` address; ``granian --interface asgi --factory
benchmarks.serve_sidecar:proxy_app`` serves it with granian. The ASGI lifespan starts and stops
the sidecar. Only the serving layer differs from ``mlwarden sidecar``: the edge's limits of
the sidecar's own server are not there (neither server has all of them).
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["proxy_app"]


def _config() -> Any:
    from mlwarden.sidecar.settings import load_sidecar_config

    return load_sidecar_config(os.environ["MLWARDEN_BENCH_SIDECAR_CONFIG"])


def proxy_app() -> Any:
    """The sidecar's proxy as an ASGI app (lifespan on: it starts and stops the sidecar)."""
    from prometheus_client import REGISTRY

    from mlwarden.sidecar.app import Sidecar

    return Sidecar(_config(), registry=REGISTRY).proxy


def main(argv: list[str]) -> int:
    if argv != ["uvicorn"]:
        print("usage: python3 -m benchmarks.serve_sidecar uvicorn", file=sys.stderr)
        return 2
    import uvicorn

    config = _config()
    uvicorn.run(
        proxy_app(),
        host=config.listen.host,
        port=config.listen.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        headers=[("server", "mlwarden")],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
