"""Small real model servers for the tests: in FastAPI, in Starlette, and a raw ASGI model
version for the sidecar tests."""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from fastapi.responses import JSONResponse as FastJSON
from fastapi.responses import PlainTextResponse as FastText
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.servers import relay_body

FEATURES = [f"f{i}" for i in range(5)]


def _score(row: dict[str, Any]) -> float:
    total = 0.0
    for name in FEATURES:
        value = row.get(name)
        if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
            total += float(value)
    return 1.0 / (1.0 + 2.718281828 ** (-total / 10))


def _predictions(payload: Any) -> list[dict[str, Any]]:
    rows = payload.get("instances") if isinstance(payload, dict) else None
    if rows is None:
        rows = [payload] if isinstance(payload, dict) else []
    out = []
    for row in rows:
        p = _score(row) if isinstance(row, dict) else 0.5
        out.append({"label": "yes" if p >= 0.5 else "no", "probability": max(p, 1 - p)})
    return out


async def _chunks(n: int, fail_at: int | None = None) -> AsyncIterator[bytes]:
    for i in range(n):
        if fail_at is not None and i == fail_at:
            raise RuntimeError("stream broke")
        yield f"chunk {i}\n".encode()
        await asyncio.sleep(0.005)


class Boom(RuntimeError):
    pass


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    app.state.started = True
    yield
    app.state.stopped = True


# -- Starlette -------------------------------------------------------------------------------


async def s_predict(request: Request) -> Response:
    try:
        payload = await request.json()
    except ValueError:
        return PlainTextResponse("bad json", status_code=400)
    return JSONResponse({"predictions": _predictions(payload)})


async def s_echo(request: Request) -> Response:
    body = await request.body()
    media_type = request.headers.get("content-type", "application/octet-stream")
    return Response(body, media_type=media_type, headers={"x-length": str(len(body))})


async def s_ignore_body(request: Request) -> Response:
    return JSONResponse({"predictions": [0.5]}, status_code=http.HTTPStatus.OK)


async def s_stream(request: Request) -> Response:
    return StreamingResponse(_chunks(5), media_type="text/plain")


async def s_stream_fail(request: Request) -> Response:
    return StreamingResponse(_chunks(5, fail_at=2), media_type="text/plain")


async def s_boom(request: Request) -> Response:
    raise Boom("model exploded")


async def s_item(request: Request) -> Response:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def s_enum_status(request: Request) -> Response:
    return Response(b"created", status_code=http.HTTPStatus.CREATED)


async def s_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        try:
            text = await websocket.receive_text()
        except Exception:
            return
        await websocket.send_text(f"echo:{text}")


def starlette_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/models/m:predict", s_predict, methods=["POST"]),
            Route("/predict", s_predict, methods=["POST"]),
            Route("/echo/predict", s_echo, methods=["POST"]),
            Route("/ignore/predict", s_ignore_body, methods=["POST"]),
            Route("/stream/predict", s_stream, methods=["POST"]),
            Route("/stream-fail/predict", s_stream_fail, methods=["POST"]),
            Route("/boom/predict", s_boom, methods=["POST"]),
            Route("/items/{item_id}", s_item),
            Route("/created", s_enum_status, methods=["POST"]),
            WebSocketRoute("/ws", s_ws),
        ],
        lifespan=_lifespan,
    )
    return app


def gzip_app() -> Starlette:
    """A model server that compresses its own responses when the client accepts gzip."""
    app = starlette_app()
    app.add_middleware(GZipMiddleware, minimum_size=10)
    return app


# -- FastAPI ---------------------------------------------------------------------------------


def fastapi_app(**kwargs: Any) -> FastAPI:
    app = FastAPI(lifespan=_lifespan, **kwargs)

    @app.post("/predict")
    async def predict(request: FastAPIRequest) -> Any:
        try:
            payload = await request.json()
        except ValueError:
            return FastText("bad json", status_code=400)
        return {"predictions": _predictions(payload)}

    @app.post("/echo/predict")
    async def echo(request: FastAPIRequest) -> Any:
        body = await request.body()
        return Response(
            body,
            media_type=request.headers.get("content-type", "text/plain"),
            headers={"x-length": str(len(body))},
        )

    @app.post("/stream/predict")
    async def stream() -> Any:
        return StreamingResponse(_chunks(5), media_type="text/plain")

    @app.post("/stream-fail/predict")
    async def stream_fail() -> Any:
        return StreamingResponse(_chunks(5, fail_at=2), media_type="text/plain")

    @app.post("/boom/predict")
    async def boom() -> Any:
        raise Boom("model exploded")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> Any:
        return FastJSON({"item": item_id})

    @app.post("/created", status_code=http.HTTPStatus.CREATED)
    async def created() -> Any:
        return {"ok": True}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await s_ws(websocket)

    return app


# -- A model version behind the sidecar -------------------------------------------------------


class FakeVersion:
    """One model version as the sidecar sees it: ``/-/health`` answers ``{"status": "ok"}``,
    any other request is a prediction.

    A prediction is ``{"predictions": [label]}``, or with ``echo=True`` the request body sent
    back as it arrives. Every prediction carries ``x-version: <name>``. Requests numbered (from
    1) up to ``fail_first``, and every ``error_every``-th, are answered 503 ``<name> failed``;
    every ``differ_every``-th predicts ``"other"``; each one first waits ``hang_s``. ``hits``
    counts the predictions asked for, ``shadow_hits`` those sent as shadow copies.
    """

    def __init__(
        self,
        name: str = "model",
        *,
        label: Any = None,
        echo: bool = False,
        fail_first: int = 0,
        error_every: int = 0,
        hang_s: float = 0.0,
        differ_every: int = 0,
    ) -> None:
        if echo == (label is not None):
            raise ValueError(f"FakeVersion {name!r}: give label= or echo=True, exactly one")
        if echo and differ_every:
            raise ValueError(
                f"FakeVersion {name!r}: differ_every changes the label; an echo has none"
            )
        if min(fail_first, error_every, hang_s, differ_every) < 0:
            raise ValueError(f"FakeVersion {name!r}: counts and hang_s must be >= 0")
        self.name = name
        self.label = label
        self.echo = echo
        self.fail_first = fail_first
        self.error_every = error_every
        self.hang_s = hang_s
        self.differ_every = differ_every
        self.hits = 0
        self.shadow_hits = 0

    def __repr__(self) -> str:
        answer = "echo=True" if self.echo else f"label={self.label!r}"
        options = "".join(
            f", {k}={v!r}"
            for k in ("fail_first", "error_every", "hang_s", "differ_every")
            if (v := getattr(self, k))
        )
        return f"FakeVersion({self.name!r}, {answer}{options})"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/-/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"status": "ok"}'})
            return
        self.hits += 1
        hit = self.hits
        if (b"x-mlwarden-shadow", b"1") in scope["headers"]:
            self.shadow_hits += 1
        if self.hang_s:
            await asyncio.sleep(self.hang_s)  # bounded by the caller's hang_s
        if hit <= self.fail_first or (self.error_every and hit % self.error_every == 0):
            await _drain(receive)
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": f"{self.name} failed".encode()})
            return
        if self.echo:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"x-version", self.name.encode())],
                }
            )
            await relay_body(receive, send)
            return
        await _drain(receive)
        label = "other" if self.differ_every and hit % self.differ_every == 0 else self.label
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-version", self.name.encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": json.dumps({"predictions": [label]}).encode()}
        )


async def _drain(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass
