"""The ASGI apps the proxy benchmark serves with uvicorn: the model upstream and two naive proxies.

- :data:`upstream_app`: the model server every variant of ``benchmarks.proxy`` stands in front
  of. ``POST`` anything: it reads the body and answers a fixed ~200-byte JSON prediction;
  ``GET /-/health`` answers the middleware's health report shape (``{"status": "ok"}``), which
  the sidecar's health checks read. Raw ASGI, so the upstream costs as little as possible and
  the proxies' own cost stands out.
- :func:`aiohttp_proxy` and :func:`httpx_proxy` (uvicorn ``--factory``): what a team writes
  when it needs a proxy in an afternoon. Starlette, one catch-all route, one shared client made
  in the lifespan (aiohttp's ``ClientSession``; httpx's ``AsyncClient`` with its default
  limits), the request body read whole, hop-by-hop headers dropped, the response streamed
  back. No retries, no breakers, no health checks.

Configured by environment variables, since uvicorn imports the apps by name (the client
libraries are imported only by the factories): ``BENCH_UPSTREAM_URL`` (the proxies' upstream)
and ``BENCH_UPSTREAM_NAME`` (the version the upstream names in its answers).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["HOP_BY_HOP", "aiohttp_proxy", "httpx_proxy", "prediction_body", "upstream_app"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Dropped in both directions by the naive proxies, as most hand-written proxies do.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "proxy-connection",
    }
)


def prediction_body(version: str) -> bytes:
    """The upstream's answer: a prediction of about 200 bytes that names its version."""
    payload = {
        "predictions": [0.8312455],
        "confidence": [0.9127],
        "label": "churn",
        "model_version": version,
        "model": "gradient-boosted-trees",
        "features_used": 20,
        "explanation": {"top_feature": "f7", "weight": 0.2113},
    }
    body = json.dumps(payload, separators=(",", ":")).encode()
    return body + b" " * max(0, 200 - len(body))


_VERSION = os.environ.get("BENCH_UPSTREAM_NAME", "primary")
_PREDICTION = prediction_body(_VERSION)
_PREDICTION_HEAD = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_PREDICTION)).encode()),
]
_HEALTH = b'{"status":"ok","reasons":[]}'
_HEALTH_HEAD = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTH)).encode()),
]


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The model server: a fixed prediction to every request, the health report on GET."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    if scope["method"] == "GET" and scope["path"] == "/-/health":
        body, head = _HEALTH, _HEALTH_HEAD
    else:
        body, head = _PREDICTION, _PREDICTION_HEAD
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _upstream_url() -> str:
    url = os.environ.get("BENCH_UPSTREAM_URL")
    if not url:
        raise RuntimeError("set BENCH_UPSTREAM_URL to the upstream's base URL")
    return url.rstrip("/")


def _forward_headers(items: Any) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in HOP_BY_HOP}


def aiohttp_proxy() -> Any:
    """The naive proxy with aiohttp's client (a uvicorn ``--factory``)."""
    import aiohttp
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    upstream = _upstream_url()
    clients: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clients["session"] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False
        )
        try:
            yield
        finally:
            await clients["session"].close()

    async def forward(request: Request) -> StreamingResponse:
        body = await request.body()
        url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = await clients["session"].request(
            request.method, url, data=body, headers=_forward_headers(request.headers.items())
        )

        async def release() -> None:
            # Async on purpose: Starlette runs a sync background task (aiohttp's ``release``)
            # in its thread pool, a thread hop per request that would be unfair to count.
            response.release()

        return StreamingResponse(
            response.content.iter_any(),
            status_code=response.status,
            headers=_forward_headers(response.headers.items()),
            background=BackgroundTask(release),
        )

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def httpx_proxy() -> Any:
    """The naive proxy with httpx's client (a uvicorn ``--factory``)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    upstream = _upstream_url()
    clients: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # httpx's default limits (100 connections, 20 kept alive): what a naive proxy gets.
        clients["client"] = httpx.AsyncClient(base_url=upstream, timeout=30.0)
        try:
            yield
        finally:
            await clients["client"].aclose()

    async def forward(request: Request) -> StreamingResponse:
        body = await request.body()
        client = clients["client"]
        outgoing = client.build_request(
            request.method,
            request.url.path,
            params=request.url.query or None,
            headers=_forward_headers(request.headers.items()),
            content=body,
        )
        response = await client.send(outgoing, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=_forward_headers(response.headers.items()),
            background=BackgroundTask(response.aclose),
        )

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)
