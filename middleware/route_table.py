"""Reading the wrapped app's routing table, however the app organises it.

Starlette and FastAPI have laid routes out differently over their versions: older FastAPI
(0.110 among them) copies an included router's routes into the app with their prefix; recent
versions (0.165) keep each included router as one route object without a ``path``
(``_IncludedRouter``) whose routes carry the prefix only in their effective copies; mounts
hold sub-apps, routers or plain ASGI apps; hosts hold routers. So the table is read by
behaviour wherever it can be: a route is asked whether it matches a request for the path
(``route.matches(scope)``, the one interface every Starlette router relies on), a mount is
descended with the child scope the mount itself builds, and an included router is expanded
through its effective routes when it offers them (``effective_route_contexts()``). Nothing
here imports Starlette or FastAPI: the middleware installs into apps with their own pins.

Which paths the app answers itself (:func:`claims`), for not shadowing them:

- a route whose template is the path with no parameters, or a mount at the path (Starlette
  redirects ``/metrics`` to a mount at ``/metrics/``), is the app's own: ``route``;
- an app mounted in front of the path that we cannot see into (``make_asgi_app()``,
  ``StaticFiles``) may serve it: ``mount``;
- a route object of a kind we cannot read that matches the path, or fails when asked, may
  too: ``unknown``;
- a template with parameters that happens to match (``/{name}``, ``/{path:path}``) is a
  pattern, not an endpoint of that name: ``pattern``;
- an app without any routing table we can find: ``unreadable``.

The first three are never shadowed. The last two are (nothing names the path; the
middleware's endpoints are its interface to the sidecar), and the middleware says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PathClaim", "RouteEntry", "claims", "routing_table", "walk_routes"]

_MAX_DEPTH = 32
_MAX_CLAIMS = 16

ClaimKind = Literal["route", "mount", "unknown", "pattern", "unreadable"]


@dataclass(frozen=True, slots=True)
class PathClaim:
    """Something in the app's routing that would answer a request for a path."""

    kind: ClaimKind
    where: str  # the template, the mount prefix or the kind of object

    @property
    def owns(self) -> bool:
        """Whether the path is the app's own (or may be): then it is never shadowed."""
        return self.kind in ("route", "mount", "unknown")

    def describe(self) -> str:
        """The claim in a sentence, for the warning that names it."""
        return {
            "route": f"the app's route {self.where}",
            "mount": f"the app mounted at {self.where or '/'}",
            "unknown": f"a route object of a kind mlwarden cannot read ({self.where})",
            "pattern": f"the app's route {self.where}",
            "unreadable": f"an app whose routes mlwarden cannot read ({self.where})",
        }[self.kind]


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route reachable from the app, with the templates it is known by."""

    template: str  # from the outermost app: every mount's prefix in front
    relative: str  # from the app that holds it (what ``scope["root_path"]`` does not cover)
    route: Any  # the object that matches with the full template (an effective copy, if any)
    original: Any  # the object a request's ``scope["route"]`` holds


def routing_table(app: Any) -> list[Any] | None:
    """The route list of ``app``, found through any middleware in front of it; None if none."""
    for _ in range(_MAX_DEPTH):
        if app is None:
            return None
        routes = _attr(app, "routes")
        if isinstance(routes, list):
            return routes
        app = _attr(app, "app") or _attr(app, "router")
    return None


def walk_routes(app: Any) -> Iterator[RouteEntry]:
    """Every route reachable from ``app`` through middleware, mounts, hosts, included routers."""
    yield from _walk(routing_table(app) or (), "", 0)


def _walk(routes: Any, prefix: str, depth: int) -> Iterator[RouteEntry]:
    if depth >= _MAX_DEPTH:
        return
    for route in routes:
        for effective, original in _expand(route):
            path = _attr(effective, "path")
            child = routing_table(_attr(effective, "app"))
            if not isinstance(path, str):
                if child is not None:  # a host: its routes are at the same paths
                    yield from _walk(child, prefix, depth + 1)
                continue
            yield RouteEntry(prefix + path, path, effective, original)
            if child is not None and _is_mount(effective):
                yield from _walk(child, prefix + path, depth + 1)


def _expand(route: Any) -> Iterator[tuple[Any, Any]]:
    """(effective, original) for a route, or for each route of an included router.

    An included router's effective routes carry its prefixes (``/v2`` + ``/models/{name}``);
    a request's ``scope["route"]`` holds the original, whose ``path`` lacks them.
    """
    contexts = _attr(route, "effective_route_contexts")
    if not callable(contexts):
        yield route, route
        return
    try:
        expanded = list(contexts())
    except Exception:  # a version whose internals moved: read it as a plain route
        yield route, route
        return
    for context in expanded:
        effective = _attr(context, "starlette_route") or context
        yield effective, _attr(context, "original_route") or effective


def claims(app: Any, path: str) -> list[PathClaim]:
    """What in ``app`` would answer ``GET path`` (or ``path`` with its slash toggled)."""
    table = routing_table(app)
    if table is None:
        return [PathClaim("unreadable", type(app).__name__)]
    found: list[PathClaim] = []
    variant = (path.rstrip("/") or "/") if path.endswith("/") else path + "/"
    for candidate in dict.fromkeys((path, variant)):
        _claim(table, _scope(candidate), "", False, 0, found)
    return list(dict.fromkeys(found))


def _scope(path: str) -> dict[str, Any]:
    """A request for ``path`` as a server would hand it to the app, never sent anywhere."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": None,
        "server": None,
        "path_params": {},
    }


