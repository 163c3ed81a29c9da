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

Shared state: :func:`build_breakers` with ``breaker.redis_url`` set (or
``storage=redis_storage(client, name=...)``) makes replicas share state, failure counter and
``opened_at`` through Redis; a storage that fails makes the breaker fail open (closed) rather
than fail a request. Both live in :mod:`mlwarden.sidecar.resilience.breaker_storage`. The
bound on half-open trials stays per replica: with N replicas up to N * ``half_open_max_calls``
trials run at once (sharing it would need a distributed semaphore whose slots leak when a
replica dies).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pybreaker

from mlwarden.middleware.errors import ConfigError, MlwardenError
from mlwarden.sidecar.config import BreakerConfig
from mlwarden.sidecar.listeners import FanOut, Listener
from mlwarden.sidecar.resilience.breaker_storage import (
    STORAGE_RETRY_INTERVAL_S,
    FailOpenStorage,
    RedisStorage,
    redis_client,
)

if TYPE_CHECKING:
    from mlwarden.sidecar.config import SidecarConfig

__all__ = [
    "AsyncBreaker",
    "BreakerOpen",
    "BreakerState",
    "StateChange",
    "Trial",
    "build_breakers",
]

log = logging.getLogger("mlwarden.sidecar.breaker")

BreakerState = Literal["closed", "open", "half_open"]

