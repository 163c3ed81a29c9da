"""An asyncio circuit breaker per upstream, built on pybreaker's state machine and storage.

pybreaker has no asyncio support: ``breaker.call(async_fn)`` counts the un-awaited coroutine as
a success, and its half-open state lets every concurrent call through. :class:`AsyncBreaker`
keeps what pybreaker does well and adds what an async proxy needs:

- **Admission is ours, accounting is pybreaker's.** :meth:`AsyncBreaker.guard` decides
  synchronously (no await, so no other task can slip in between check and take) whether a
  request may go: closed → yes; open → :class:`BreakerOpen` until the reset timeout has passed,
  then half-open; half-open → only while fewer than ``half_open_max_calls`` trials are in
  flight. Outcomes are fed to pybreaker through ``with breaker.calling():`` around a
  synchronous block, so its closed/half-open/open states, counters, ``success_threshold`` and
  storage (memory, or Redis shared across replicas) do the bookkeeping.
- **The clock is ours.** pybreaker compares ``datetime.now()`` with the storage's
  ``opened_at``. We subclass :class:`pybreaker.CircuitBreaker` only to stamp ``opened_at``
  from the injected ``clock`` (epoch seconds, default :func:`time.time`) when it opens, and
  decide open → half-open ourselves from that same ``opened_at`` and ``clock``; pybreaker's
  open state is never asked to call anything, so its own ``datetime.now()`` is never read.
  Wall-clock seconds (not monotonic) because ``opened_at`` may be shared through Redis.
- **Cancellation is not failure.** A client that goes away cancels its task; the
  :class:`asyncio.CancelledError` raised inside the guard releases the trial slot and counts
  nothing. Any other exception inside the guard counts as a failure and propagates.

Outcomes of requests admitted before the breaker tripped and finishing late are ignored while
it is open or half-open: the breaker already decided, and only its probes may close it again.

Shared state: pass ``storage=redis_storage(redis_client, name=...)`` (pybreaker's
``CircuitRedisStorage``) and replicas share state, counters and ``opened_at``. The bound on
half-open trials stays per replica. pybreaker's Redis storage is synchronous, so each
admission costs a Redis round trip on the event loop; keep Redis close. This option is
implemented but not yet tested against a real Redis.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pybreaker

from mlwarden.middleware.errors import ConfigError, MlwardenError

__all__ = [
    "AsyncBreaker",
    "BreakerOpen",
    "BreakerState",
    "StateChange",
    "StateListener",
    "Trial",
    "redis_storage",
]

log = logging.getLogger("mlwarden.sidecar.breaker")

BreakerState = Literal["closed", "open", "half_open"]
StateListener = Callable[[str, BreakerState, BreakerState, str], None]

_FROM_PYBREAKER: dict[str, BreakerState] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}
DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset({500, 502, 503, 504})


class BreakerOpen(MlwardenError):
    """The breaker refused the request: open, or its half-open trial slots are all taken.

    Raised before anything is sent upstream, so the request can go to a fallback at once.
    ``retry_in_s`` is the time until the breaker will admit a trial (0.0 when half-open).
    """

    def __init__(self, name: str, state: BreakerState, retry_in_s: float) -> None:
        self.name = name
        self.state = state
        self.retry_in_s = retry_in_s
        super().__init__(f"circuit breaker {name!r} is {state}")


@dataclass(frozen=True, slots=True)
class StateChange:
    """One entry of a breaker's history: at (clock seconds), from, to and why."""

    at: float
    name: str
    old: BreakerState
    new: BreakerState
    reason: str


class _UpstreamFailure(Exception):
    """Raised inside ``pybreaker.calling()`` to make it count a failure."""