def _claim(
    routes: Any,
    scope: dict[str, Any],
    prefix: str,
    parametrised: bool,
    depth: int,
    found: list[PathClaim],
) -> None:
    if depth >= _MAX_DEPTH:
        found.append(PathClaim("unknown", "routes nested too deep"))
        return
    for route in routes:
        if len(found) >= _MAX_CLAIMS:
            return
        for effective, _ in _expand(route):
            _claim_one(effective, scope, prefix, parametrised, depth, found)


def _claim_one(
    route: Any,
    scope: dict[str, Any],
    prefix: str,
    parametrised: bool,
    depth: int,
    found: list[PathClaim],
) -> None:
    path = _attr(route, "path")
    if not isinstance(path, str) and _attr(route, "app") is not None:
        # A host: whatever the request's host, what it holds may answer the path.
        child = routing_table(_attr(route, "app"))
        if child is None:
            host = _attr(route, "host")
            where = f"{prefix or '/'} for host {host}" if isinstance(host, str) else prefix
            found.append(PathClaim("mount", where))
        else:
            _claim(child, scope, prefix, parametrised, depth + 1, found)
        return
    matches = _attr(route, "matches")
    if not callable(matches):  # not routable by Starlette; read what it says of itself
        if isinstance(path, str) and prefix + path == scope["path"]:
            found.append(PathClaim("pattern" if parametrised else "route", prefix + path))
        return
    try:
        match, child_scope = matches(dict(scope))
        kind = getattr(match, "name", None)
    except Exception:
        found.append(PathClaim("unknown", type(route).__name__))
        return
    if kind == "NONE":
        return
    if kind not in ("FULL", "PARTIAL") or not isinstance(child_scope, dict):
        found.append(PathClaim("unknown", type(route).__name__))
        return
    before = scope.get("path_params") or {}
    captured = parametrised or any(k not in before for k in child_scope.get("path_params") or {})
    if not isinstance(path, str):  # matches, but will not say where (an included router)
        found.append(PathClaim("unknown", type(route).__name__))
    elif "root_path" in child_scope:  # a mount: ask what it holds, as the router would
        child = routing_table(_attr(route, "app"))
        if child is None:
            found.append(PathClaim("pattern" if captured else "mount", prefix + path))
        else:
            inner = {**scope, **child_scope}
            _claim(child, inner, prefix + path, captured, depth + 1, found)
    else:
        found.append(PathClaim("pattern" if captured else "route", prefix + path))


def _is_mount(route: Any) -> bool:
    path_format = _attr(route, "path_format")
    return isinstance(path_format, str) and path_format.endswith("{path}")


def _attr(obj: Any, name: str) -> Any:
    """``getattr`` that survives objects whose properties raise."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None