_FROM_PYBREAKER: dict[str, BreakerState] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}
# One default per key: the ``breaker:`` block's, also when a breaker is built directly.
_BLOCK = BreakerConfig()
DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset(_BLOCK.failure_status_codes)


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
        self._owner._state_seen = _FROM_PYBREAKER[new_state.name]
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
    """A circuit breaker for one upstream; see the module docstring for how it works.

    A ``storage`` given here is shared state: its errors make the breaker fail open (closed)
    for ``storage_retry_interval_s`` instead of failing the request.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = _BLOCK.consecutive_5xx,
        reset_timeout_s: float = _BLOCK.reset_timeout_s,
        half_open_max_calls: int = _BLOCK.half_open_max_calls,
        success_threshold: int = 1,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[Listener] = (),
        history_size: int = 100,
        storage_retry_interval_s: float = STORAGE_RETRY_INTERVAL_S,
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
        if not storage_retry_interval_s > 0:
            problems.append(f"storage_retry_interval_s: {storage_retry_interval_s!r}, expected > 0")
        if problems:
            raise ConfigError(problems, source=f"breaker {name!r}")
        self.name = name
        self.half_open_max_calls = half_open_max_calls
        self.failure_statuses = frozenset(int(s) for s in failure_statuses)
        self._clock = clock
        self._listeners = FanOut(listeners)
        self.history: deque[StateChange] = deque(maxlen=history_size)
        self._trials_in_flight = 0
        self._reason = "observed_in_storage"
        #: Requests admitted as if closed because the shared storage was unavailable.
        self.fail_open_total = 0
        self._storage = (
            FailOpenStorage(
                storage, breaker=name, clock=clock, retry_interval_s=storage_retry_interval_s
            )
            if storage is not None
            else None
        )
        #: The state pybreaker last announced: with its own (in-memory) storage, the state.
        self._state_seen: BreakerState = "closed"
        self._cb = _ClockedCircuitBreaker(
            clock=clock,
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            success_threshold=success_threshold,
            state_storage=self._storage,
            name=name,
            listeners=[_Listener(self)],
        )

    @classmethod
    def from_config(
        cls,
        block: BreakerConfig,
        name: str,
        *,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Callable[[], float] = time.time,
        storage_retry_interval_s: float = STORAGE_RETRY_INTERVAL_S,
    ) -> AsyncBreaker:
        """The breaker of upstream ``name`` from the validated ``breaker:`` block.

        The block's ``redis_url`` is not read here: every breaker shares one Redis client, so
        :func:`build_breakers` makes it and passes each breaker its ``storage``.
        """
        return cls(
            name,
            fail_max=block.consecutive_5xx,
            reset_timeout_s=block.reset_timeout_s,
            half_open_max_calls=block.half_open_max_calls,
            failure_statuses=block.failure_status_codes,
            storage=storage,
            clock=clock,
            storage_retry_interval_s=storage_retry_interval_s,
        )

    # -- reading ------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (as stored; may change under shared storage).

        With pybreaker's in-memory storage every change goes through its state setter, which
        tells the listener: the state it announced is read without pybreaker's lookups (it is
        read several times per request)."""
        if self._storage is None:
            return self._state_seen
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

    @property
    def opened_at(self) -> float | None:
        """When it last opened (clock seconds) as stored, so possibly by another replica;
        None if never, or if the storage cannot say."""
        when = self._cb._state_storage.opened_at
        return when.timestamp() if when is not None else None

    @property
    def storage_errors_total(self) -> int:
        """Accesses to the shared storage that failed (at most one per retry interval)."""
        return self._storage.errors_total if self._storage is not None else 0

    @property
    def storage_available(self) -> bool:
        """False while the shared storage is failing and the breaker fails open."""
        return self._storage is None or self._storage.available

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener.breaker_changed(name, old, new, reason)`` on each change; its errors
        are only logged."""
        self._listeners.add(listener)

    # -- admission ----------------------------------------------------------------------------

    def acquire(self) -> Trial:
        """Admit one request or raise :class:`BreakerOpen`; synchronous on purpose.

        Prefer :meth:`guard`; a caller of ``acquire`` must call :meth:`release` exactly once.
        """
        state = self.state
        if state == "open":
            opened_at = self.opened_at
            wait = (
                opened_at + self._cb.reset_timeout - self._clock() if opened_at is not None else 0.0
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
        if not self.storage_available:
            self.fail_open_total += 1
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

    def close(self) -> None:
        """Close the Redis client :func:`build_breakers` made (shared with the other breakers
        it made; closing it again is harmless). A storage passed in is left as it is."""
        if self._storage is not None:
            self._storage.close()

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
        if failure is None and state == "closed" and self._cb.fail_counter == 0:
            return  # the common case: pybreaker would only reset a counter that is already 0
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
        reason = self._reason
        if reason == "observed_in_storage" and not self.storage_available:
            reason = "storage_unavailable"  # failing open: the storage was not read
        change = StateChange(self._clock(), self.name, old, new, reason)
        self.history.append(change)
        log.warning(
            "circuit breaker %s: %s -> %s (%s)",
            self.name,
            old,
            new,
            change.reason,
            extra={"breaker": self.name, "old": old, "new": new, "reason": change.reason},
        )
        self._listeners.breaker_changed(self.name, old, new, change.reason)

    def __repr__(self) -> str:
        return (
            f"AsyncBreaker({self.name!r}, state={self.state!r}, fail_max={self._cb.fail_max}, "
            f"reset_timeout_s={self._cb.reset_timeout}, "
            f"half_open_max_calls={self.half_open_max_calls})"
        )


def build_breakers(
    config: SidecarConfig,
    *,
    clock: Callable[[], float] = time.time,
    storage_retry_interval_s: float = STORAGE_RETRY_INTERVAL_S,
) -> dict[str, AsyncBreaker]:
    """One :class:`AsyncBreaker` per upstream of ``config``, from its ``breaker`` block.

    ``clock`` is in epoch seconds (``opened_at`` may be shared). With ``breaker.redis_url``
    the breakers keep their state in Redis under ``mlwarden:<upstream>:pybreaker:*``, shared
    with every replica that has the same URL and upstream names (give each deployment its own
    Redis database, the ``/N`` in the URL). One client serves them all; :meth:`AsyncBreaker.close`
    closes it. Redis unreachable, at start-up or later, does not fail anything: the breakers
    fail open (see the module docstring). A missing ``redis`` package or a URL that
    ``redis.Redis.from_url`` refuses is a :class:`ConfigError` naming ``breaker.redis_url``.
    """
    b = config.breaker
    client = redis_client(b.redis_url) if b.redis_url else None
    breakers: dict[str, AsyncBreaker] = {}
    for upstream in config.upstreams:
        name = upstream.name
        storage = (
            RedisStorage(client, namespace=f"mlwarden:{name}", owns_client=True)
            if client is not None
            else None
        )
        breakers[name] = AsyncBreaker.from_config(
            b,
            name,
            storage=storage,
            clock=clock,
            storage_retry_interval_s=storage_retry_interval_s,
        )
    return breakers
