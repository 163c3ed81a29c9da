"""The middleware leaves a real app's behaviour byte-for-byte the same, under uvicorn."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from websockets.sync.client import connect

from mlwarden.middleware import InferenceMonitor
from tests.apps import fastapi_app, gzip_app, starlette_app
from tests.servers import serve_app

pytestmark = pytest.mark.floor

FACTORIES = {"starlette": starlette_app, "fastapi": fastapi_app}
IGNORED_HEADERS = {"date"}


def wrapped(factory, registry: CollectorRegistry, **options):
    app = factory()
    app.add_middleware(
        InferenceMonitor, model_name="m", model_version="1", registry=registry, **options
    )
    return app


@pytest.fixture(params=sorted(FACTORIES))
def pair(request) -> Iterator[tuple[str, str, CollectorRegistry]]:
    """(bare url, wrapped url, the wrapped app's registry) for one framework."""
    factory = FACTORIES[request.param]
    registry = CollectorRegistry()
    with serve_app(factory()) as bare, serve_app(wrapped(factory, registry)) as mon:
        yield bare.url, mon.url, registry


def exchange(base: str, method: str, path: str, **kwargs) -> tuple[int, dict, bytes]:
    with httpx.Client(base_url=base, timeout=10) as client:
        response = client.request(method, path, **kwargs)
        headers = {k: v for k, v in response.headers.items() if k not in IGNORED_HEADERS}
        return response.status_code, headers, response.content


def without_request_id(result: tuple[int, dict, bytes]) -> tuple[int, dict, bytes]:
    """The wrapped answer less the one header the middleware adds: a scored request's id
    (``x-request-id``, for labels sent back later); everything else must be the bare app's."""
    status, headers, body = result
    return status, {k: v for k, v in headers.items() if k != "x-request-id"}, body


def assert_same(
    pair, method: str, path: str, *, chunks: list[bytes] | None = None, **kwargs
) -> tuple[int, dict, bytes]:
    bare, mon, _ = pair
    if chunks is not None:  # a streamed (chunked) request body, fresh for each server
        expected = exchange(bare, method, path, content=iter(chunks), **kwargs)
        got = exchange(mon, method, path, content=iter(chunks), **kwargs)
    else:
        expected = exchange(bare, method, path, **kwargs)
        got = exchange(mon, method, path, **kwargs)
    assert "x-request-id" not in expected[1]
    assert without_request_id(got) == expected
    return expected


def test_json_prediction_is_unchanged(pair):
    status, _, body = assert_same(pair, "POST", "/predict", json={"f0": 1.0, "f1": 2})
    assert status == 200 and json.loads(body)["predictions"]


def test_request_body_reaches_the_app_exactly(pair):
    body = bytes(range(256)) * 4096  # 1 MiB of every byte value, sent in chunks
    status, headers, echoed = assert_same(
        pair,
        "POST",
        "/echo/predict",
        chunks=[body[:300_000], body[300_000:]],
        headers={"content-type": "application/octet-stream"},
    )
    assert status == 200 and echoed == body and headers["x-length"] == str(len(body))


def test_body_larger_than_the_copy_limit_still_reaches_the_app(pair):
    body = b"x" * (5 * 1024 * 1024)
    status, _, echoed = assert_same(
        pair, "POST", "/echo/predict", content=body, headers={"content-type": "application/json"}
    )
    assert status == 200 and echoed == body


def test_streaming_response_passes_through(pair):
    status, headers, body = assert_same(pair, "POST", "/stream/predict")
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(5))


def test_streaming_chunks_arrive_one_by_one(pair):
    _, mon, _ = pair
    with (
        httpx.Client(base_url=mon, timeout=10) as client,
        client.stream("POST", "/stream/predict") as response,
    ):
        chunks = list(response.iter_raw())
    assert len(chunks) >= 2  # not buffered into one body by the middleware


def test_exception_in_the_app_gives_the_same_500(pair):
    status, _, body = assert_same(pair, "POST", "/boom/predict", json={"f0": 1})
    assert status == 500 and body == b"Internal Server Error"


def test_exception_after_the_response_started_breaks_the_stream_the_same_way(pair):
    bare, mon, _ = pair
    for base in (bare, mon):
        with (
            httpx.Client(base_url=base, timeout=10) as client,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            client.post("/stream-fail/predict")


def test_non_model_route_and_path_params_unchanged(pair):
    status, _, _ = assert_same(pair, "GET", "/items/42")
    assert status == 200
    status, _, _ = assert_same(pair, "GET", "/nowhere")
    assert status == 404


def test_status_as_http_status_enum_is_passed_on(pair):
    status, _, _ = assert_same(pair, "POST", "/created")
    assert status == 201


def test_malformed_json_reaches_the_app_unchanged(pair):
    status, _, body = assert_same(
        pair,
        "POST",
        "/predict",
        content=b'{"f0": 1,,,',
        headers={"content-type": "application/json"},
    )
    assert status == 400 and body == b"bad json"


def test_websocket_passes_through(pair):
    for base in pair[:2]:
        with connect(base.replace("http://", "ws://") + "/ws", open_timeout=5) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "echo:hello"


def test_app_lifespan_still_runs():
    app = wrapped(starlette_app, CollectorRegistry())
    with serve_app(app):
        assert app.state.started is True
    assert app.state.stopped is True


def test_gzip_response_is_unchanged_and_its_predictions_are_read():
    registry = CollectorRegistry()
    body = {"instances": [{"f0": 1.0, "f1": 2.0}] * 20}
    with serve_app(gzip_app()) as bare, serve_app(wrapped(gzip_app, registry)) as mon:
        results = []
        for base in (bare.url, mon.url):
            with httpx.Client(base_url=base, timeout=10) as client:
                r = client.post("/predict", json=body, headers={"accept-encoding": "gzip"})
                results.append((r.status_code, r.headers["content-encoding"], r.content))
    assert results[0] == results[1]
    assert (
        registry.get_sample_value(
            "mlwarden_prediction_confidence_count", {"model": "m", "version": "1"}
        )
        == 20
    )
    assert not registry.get_sample_value(
        "mlwarden_predictions_skipped_total", {"model": "m", "version": "1", "reason": "encoded"}
    )
