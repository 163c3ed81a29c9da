"""The admin port (default :9901): metrics, liveness, readiness, status and two mutations.

This module owns the admin HTTP surface of one :class:`~mlwarden.sidecar.app.Sidecar`. It
reads the sidecar's router, breakers, health checker and retry budget and changes nothing of
their rules.

Routes:

- ``GET /metrics``: the sidecar's registry in the Prometheus text format, or OpenMetrics when
  the ``Accept`` header asks for it.
- ``GET /-/healthy``: 200 while the process serves HTTP (liveness).
- ``GET /-/ready``: 200 when at least one upstream is available (healthy and its breaker not
  open), else 503 JSON naming each upstream's availability (readiness).
- ``GET /-/status``: JSON for people: each upstream's URL, availability, breaker state and
  recent transitions; the health checker's snapshot; the routing order and forced route; the
  retry budget; requests in flight and the limits.
- ``POST /-/route`` with ``{"force": "<upstream>"}`` or ``{"force": null}``: move one upstream
  to the front of the routing order, or restore the configured order.
- ``POST /-/breakers/<name>/reset``: close that upstream's breaker now.
- ``GET /-/events``: the healing ledger, newest first; filters ``action``, ``target``,
  ``policy``, ``severity``, ``since``/``until`` (epoch seconds) and ``limit`` (default 100,
  at most 1000). Mutations are recorded there too, with ``actor`` ``admin``. With a fleet,
  ``scope=fleet`` answers from the fleet's stream: every replica's records, each naming its
  ``replica``.

Mutations need ``Authorization: Bearer <token>``, compared in constant time
(:func:`hmac.compare_digest`). Without a configured token mutations are off: 403. A missing or
wrong token: 401 (with ``WWW-Authenticate: Bearer``); an unknown upstream: 404; a body that is
not the expected JSON: 400. Every mutation attempt is logged with the client's address and
the outcome; the token never is.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mlwarden.sidecar.app import Sidecar
from mlwarden.sidecar.healing.ledger import MAX_QUERY_LIMIT

__all__ = ["create_admin_app"]

log = logging.getLogger("mlwarden.sidecar.admin")

#: Transitions per breaker shown by /-/status (the breaker keeps more).
STATUS_TRANSITIONS = 10
_MAX_BODY = 4096
_EVENT_FILTERS = frozenset(
    {"action", "target", "policy", "severity", "since", "until", "limit", "scope"}
)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class _Admin:
    """The handlers, bound to one sidecar, one token and one registry."""

    def __init__(self, sidecar: Sidecar, token: str, registry: CollectorRegistry) -> None:
        self.sidecar = sidecar
        self._token = token.encode()
        self.registry = registry

    # -- reading ------------------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(self.registry), headers={"content-type": content_type})

    async def healthy(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def events(self, request: Request) -> Response:
        q = request.query_params
        unknown = sorted(set(q) - _EVENT_FILTERS)
        if unknown:
            return _error(
                400, f"unknown filter {', '.join(unknown)}", allowed=sorted(_EVENT_FILTERS)
            )
        try:
            since = float(q["since"]) if "since" in q else None
            until = float(q["until"]) if "until" in q else None
            limit = int(q.get("limit", "100"))
        except ValueError:
            return _error(400, "since and until are epoch seconds, limit a whole number")
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            return _error(400, f"limit must be 1-{MAX_QUERY_LIMIT}")
        scope = q.get("scope", "replica")
        if scope not in ("replica", "fleet"):
            return _error(400, "scope is replica (this sidecar's ledger) or fleet")
        if scope == "fleet":
            return await self._fleet_events(q, since, until, limit)
        records = self.sidecar.ledger.query(
            action=q.get("action"),
            target=q.get("target"),
            policy=q.get("policy"),
            severity=q.get("severity"),
            since=since,
            until=until,
            limit=limit,
        )
        return JSONResponse({"events": [r.to_dict() for r in records], "count": len(records)})

    async def _fleet_events(
        self, q: Any, since: float | None, until: float | None, limit: int
    ) -> Response:
        """The fleet's ledger stream (every replica's records, each with its ``replica``),
        newest first, with the same filters; 409 without a fleet, 503 with Redis down."""
        fleet = self.sidecar.fleet
        if fleet is None:
            return _error(409, "no fleet configured (the fleet block)")
        try:
            records = await fleet.state.records(limit=MAX_QUERY_LIMIT)
        except Exception as exc:
            return _error(503, f"the fleet's Redis is unavailable ({type(exc).__name__})")
        wanted = []
        for record in records:
            if any(
                q.get(key) is not None and record.get(key) != q.get(key)
                for key in ("action", "target", "policy", "severity")
            ):
                continue
            at = record.get("at")
            if isinstance(at, int | float) and (
                (since is not None and at < since) or (until is not None and at > until)
            ):
                continue
            wanted.append(record)
            if len(wanted) >= limit:
                break
        return JSONResponse({"events": wanted, "count": len(wanted), "scope": "fleet"})

    async def ready(self, request: Request) -> Response:
        available = {name: self.sidecar.is_available(name) for name in self.sidecar.pools}
        if any(available.values()):
            return JSONResponse({"status": "ready", "available": available})
        return JSONResponse(
            {"status": "not ready", "error": "no upstream available", "available": available},
            status_code=503,
        )

    async def status(self, request: Request) -> Response:
        sidecar = self.sidecar
        upstreams = {}
        for u in sidecar.config.upstreams:
            breaker = sidecar.breakers[u.name]
            upstreams[u.name] = {
                "url": u.url,
                "available": sidecar.is_available(u.name),
                "breaker": {
                    "state": breaker.state,
                    "fail_counter": breaker.fail_counter,
                    "reset_timeout_s": breaker.reset_timeout_s,
                    "trials_in_flight": breaker.trials_in_flight,
                    "shared_storage_available": breaker.storage_available,
                    "transitions": [
                        {"at": c.at, "from": c.old, "to": c.new, "reason": c.reason}
                        for c in list(breaker.history)[-STATUS_TRANSITIONS:]
                    ],
                },
            }
        routing = sidecar.config.routing
        return JSONResponse(
            {
                "upstreams": upstreams,
                "health": sidecar.health.snapshot() if sidecar.health is not None else None,
                "routing": {
                    "primary": routing.primary,
                    "fallbacks": list(routing.fallbacks),
                    "forced": sidecar.router.forced,
                    "order": list(sidecar.router.order),
                    "candidates": sidecar.router.candidates(),
                },
                "retry_budget": sidecar.retry_policy.budget.snapshot(),
                "in_flight": sidecar.in_flight,
                "canary": sidecar.canary.snapshot() if sidecar.canary is not None else None,
                "fleet": (
                    {
                        **sidecar.fleet.snapshot(),
                        "drift": (
                            sidecar.fleet_drift.snapshot()
                            if sidecar.fleet_drift is not None
                            else None
                        ),
                    }
                    if sidecar.fleet is not None
                    else None
                ),
                "shadow": sidecar.shadow.snapshot() if sidecar.shadow is not None else None,
                "policies": sidecar.policies.snapshot(),
                "limits": {
                    "max_concurrent_requests": sidecar.config.limits.max_concurrent_requests,
                    "max_request_bytes": sidecar.config.limits.max_request_bytes,
                    "max_response_bytes": sidecar.config.limits.max_response_bytes,
                },
            }
        )

    # -- mutations ----------------------------------------------------------------------------

    def _refuse(self, request: Request, action: str) -> Response | None:
        """The answer refusing a mutation, or None when it may go ahead."""
        client = request.client.host if request.client else "unknown"
        if not self._token:
            log.warning("admin %s refused from %s: mutations disabled", action, client)
            return _error(403, "mutations disabled: no admin token configured")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            log.warning("admin %s refused from %s: missing or wrong token", action, client)
            return _error(401, "missing or wrong bearer token")
        return None

    async def route(self, request: Request) -> Response:
        if (refused := self._refuse(request, "force route")) is not None:
            return refused
        body = await request.body()
        try:
            data = json.loads(body) if len(body) <= _MAX_BODY else None
        except ValueError:
            data = None
        if (
            not isinstance(data, dict)
            or set(data) != {"force"}
            or not (data["force"] is None or isinstance(data["force"], str))
        ):
            return _error(400, 'expected a JSON body {"force": "<upstream>"} or {"force": null}')
        name = data["force"]
        if name is not None and name not in self.sidecar.pools:
            return _error(404, "unknown upstream", known=list(self.sidecar.pools))
        before = self.sidecar.router.forced
        self.sidecar.router.force(name)
        self.sidecar.record(
            action="manual_route",
            target=name or "configured order",
            reason=f"forced by {_client(request)} (was {before})",
            actor="admin",
            severity="warning",
        )
        log.warning(
            "admin: route forced to %s (was %s) by %s",
            name,
            before,
            request.client.host if request.client else "unknown",
            extra={"action": "force_route", "target": name, "previous": before},
        )
        return JSONResponse({"forced": name, "order": list(self.sidecar.router.order)})

    async def reset_breaker(self, request: Request) -> Response:
        name = request.path_params["name"]
        if (refused := self._refuse(request, f"breaker reset of {name!r}")) is not None:
            return refused
        breaker = self.sidecar.breakers.get(name)
        if breaker is None:
            return _error(404, "unknown upstream", known=list(self.sidecar.breakers))
        before = breaker.state
        breaker.reset()
        self.sidecar.record(
            action="manual_breaker_reset",
            target=name,
            reason=f"reset by {_client(request)} (was {before})",
            actor="admin",
            severity="warning",
        )
        log.warning(
            "admin: breaker %s reset (was %s) by %s",
            name,
            before,
            request.client.host if request.client else "unknown",
            extra={"action": "breaker_reset", "target": name, "previous": before},
        )
        return JSONResponse({"upstream": name, "previous": before, "state": breaker.state})


def create_admin_app(sidecar: Sidecar, *, token: str | None = None) -> Starlette:
    """The admin app of ``sidecar``, serving the metrics it was built with.

    ``token`` defaults to ``sidecar.config.admin.token`` ("" turns mutations off). The
    sidecar must have metrics (``Sidecar(config, registry=...)``; the ``mlwarden sidecar``
    command passes prometheus_client's global registry, so its process metrics are served
    too). The app exposes them as ``app.state.metrics``.
    """
    metrics = sidecar.metrics
    if metrics is None:
        raise ValueError("the sidecar has no metrics: build it with Sidecar(config, registry=...)")
    admin = _Admin(
        sidecar, sidecar.config.admin.token if token is None else token, metrics.registry
    )
    app = Starlette(
        routes=[
            Route("/metrics", admin.metrics, methods=["GET"]),
            Route("/-/healthy", admin.healthy, methods=["GET"]),
            Route("/-/ready", admin.ready, methods=["GET"]),
            Route("/-/status", admin.status, methods=["GET"]),
            Route("/-/events", admin.events, methods=["GET"]),
            Route("/-/route", admin.route, methods=["POST"]),
            Route("/-/breakers/{name}/reset", admin.reset_breaker, methods=["POST"]),
        ]
    )
    app.state.metrics = metrics
    return app
