"""The floor of a Python proxy here: the sidecar's server and upstream client, no decisions.

``python3 -m benchmarks.floor_proxy PORT UPSTREAM_URL`` serves ``127.0.0.1:PORT`` with the
sidecar's own HTTP server (:mod:`mlwarden.sidecar.server`) and forwards every request through
one :class:`~mlwarden.sidecar.upstream.UpstreamPool`: no retries, breakers, routing, metrics,
header rewriting or deadlines beyond the pool's. What it costs per request is what any proxy
built of these parts costs before it decides anything (``benchmarks/serving_layers.py``).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from mlwarden.sidecar.edge import EdgeCounts, EdgeLimits
from mlwarden.sidecar.server import HttpServer
from mlwarden.sidecar.upstream import UpstreamPool

_DROPPED = frozenset({b"date", b"server", b"connection", b"keep-alive", b"transfer-encoding"})


async def serve(port: int, upstream: str) -> None:
    pool = UpstreamPool(upstream, max_connections=100)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        response = await pool.request(
            scope["method"], scope["raw_path"], scope["headers"], message["body"], timeout_s=5
        )
        body = await response.read()
        await response.aclose()
        headers = [(n, v) for n, v in response.headers if n not in _DROPPED]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    server = HttpServer(
        app,
        host="127.0.0.1",
        port=port,
        limits=EdgeLimits(61_440, 100, 10.0),
        counts=EdgeCounts(),
        drain_timeout_s=1.0,
        default_headers=[(b"server", b"floor")],
    )
    await server.serve()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m benchmarks.floor_proxy PORT UPSTREAM_URL", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(int(argv[0]), argv[1]))
    else:
        uvloop.run(serve(int(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
