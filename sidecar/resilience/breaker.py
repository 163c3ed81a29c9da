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
``opened_at`` through Redis, so that failures seen by one replica open the breaker for all. The
bound on half-open trials stays per replica: with N replicas up to N * ``half_open_max_calls``
trials run at once (sharing it would need a distributed semaphore whose slots leak when a
replica dies). The storage is synchronous, so each admission and each outcome costs a few
Redis round trips on the event loop; keep Redis close.

Redis down, slow or answering errors never fails a request: a breaker whose shared storage
raises **fails open**. It counts the error (:attr:`AsyncBreaker.storage_errors_total`), logs
one warning, treats the breaker as closed (every read answers "closed, no failures", writes
are dropped; :attr:`AsyncBreaker.fail_open_total` counts the requests admitted so) and does
not ask Redis again for ``storage_retry_interval_s`` (5 s), so a Redis that times out costs one
timeout per interval, not several per request. After that the next access tries Redis again and
resumes shared state if it answers. While Redis is down no breaker opens, not even locally:
the upstreams are still tried and the retries and fallbacks still apply.
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

if TYPE_CHECKING:
    from mlwarden.sidecar.config import SidecarConfig

__all__ = [
    "AsyncBreaker",
    "BreakerOpen",
    "BreakerState",
    "StateChange",
    "StateListener",
    "Trial",
    "build_breakers",
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
#: After an error of its shared storage, a breaker leaves it alone this long (clock seconds).
STORAGE_RETRY_INTERVAL_S = 5.0
#: Connect and read timeouts of the Redis client :func:`build_breakers` makes. The storage runs
#: on the event loop, so a slow Redis must cost little; ``?socket_timeout=`` in the URL wins.
REDIS_SOCKET_TIMEOUT_S = 0.1


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


class _RedisStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's Redis key layout (``<namespace>:pybreaker:<field>``), with errors raised.

    Not pybreaker's ``CircuitRedisStorage``: that one catches every Redis error and logs a
    traceback for it (about six per request while Redis is down) where nobody can count
    them, writes to Redis in its constructor without catching (a Redis down at start-up stops
    the sidecar), and stores ``opened_at`` in whole seconds (a sub-second reset timeout would
    end at once). Errors here go to :class:`_FailOpenStorage`; missing keys read as "closed,
    no failures, never opened", so a Redis restarted empty needs no set-up.
    """

    def __init__(self, redis: Any, *, namespace: str, owns_client: bool = False) -> None:
        super().__init__("redis")
        self._redis = redis
        self._prefix = f"{namespace}:pybreaker:"
        self._owns_client = owns_client

    @property
    def state(self) -> str:
        raw = self._redis.get(self._prefix + "state")
        if raw is None:
            return pybreaker.STATE_CLOSED
        state = raw.decode() if isinstance(raw, bytes) else str(raw)
        if state not in _FROM_PYBREAKER:
            raise ValueError(f"unknown breaker state {state!r} in {self._prefix}state")
        return state

    @state.setter
    def state(self, state: str) -> None:
        self._redis.set(self._prefix + "state", state)

    @property
    def counter(self) -> int:
        return int(self._redis.get(self._prefix + "fail_counter") or 0)

    def increment_counter(self) -> None:
        self._redis.incr(self._prefix + "fail_counter")

    def reset_counter(self) -> None:
        self._redis.set(self._prefix + "fail_counter", 0)

    @property
    def success_counter(self) -> int:
        return int(self._redis.get(self._prefix + "success_counter") or 0)

    def increment_success_counter(self) -> None:
        self._redis.incr(self._prefix + "success_counter")

    def reset_success_counter(self) -> None:
        self._redis.set(self._prefix + "success_counter", 0)

    @property
    def opened_at(self) -> datetime | None:
        raw = self._redis.get(self._prefix + "opened_at")
        return None if raw is None else datetime.fromtimestamp(float(raw), UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        # Epoch seconds, fractions kept; whole seconds read as pybreaker writes them.
        stamp = f"{when.timestamp():.6f}".rstrip("0").rstrip(".")
        self._redis.set(self._prefix + "opened_at", stamp)

    def close(self) -> None:
        if self._owns_client:
            self._redis.close()


class _FailOpenStorage(pybreaker.CircuitBreakerStorage):
    """Another storage, made unable to fail a request.

    An exception from it is counted and logged, and for ``retry_interval_s`` the storage is
    not asked at all: reads answer "closed, no failures, never opened" and writes are dropped.
    Skipping it, not only catching, is what bounds the cost of a Redis that times out: the
    storage is synchronous and on the event loop. The next access after the interval tries
    again; one warning per failed try, one when it answers again.
    """

    def __init__(
        self,
        inner: pybreaker.CircuitBreakerStorage,
        *,
        breaker: str,
        clock: Callable[[], float],
        retry_interval_s: float,
    ) -> None:
        super().__init__(inner.name)
        self._inner = inner
        self._breaker = breaker
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._retry_at: float | None = None  # None while the storage answers
        self.errors_total = 0

    @property
    def available(self) -> bool:
        """False from a failed access until the next one that succeeds."""
        return self._retry_at is None

    def _use(self, action: Callable[[], Any], fallback: Any) -> Any:
        if self._retry_at is not None:
            now = self._clock()
            # The lower bound: a clock set back must not postpone the next try by as much.
            if self._retry_at - self._retry_interval_s <= now < self._retry_at:
                return fallback
        try:
            result = action()
        except Exception as exc:
            self._failed(exc)
            return fallback
        if self._retry_at is not None:
            self._retry_at = None
            log.warning(
                "circuit breaker %s: shared state is reachable again",
                self._breaker,
                extra={"breaker": self._breaker, "storage": self.name},
            )
        return result

    def _failed(self, exc: Exception) -> None:
        self.errors_total += 1
        again = self._retry_at is not None
        self._retry_at = self._clock() + self._retry_interval_s
        log.warning(
            "circuit breaker %s: shared state %s (%s: %s); failing open (treated as closed), "
            "next try in %gs",
            self._breaker,
            "still unavailable" if again else "unavailable",
            type(exc).__name__,
            exc,
            self._retry_interval_s,
            extra={"breaker": self._breaker, "storage": self.name, "error": type(exc).__name__},
        )

    @property
    def state(self) -> str:
        return self._use(lambda: self._inner.state, pybreaker.STATE_CLOSED)

    @state.setter
    def state(self, state: str) -> None:
        self._use(lambda: setattr(self._inner, "state", state), None)

    @property
    def counter(self) -> int:
        return self._use(lambda: self._inner.counter, 0)

    def increment_counter(self) -> None:
        self._use(self._inner.increment_counter, None)

    def reset_counter(self) -> None:
        self._use(self._inner.reset_counter, None)

    @property
    def success_counter(self) -> int:
        return self._use(lambda: self._inner.success_counter, 0)

    def increment_success_counter(self) -> None:
        self._use(self._inner.increment_success_counter, None)

    def reset_success_counter(self) -> None:
        self._use(self._inner.reset_success_counter, None)

    @property
    def opened_at(self) -> datetime | None:
        return self._use(lambda: self._inner.opened_at, None)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._use(lambda: setattr(self._inner, "opened_at", when), None)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


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
        fail_max: int = 5,
        reset_timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[StateListener] = (),
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
        self._listeners: list[StateListener] = list(listeners)
        self.history: deque[StateChange] = deque(maxlen=history_size)
        self._trials_in_flight = 0
        self._reason = "observed_in_storage"
        #: Requests admitted as if closed because the shared storage was unavailable.
        self.fail_open_total = 0
        self._storage = (
            _FailOpenStorage(
                storage, breaker=name, clock=clock, retry_interval_s=storage_retry_interval_s
            )
            if storage is not None
            else None
        )
        self._cb = _ClockedCircuitBreaker(
            clock=clock,
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            success_threshold=success_threshold,
            state_storage=self._storage,
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
) -> pybreaker.CircuitBreakerStorage:
    """Shared state in Redis for breaker ``name``, for every replica that uses the same keys.

    ``redis`` is a ``redis.Redis`` client (the caller keeps and closes it); keys are
    ``<namespace>:pybreaker:<field>``, pybreaker's layout, with ``namespace`` defaulting to
    ``mlwarden:<name>``. Nothing is sent to Redis here. Without the ``redis`` package
    installed this raises :class:`ConfigError` at start-up.
    """
    if not pybreaker.HAS_REDIS_SUPPORT:
        raise ConfigError(
            f"breaker {name!r}: shared state in Redis needs the 'redis' package "
            f"(pip install 'mlwarden[redis]')"
        )
    return _RedisStorage(redis, namespace=namespace or f"mlwarden:{name}")


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
    client = _redis_client(b.redis_url) if b.redis_url else None
    breakers: dict[str, AsyncBreaker] = {}
    for upstream in config.upstreams:
        name = upstream.name
        storage = (
            _RedisStorage(client, namespace=f"mlwarden:{name}", owns_client=True)
            if client is not None
            else None
        )
        breakers[name] = AsyncBreaker(
            name,
            fail_max=b.consecutive_5xx,
            reset_timeout_s=b.reset_timeout_s,
            half_open_max_calls=b.half_open_max_calls,
            failure_statuses=b.failure_status_codes,
            storage=storage,
            clock=clock,
            storage_retry_interval_s=storage_retry_interval_s,
        )
    return breakers


def _redis_client(url: str) -> Any:
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigError(
            "breaker.redis_url: shared breaker state needs the 'redis' package "
            "(pip install 'mlwarden[redis]')"
        ) from exc
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            # redis-py retries with backoff by default, sleeping on the event loop; a failed
            # access fails open instead, and the breaker tries again after its interval.
            retry=Retry(NoBackoff(), 0),
        )
        # Connections are made lazily; build one (no socket yet) so that an unknown
        # ?option= in the URL fails here rather than on every access at run time.
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"breaker.redis_url: redis cannot use this URL ({type(exc).__name__}; "
            f"value hidden: it may hold a password)"
        ) from None
    return client
