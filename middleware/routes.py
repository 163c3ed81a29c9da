"""Route templates for metric labels, read from the wrapped app's routing table.

A label must never be the raw path (a hostile client could create a series per path), so a
request is labelled with the template of the route that served it, or with one of two fixed
values when no route did. The table itself is read by :mod:`~mlwarden.middleware.route_table`.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from typing import Any

from mlwarden.middleware.route_table import PathClaim, RouteEntry, claims, walk_routes

__all__ = ["UNMATCHED", "UNROUTED", "RouteLabels", "walk_routes"]

UNMATCHED = "__unmatched__"  # the app answered 404 without a route
UNROUTED = "__unrouted__"  # the app answered without a routing table we can read


class _Tables:
    """The app's routes by what a finished request's scope holds: its route, its endpoint."""

    __slots__ = ("by_endpoint", "moved")

    def __init__(self, entries: list[RouteEntry]) -> None:
        self.by_endpoint: dict[int, list[RouteEntry]] = {}
        # Routes whose own ``path`` is not their template: those of an included router on
        # recent FastAPI (0.165), where ``scope["route"]`` is the original without prefixes.
        self.moved: dict[int, tuple[Any, list[RouteEntry]]] = {}
        for entry in entries:
            endpoint = getattr(entry.route, "endpoint", None)
            if endpoint is not None:
                self.by_endpoint.setdefault(id(endpoint), []).append(entry)
            if entry.original is not entry.route:
                key = id(entry.original)
                self.moved.setdefault(key, (entry.original, []))[1].append(entry)
        # An original that only ever appears at its own path is not moved at all.
        for key, (original, found) in list(self.moved.items()):
            if all(e.relative == getattr(original, "path", None) for e in found):
                del self.moved[key]


def _matching(entries: list[RouteEntry], scope: MutableMapping[str, Any]) -> RouteEntry | None:
    """The entry whose route matches the request (several routes share an endpoint)."""
    partial = None
    for entry in entries:
        with contextlib.suppress(Exception):
            name = getattr(entry.route.matches(scope)[0], "name", "")
            if name == "FULL":
                return entry
            if name == "PARTIAL" and partial is None:
                partial = entry
    return partial


class RouteLabels:
    """Maps a finished request's scope to its route template."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._tables: _Tables | None = None

    def label(self, scope: MutableMapping[str, Any], root_path: str, status: int | None) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            # Mounts extend root_path by their prefix while routing: put it back in front.
            mounted = scope.get("root_path", "")
            prefix = mounted[len(root_path) :] if mounted.startswith(root_path) else ""
            moved = self._read().moved.get(id(route))
            if moved is not None and moved[0] is route:
                entries = moved[1]
                entry = entries[0] if len(entries) == 1 else _matching(entries, scope)
                if entry is not None:
                    return prefix + entry.relative
            return prefix + path
        endpoint = scope.get("endpoint")
        if endpoint is not None:  # Starlette before scope["route"]: find it by its endpoint
            candidates = self._read().by_endpoint.get(id(endpoint), [])
            if len(candidates) == 1:
                return candidates[0].template
            entry = _matching(candidates, scope)
            if entry is not None:
                return entry.template
        return UNMATCHED if status == 404 else UNROUTED

    def serves(self, path: str) -> bool:
        """Whether the app answers ``path`` itself (or may): then it is never shadowed."""
        claim = self.claim(path)
        return claim is not None and claim.owns

    def claim(self, path: str) -> PathClaim | None:
        """The strongest claim the app has on ``path``: its own first, then a pattern."""
        try:
            found = claims(self._app, path)
        except Exception as exc:  # reading must never stop the app: assume the worst
            return PathClaim("unknown", f"{type(exc).__name__} while reading the routes")
        owned = [c for c in found if c.owns]
        return (owned or found or [None])[0]

    def _read(self) -> _Tables:
        # Read once, at the first finished request: the app's routes are in place by then.
        if self._tables is None:
            try:
                entries = list(walk_routes(self._app))
            except Exception:  # labels fall back to the route's own path, or UNROUTED
                entries = []
            self._tables = _Tables(entries)
        return self._tables
