"""What the proxy reports as it forwards: the hooks that metrics (and later analyses) listen to.

The proxy calls an :class:`ProxyEvents` object at a handful of points of each request; it does
not know who listens. :class:`ProxyEvents` itself ignores everything (the proxy's default), a
subclass overrides the hooks it needs, and :class:`FanOutEvents` passes each call to several
listeners. Hooks run on the request path, inline: they must be cheap (a counter increment,
an append to a bounded window) and must not raise (a raising hook is logged and the request
goes on as if nobody listened; see :meth:`FanOutEvents`).

Labels that hooks receive are bounded by construction: upstream names come from the
configuration, outcomes and reasons from the fixed words below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

__all__ = [
    "ATTEMPT_ERRORS",
    "FALLBACK_REASONS",
    "FanOutEvents",
    "ProxyEvents",
    "status_class",
]

log = logging.getLogger("mlwarden.sidecar.proxy")

#: The outcomes of an attempt that got no answer.
ATTEMPT_ERRORS = ("connect_error", "timeout", "reset")
#: Why a request moved from one upstream to the next.
#: ``breaker_open``/``unhealthy``: the upstream was skipped without being tried;
#: ``retries_exhausted``/``budget_exhausted``: its retries were spent on retriable failures;
#: ``retry_too_late``: the wait before a retry (its ``Retry-After``, the backoff) would not
#: fit in the time left; ``error``: it failed in a way not retried on the same upstream (a
#: timeout, by default).
FALLBACK_REASONS = (
    "breaker_open",
    "unhealthy",
    "retries_exhausted",
    "budget_exhausted",
    "retry_too_late",
    "error",
)

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """``503`` → ``"5xx"``: the bounded label of a status code."""
    index = status // 100 - 1
    return _CLASSES[index] if 0 <= index < 5 else "5xx"


class ProxyEvents:
    """The hooks the proxy calls; every one does nothing here. Override what you need.

    ``upstream`` is a configured upstream name; ``None`` where the proxy answered itself.
    """

    def request_started(self) -> None:
        """A client request arrived (its body not yet read)."""

    def request_finished(self, upstream: str | None, status: int, duration_s: float) -> None:
        """The client's response ended: who answered, the status sent, the time since arrival.

        ``status`` is 499 when the client went away before its answer was complete.
        """

    def attempt_finished(self, upstream: str, outcome: str, duration_s: float) -> None:
        """One exchange with ``upstream`` ended: ``outcome`` a status class (``"2xx"``) or one
        of :data:`ATTEMPT_ERRORS`; ``duration_s`` from sending to the last body byte relayed
        (or to the decision to retry)."""

    def retried(self, upstream: str, reason: str) -> None:
        """``upstream`` is tried again after a retriable outcome (``reason``: the retry
        policy's label, e.g. ``connect_error`` or ``status_503``)."""

    def fell_back(self, source: str, target: str, reason: str) -> None:
        """The request moved on from ``source`` to ``target`` for one of
        :data:`FALLBACK_REASONS`."""


class FanOutEvents(ProxyEvents):
    """Passes every call to each listener in turn; a listener that raises is logged, skipped.

    The listeners' bound methods are looked up once, here: the hooks run on every request.
    Listeners that do not override a hook are left out of its list.
    """

    __slots__ = ("_hooks", "listeners")

    _NAMES = ("request_started", "request_finished", "attempt_finished", "retried", "fell_back")

    def __init__(self, listeners: Iterable[ProxyEvents] = ()) -> None:
        self.listeners: tuple[ProxyEvents, ...] = tuple(listeners)
        self._hooks: dict[str, tuple[Callable[..., None], ...]] = {
            name: tuple(
                getattr(listener, name)
                for listener in self.listeners
                if getattr(type(listener), name) is not getattr(ProxyEvents, name)
            )
            for name in self._NAMES
        }

    def _each(self, hook: str, *args: object) -> None:
        for method in self._hooks[hook]:
            try:
                method(*args)
            except Exception:
                log.exception(
                    "proxy event listener %r failed in %s",
                    getattr(method, "__self__", method),
                    hook,
                )

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

    def __repr__(self) -> str:
        return f"FanOutEvents({list(self.listeners)!r})"
