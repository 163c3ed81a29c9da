"""One listener pattern for the whole sidecar: named hooks with no-op defaults.

Every part that reports what happens (the proxy on each request, the breakers, the health
checker, the ledger, the canary) calls hooks of :class:`Listener` objects, as pybreaker's
``CircuitBreakerListener`` does: a listener subclasses :class:`Listener`, overrides the hooks
it needs, and is added with the emitter's ``add_listener(listener)``. An emitter keeps its
listeners in a :class:`FanOut`, which looks the overridden hooks up once (the proxy's hooks
run on every request) and logs and skips a listener that raises, so a broken listener never
breaks the part that reports.

Hooks run inline, on the emitter's thread: they must be cheap (a counter increment, an
append to a bounded window, a ledger record). Labels they receive are bounded by
construction: upstream names come from the configuration, outcomes and reasons from fixed
words (:mod:`mlwarden.sidecar.signals.outcomes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["FanOut", "Listener"]

log = logging.getLogger("mlwarden.sidecar")


class Listener:
    """Every hook of the sidecar; each does nothing here. Override what you need.

    ``upstream`` is a configured upstream name; ``None`` where the proxy answered itself.
    """

    # -- the proxy, on each request ---------------------------------------------------------

    def request_started(self) -> None:
        """A client request arrived (its body not yet read)."""

    def request_finished(self, upstream: str | None, status: int, duration_s: float) -> None:
        """The client's response ended: who answered, the status sent, the time since arrival.

        ``status`` is 499 when the client went away before its answer was complete.
        """

    def attempt_finished(self, upstream: str, outcome: str, duration_s: float) -> None:
        """One exchange with ``upstream`` ended: ``outcome`` a status class (``"2xx"``) or one
        of :data:`~mlwarden.sidecar.signals.outcomes.NO_ANSWER`; ``duration_s`` from sending
        to the last body byte relayed (or to the decision to retry)."""

    def retried(self, upstream: str, reason: str) -> None:
        """``upstream`` is tried again after a retriable outcome (``reason``: the retry
        policy's label, e.g. ``connect_error`` or ``status_503``)."""

    def fell_back(self, source: str, target: str, reason: str) -> None:
        """The request moved on from ``source`` to ``target`` for one of
        :data:`~mlwarden.sidecar.signals.outcomes.FALLBACK_REASONS`."""

    def path_refused(self, path: str) -> None:
        """A request for one of the model's operational paths was answered 404, not
        forwarded (``path``: one of :data:`~mlwarden.sidecar.operational_paths.REFUSED_LABELS`)."""

    # -- the parts' state ---------------------------------------------------------------------

    def breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        """The breaker of ``name`` went from ``old`` to ``new`` (closed, open, half_open)."""

    def health_changed(self, name: str, healthy: bool, reason: str) -> None:
        """The health checks took ``name`` into (``healthy``) or out of rotation."""

    def probe_finished(self, name: str, result: Any) -> None:
        """One health-check probe of ``name`` ended (a
        :class:`~mlwarden.sidecar.routing.health_checks.ProbeResult`)."""

    def recorded(self, record: Any) -> None:
        """The ledger appended ``record`` (a
        :class:`~mlwarden.sidecar.healing.ledger.LedgerRecord`)."""

    def canary_changed(self, canary: Any) -> None:
        """The canary stepped, was promoted, rolled back or finished."""


_HOOKS = tuple(
    name for name, value in vars(Listener).items() if callable(value) and not name.startswith("_")
)


class FanOut(Listener):
    """Passes every hook to each listener that overrides it; a raising listener is logged.

    :meth:`add` replaces the bound hooks with new tuples (never mutated in place), so adding a
    listener while hooks run is safe.
    """

    __slots__ = ("_hooks", "errors", "listeners")

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self.listeners: tuple[Listener, ...] = ()
        self._hooks: dict[str, tuple[Callable[..., None], ...]] = dict.fromkeys(_HOOKS, ())
        #: Hook calls that raised (logged and skipped).
        self.errors = 0
        for listener in listeners:
            self.add(listener)

    def add(self, listener: Listener) -> None:
        """Call ``listener``'s overridden hooks from now on (once, however often added)."""
        if not isinstance(listener, Listener):
            raise TypeError(f"a listener must be a Listener, not {type(listener).__name__}")
        if listener in self.listeners:
            return
        self.listeners = (*self.listeners, listener)
        hooks = dict(self._hooks)
        for name in _HOOKS:
            if getattr(type(listener), name) is not getattr(Listener, name):
                hooks[name] = (*hooks[name], getattr(listener, name))
        self._hooks = hooks

    def remove(self, listener: Listener) -> None:
        """Stop calling ``listener`` (nothing happens when it was not added)."""
        if listener not in self.listeners:
            return
        kept = [known for known in self.listeners if known is not listener]
        self.listeners = ()
        self._hooks = dict.fromkeys(_HOOKS, ())
        for known in kept:
            self.add(known)

    def _each(self, hook: str, *args: object) -> None:
        for method in self._hooks[hook]:
            try:
                method(*args)
            except Exception:
                self.errors += 1
                log.exception("listener %r failed in %s", getattr(method, "__self__", method), hook)

    def request_started(self) -> None:
        self._each("request_started")

    def request_finished(self, upstream: str | None, status: int, duration_s: float) -> None:
        self._each("request_finished", upstream, status, duration_s)

    def attempt_finished(self, upstream: str, outcome: str, duration_s: float) -> None:
        self._each("attempt_finished", upstream, outcome, duration_s)

    def retried(self, upstream: str, reason: str) -> None:
        self._each("retried", upstream, reason)

    def fell_back(self, source: str, target: str, reason: str) -> None:
        self._each("fell_back", source, target, reason)

    def path_refused(self, path: str) -> None:
        self._each("path_refused", path)

    def breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        self._each("breaker_changed", name, old, new, reason)

    def health_changed(self, name: str, healthy: bool, reason: str) -> None:
        self._each("health_changed", name, healthy, reason)

    def probe_finished(self, name: str, result: Any) -> None:
        self._each("probe_finished", name, result)

    def recorded(self, record: Any) -> None:
        self._each("recorded", record)

    def canary_changed(self, canary: Any) -> None:
        self._each("canary_changed", canary)

    def __len__(self) -> int:
        return len(self.listeners)

    def __repr__(self) -> str:
        return f"FanOut({list(self.listeners)!r})"
