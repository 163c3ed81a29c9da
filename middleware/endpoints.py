"""The monitor's own endpoints: ``GET /metrics``, ``GET /-/health`` and ``POST /-/feedback``.

Small ASGI callables that the monitor mounts at their configured paths (never over a route
the app serves itself) and calls from its guard, before the request path. Each gets what it
serves at construction: the registry, the health report, the feedback; the monitor's
``drain`` comes along so that what is served includes the exchanges still queued.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from mlwarden.middleware.feedback import Feedback
from mlwarden.middleware.health_report import FAILING, HealthReport

__all__ = [
    "FeedbackEndpoint",
    "HealthEndpoint",
    "MetricsEndpoint",
    "ModelsHealthEndpoint",
    "header",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CHALLENGE = ((b"www-authenticate", b"Bearer"),)

log = logging.getLogger("mlwarden.middleware")


class MetricsEndpoint:
    """``GET /metrics``: the registry in the format the scraper accepts."""

    __slots__ = ("_before", "_registry")

    def __init__(self, registry: CollectorRegistry, *, before: Callable[[], None]) -> None:
        self._registry = registry
        self._before = before

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._before()
        encoder, content_type = choose_encoder(header(scope, b"accept") or "")
        body = encoder(self._registry)
        await respond(send, 200, body, content_type.encode("latin-1"), scope["method"])


class HealthEndpoint:
    """``GET /-/health``: the health report; 503 when it says ``failing``."""

    __slots__ = ("_report",)

    def __init__(self, report: Callable[[], HealthReport]) -> None:
        self._report = report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = self._report()
        status = 503 if report.status == FAILING else 200
        await respond(send, status, report.to_json(), b"application/json", scope["method"])


class ModelsHealthEndpoint:
    """A multi-model server's health: ``GET {path}/{model}`` or ``{path}?model={model}`` one
    model's report (404 JSON for a model not tracked), ``GET {path}`` the summary
    (:mod:`~mlwarden.middleware.models_health`). 503 when the answer says ``failing``."""

    __slots__ = ("_health", "_prefix")

    def __init__(self, health: Any, *, path: str) -> None:
        self._health = health
        self._prefix = path.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        model = path[len(self._prefix) :] if path.startswith(self._prefix) else ""
        if not model:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            model = query.get("model", [""])[-1]
        method = scope["method"]
        if not model:
            status, body = self._health.summary_json()
            code = 503 if status == FAILING else 200
            await respond(send, code, body, b"application/json", method)
            return
        report = self._health.report(model)
        if report is None:
            body = json.dumps({"error": f"model {model[:100]!r} is not tracked"}).encode()
            await respond(send, 404, body, b"application/json", method)
            return
        code = 503 if report.status == FAILING else 200
        await respond(send, code, report.to_json(), b"application/json", method)


class FeedbackEndpoint:
    """``POST /-/feedback``: labels joined with remembered predictions, counts answered.

    The credential is checked before the body is read: 401 (with ``WWW-Authenticate:
    Bearer``) for a missing or wrong token, 403 when no token is configured.
    """

    __slots__ = ("_before", "_feedback")

    def __init__(self, feedback: Feedback, *, path: str, before: Callable[[], None]) -> None:
        self._feedback = feedback
        self._before = before
        # Built at start-up: say who may post labels (anonymous labelling is a warning).
        if feedback.anonymous:
            log.warning(
                "mlwarden: POST %s accepts labels without a token (feedback_anonymous=True): "
                "anyone who can reach it can label this model's predictions",
                path,
            )
        elif not feedback.has_token:
            log.info(
                "mlwarden: POST %s refuses labels until a token is set (feedback_token or "
                "MLWARDEN_FEEDBACK_TOKEN); record_labels() needs none",
                path,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        feedback = self._feedback
        refusal = feedback.refusal(header(scope, b"authorization"))
        if refusal is not None:
            await respond(
                send,
                refusal.status,
                json.dumps({"error": refusal.message}).encode(),
                b"application/json",
                "POST",
                _CHALLENGE if refusal.status == 401 else (),
            )
            return
        body, too_large = await _read_body(receive, feedback.max_body_bytes)
        if too_large:
            await respond(
                send,
                413,
                json.dumps({"error": f"body above {feedback.max_body_bytes} bytes"}).encode(),
                b"application/json",
                "POST",
            )
            return
        try:
            entries = feedback.parse(body)
        except ValueError as exc:
            await respond(
                send, 400, json.dumps({"error": str(exc)}).encode(), b"application/json", "POST"
            )
            return
        self._before()  # predictions answered a moment ago may still be queued
        result = feedback.record(entries)
        await respond(send, 200, json.dumps(result).encode(), b"application/json", "POST")


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole request body, or (b"", True) once it is above ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts), False


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    method: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