class _ClockedCircuitBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker, with ``opened_at`` stamped from our clock instead of datetime.now."""

    def __init__(self, *, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock

    def open(self) -> bool:
        with self._lock:
            self._state_storage.opened_at = datetime.fromtimestamp(self._clock(), UTC)
            self.state = self._state_storage.state = pybreaker.STATE_OPEN  # type: ignore[assignment]
            return self._throw_new_error_on_trip


class _Listener(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's state changes, with the reason the AsyncBreaker set, to it."""

    def __init__(self, owner: AsyncBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if old_state is None or old_state.name == new_state.name:
            return
        self._owner._changed(_FROM_PYBREAKER[old_state.name], _FROM_PYBREAKER[new_state.name])


class Trial:
    """One admitted request; report its outcome once, or let the guard infer it on exit."""

    __slots__ = ("_breaker", "_done", "_holds_slot", "is_probe")

    def __init__(self, breaker: AsyncBreaker, is_probe: bool) -> None:
        self._breaker = breaker
        self._done = False
        #: True when admitted in half-open: this request decides whether the breaker closes.
        self.is_probe = is_probe
        self._holds_slot = is_probe

    @property
    def reported(self) -> bool:
        return self._done

    def success(self) -> None:
        """The upstream answered acceptably."""
        if not self._done:
            self._done = True
            self._breaker._record(None, self.is_probe)

    def failure(self, reason: str) -> None:
        """The upstream failed; ``reason`` is a short bounded label (``connect_error``, ...)."""
        if not self._done:
            self._done = True
            self._breaker._record(reason, self.is_probe)

    def record_status(self, status: int) -> None:
        """A failure if ``status`` is one of the breaker's failure statuses, else a success."""
        status = int(status)
        if status in self._breaker.failure_statuses:
            self.failure(f"status_{status}")
        else:
            self.success()

    def discard(self) -> None:
        """Count nothing: the outcome says nothing about the upstream (client went away)."""
        self._done = True


class AsyncBreaker:
    """A circuit breaker for one upstream; see the module docstring for how it works."""

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[StateListener] = (),
        history_size: int = 100,
    ) -> None:
        problems = []
        for key, value, low in (
            ("fail_max", fail_max, 1),
            ("half_open_max_calls", half_open_max_calls, 1),
            ("success_threshold", success_threshold, 1),
            ("history_size", history_size, 1),
        ):
            if not (isinstance(value, int) and value >= low):
                problems.append(f"{key}: {value!r}, expected an integer >= {low}")
        if not reset_timeout_s > 0:
            problems.append(f"reset_timeout_s: {reset_timeout_s!r}, expected > 0")
        if problems:
            raise ConfigError(problems, source=f"breaker {name!r}")
        self.name = name
        self.half_open_max_calls = half_open_max_calls
        self.failure_statuses = frozenset(int(s) for s in failure_statuses)
        self._clock = clock
        self._listeners: list[StateListener] = list(listeners)
        self.history: deque[StateChange] = deque(maxlen=history_size)
        self._trials_in_flight = 0
        self._reason = "observed_in_storage"
        self._cb = _ClockedCircuitBreaker(
            clock=clock,
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            success_threshold=success_threshold,
            state_storage=storage,
            name=name,
            listeners=[_Listener(self)],
        )

    # -- reading ------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (as stored; may change under shared storage)."""
        return _FROM_PYBREAKER[self._cb.state.name]

    @property
    def fail_counter(self) -> int:
        return self._cb.fail_counter

    @property
    def reset_timeout_s(self) -> float:
        return self._cb.reset_timeout

    @property
    def trials_in_flight(self) -> int:
        return self._trials_in_flight

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(name, old, new, reason)`` on each change; its errors are only logged."""
        self._listeners.append(listener)

    # -- admission ----------------------------------------------------------------------------

    def acquire(self) -> Trial:
        """Admit one request or raise :class:`BreakerOpen`; synchronous on purpose.

        Prefer :meth:`guard`; a caller of ``acquire`` must call :meth:`release` exactly once.
        """
        state = self.state
        if state == "open":
            opened_at = self._cb._state_storage.opened_at
            wait = (
                opened_at.timestamp() + self._cb.reset_timeout - self._clock()
                if opened_at is not None
                else 0.0
            )
            if wait > 0:
                raise BreakerOpen(self.name, "open", wait)
            self._transition("reset_timeout", self._cb.half_open)
            state = self.state
        if state == "half_open":
            if self._trials_in_flight >= self.half_open_max_calls:
                raise BreakerOpen(self.name, "half_open", 0.0)
            self._trials_in_flight += 1
            return Trial(self, is_probe=True)
        return Trial(self, is_probe=False)

    def release(self, trial: Trial, exc: BaseException | None = None) -> None:
        """Finish ``trial``: infer its outcome from ``exc`` if it was not reported."""
        if not trial.reported:
            if exc is None:
                trial.success()
            elif isinstance(exc, Exception):
                trial.failure(f"exception_{type(exc).__name__}")
            else:  # CancelledError, KeyboardInterrupt, GeneratorExit: not the upstream's doing
                trial.discard()
        if trial._holds_slot:  # released once, however often release is called
            trial._holds_slot = False
            self._trials_in_flight -= 1

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[Trial]:
        """``async with breaker.guard() as trial:`` — raises :class:`BreakerOpen` before entry.

        A clean exit without a report counts as success; an exception as failure, except
        :class:`asyncio.CancelledError`, which counts nothing.
        """
        trial = self.acquire()
        try:
            yield trial
        except BaseException as exc:
            self.release(trial, exc)
            raise
        else:
            self.release(trial)

    # -- mutations ----------------------------------------------------------------------------

    def reset(self, reason: str = "manual_reset") -> None:
        """Close the breaker now (admin mutation)."""
        if self.state != "closed":
            self._transition(reason, self._cb.close)

    def force_open(self, reason: str = "manual_open") -> None:
        """Open the breaker now (admin mutation); it half-opens after the reset timeout."""
        if self.state != "open":
            self._transition(reason, self._cb.open)

    # -- internals ----------------------------------------------------------------------------

    def _transition(self, reason: str, action: Callable[[], object]) -> None:
        self._reason = reason
        try:
            action()
        finally:
            self._reason = "observed_in_storage"

    def _record(self, failure: str | None, probe: bool) -> None:
        state = self.state
        if state == "open" or (state == "half_open" and not probe):
            return  # admitted before it tripped: the breaker has decided, only probes may undo it
        if failure is None:
            reason = "trial_success"
        elif state == "half_open":
            reason = f"trial_failure:{failure}"
        else:
            reason = f"failure_threshold:{failure}"
        self._reason = reason
        try:
            with self._cb.calling():
                if failure is not None:
                    raise _UpstreamFailure(failure)
        except (_UpstreamFailure, pybreaker.CircuitBreakerError):
            pass
        finally:
            self._reason = "observed_in_storage"

    def _changed(self, old: BreakerState, new: BreakerState) -> None:
        change = StateChange(self._clock(), self.name, old, new, self._reason)
        self.history.append(change)
        log.warning(
            "circuit breaker %s: %s -> %s (%s)",
            self.name,
            old,
            new,
            change.reason,
            extra={"breaker": self.name, "old": old, "new": new, "reason": change.reason},
        )
        for listener in self._listeners:
            try:
                listener(self.name, old, new, change.reason)
            except Exception:
                log.exception("circuit breaker %s: state listener failed", self.name)

    def __repr__(self) -> str:
        return (
            f"AsyncBreaker({self.name!r}, state={self.state!r}, fail_max={self._cb.fail_max}, "
            f"reset_timeout_s={self._cb.reset_timeout}, "
            f"half_open_max_calls={self.half_open_max_calls})"
        )


def redis_storage(
    redis: Any, *, name: str, namespace: str | None = None
) -> pybreaker.CircuitRedisStorage:
    """pybreaker's Redis storage for breaker ``name``, shared by every replica that uses it.

    ``redis`` is a ``redis.Redis`` client created with ``decode_responses=False`` (pybreaker
    decodes itself). ``namespace`` defaults to ``mlwarden:<name>`` so breakers do not collide.
    Without the ``redis`` package installed this raises :class:`ConfigError` at start-up.
    """
    if not pybreaker.HAS_REDIS_SUPPORT:
        raise ConfigError(
            f"breaker {name!r}: shared state in Redis needs the 'redis' package (pip install redis)"
        )
    return pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis, namespace=namespace or f"mlwarden:{name}"
    )
