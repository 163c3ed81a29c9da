"""Route templates for metric labels, read from the wrapped app's routing table.

A label must never be the raw path (a hostile client could create a series per path), so a
request is labelled with the template of the route that served it, or with one of two fixed
values when no route did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["UNMATCHED", "UNROUTED", "RouteLabels", "walk_routes"]

UNMATCHED = "__unmatched__"  # the app answered 404 without a route
UNROUTED = "__unrouted__"  # the app answered without a routing table we can read

_MAX_DEPTH = 32


def walk_routes(app: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(template, route) for every route reachable from ``app`` through middleware and mounts."""
    seen = 0
    while app is not None and depth < _MAX_DEPTH and seen < _MAX_DEPTH:
        seen += 1
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            for route in routes:
                path = getattr(route, "path", None)
                if not isinstance(path, str):
                    continue
                yield prefix + path, route
                child = getattr(route, "app", None)
                if getattr(route, "routes", None) is not None or hasattr(child, "routes"):
                    yield from walk_routes(child, prefix + path, depth + 1)
            return
        app = getattr(app, "app", None) or getattr(app, "router", None)


class RouteLabels:
    """Maps a finished request's scope to its route template."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._by_endpoint: dict[int, list[tuple[str, Any]]] | None = None

    def label(self, scope: MutableMapping[str, Any], root_path: str, status: int | None) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            # Mounts extend root_path by their prefix while routing: put it back in front.
            mounted = scope.get("root_path", "")
            prefix = mounted[len(root_path) :] if mounted.startswith(root_path) else ""
            return prefix + path
        endpoint = scope.get("endpoint")
        if endpoint is not None:  # Starlette before scope["route"]: find it by its endpoint
            candidates = self._endpoint_templates().get(id(endpoint), ())
            if len(candidates) == 1:
                return candidates[0][0]
            for template, candidate in candidates:  # one endpoint behind several routes
                with contextlib.suppress(Exception):
                    if getattr(candidate.matches(scope)[0], "name", "") == "FULL":
                        return template
        return UNMATCHED if status == 404 else UNROUTED

    def serves(self, path: str) -> bool:
        """Whether the app has a route at exactly ``path`` (for not shadowing its /metrics)."""
        return any(template == path for template, _ in walk_routes(self._app))

    def _endpoint_templates(self) -> dict[int, list[tuple[str, Any]]]:
        if self._by_endpoint is None:
            found: dict[int, list[tuple[str, Any]]] = {}
            for template, route in walk_routes(self._app):
                endpoint = getattr(route, "endpoint", None)
                if endpoint is not None:
                    found.setdefault(id(endpoint), []).append((template, route))
            self._by_endpoint = found
        return self._by_endpoint
