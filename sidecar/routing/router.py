"""Which upstreams a request is offered to, in which order: the primary, then its fallbacks.

This module owns the order only. Whether an upstream is *available* (its health check passes,
its breaker is not open) is asked through the ``is_available`` callable
(:class:`~mlwarden.sidecar.routing.availability.Availability`), so the router stays a small
pure object that tests drive without a network. The canary split and the shadow copy wrap
this order in the proxy; they do not replace it.

Rules of :meth:`Router.candidates`:

- the primary first, then the fallbacks in configured order, each skipped when unavailable;
- when *every* upstream is unavailable, the full order is returned anyway (primary first):
  a health verdict can be stale and a breaker may be about to half-open, so trying costs one
  fast failure while refusing without trying would turn a flapping check into an outage;
- :meth:`Router.force` (the admin's "force a route") moves one upstream to the front of the
  order; it is still subject to availability like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["Router"]


class Router:
    """The ordered candidates of a request; see the module docstring for the rules."""

    __slots__ = ("_forced", "_is_available", "_order")

    def __init__(
        self,
        primary: str,
        fallbacks: Sequence[str],
        *,
        is_available: Callable[[str], bool],
    ) -> None:
        if isinstance(fallbacks, str):
            raise ValueError(f"fallbacks must be a sequence of names, not the string {fallbacks!r}")
        order = (primary, *fallbacks)
        problems = []
        if primary in fallbacks:
            problems.append(f"the primary {primary!r} is also listed as a fallback")
        dupes = sorted({n for n in fallbacks if list(fallbacks).count(n) > 1})
        if dupes:
            problems.append(f"fallbacks list {', '.join(map(repr, dupes))} more than once")
        if problems:
            raise ValueError("; ".join(problems))
        self._order: tuple[str, ...] = order
        self._is_available = is_available
        self._forced: str | None = None

    @property
    def order(self) -> tuple[str, ...]:
        """The configured order, with a forced upstream moved to the front."""
        forced = self._forced
        if forced is None:
            return self._order
        return (forced, *(n for n in self._order if n != forced))

    @property
    def primary(self) -> str:
        """The configured primary (a forced route does not change it; a promotion does)."""
        return self._order[0]

    @property
    def forced(self) -> str | None:
        return self._forced

    def force(self, name: str | None) -> None:
        """Send traffic to ``name`` first (``None`` restores the configured order)."""
        if name is not None and name not in self._order:
            raise ValueError(f"unknown upstream {name!r}; known: {', '.join(self._order)}")
        self._forced = name

    def set_order(self, primary: str, fallbacks: Sequence[str]) -> None:
        """Replace the order (a promotion, a rollback); the caller knows the names exist."""
        order = (primary, *fallbacks)
        if len(set(order)) != len(order):
            raise ValueError(f"an upstream is listed more than once: {list(order)}")
        if self._forced is not None and self._forced not in order:
            self._forced = None
        self._order = order

    def candidates(self) -> list[str]:
        """The upstreams to try for one request, best first; never empty."""
        order = self.order
        available = [name for name in order if self._is_available(name)]
        return available or list(order)

    def __repr__(self) -> str:
        return f"Router(order={list(self.order)!r}, forced={self._forced!r})"
