"""Where a circuit breaker keeps its state: Redis shared across replicas, made unable to fail.

pybreaker keeps a breaker's state, failure counter and ``opened_at`` in a storage object;
:class:`~mlwarden.sidecar.resilience.breaker.AsyncBreaker` uses pybreaker's memory storage
unless it is given a shared one. This module owns the shared one and its safety net:

- :class:`RedisStorage` (made by :func:`redis_storage`, or for every upstream at once by
  ``build_breakers`` with ``breaker.redis_url`` and one :func:`redis_client`) lets replicas
  share state, failure counter and ``opened_at``, so that failures seen by one replica open
  the breaker for all. The storage is synchronous, so each admission and each outcome costs a
  few Redis round trips on the event loop; keep Redis close.
- :class:`FailOpenStorage` wraps any storage so that Redis down, slow or answering errors
  never fails a request: the breaker **fails open**. It counts the error, logs one warning,
  treats the breaker as closed (every read answers "closed, no failures", writes are dropped)
  and does not ask Redis again for ``retry_interval_s`` (:data:`STORAGE_RETRY_INTERVAL_S`,
  5 s), so a Redis that times out costs one timeout per interval, not several per request.
  After that the next access tries Redis again and resumes shared state if it answers. While
  Redis is down no breaker opens, not even locally: the upstreams are still tried and the
  retries and fallbacks still apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pybreaker

from mlwarden.middleware.errors import ConfigError

__all__ = [
    "REDIS_SOCKET_TIMEOUT_S",
    "STORAGE_RETRY_INTERVAL_S",
    "FailOpenStorage",
    "RedisStorage",
    "redis_client",
    "redis_storage",
]

log = logging.getLogger("mlwarden.sidecar.breaker")

#: After an error of its shared storage, a breaker leaves it alone this long (clock seconds).
STORAGE_RETRY_INTERVAL_S = 5.0
#: Connect and read timeouts of the Redis client ``build_breakers`` makes. The storage runs
#: on the event loop, so a slow Redis must cost little; ``?socket_timeout=`` in the URL wins.
REDIS_SOCKET_TIMEOUT_S = 0.1
_STATES = frozenset({pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN})


class RedisStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's Redis key layout (``<namespace>:pybreaker:<field>``), with errors raised.

    Not pybreaker's ``CircuitRedisStorage``: that one catches every Redis error and logs a
    traceback for it (about six per request while Redis is down) where nobody can count
    them, writes to Redis in its constructor without catching (a Redis down at start-up stops
    the sidecar), and stores ``opened_at`` in whole seconds (a sub-second reset timeout would
    end at once). Errors here go to :class:`FailOpenStorage`; missing keys read as "closed,
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
        if state not in _STATES:
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


class FailOpenStorage(pybreaker.CircuitBreakerStorage):
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
    return RedisStorage(redis, namespace=namespace or f"mlwarden:{name}")


def redis_client(url: str) -> Any:
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
