"""One decider for a fleet of sidecars: a lease in Redis, with a fencing token per term.

Keys under ``mlwarden:{fleet}:``: ``leader`` holds ``"{token} {replica}"`` and expires after
the lease's TTL; ``term`` counts the terms, and its value is the fencing token of the current
one. Both scripts run atomically in Redis:

- acquire: ``SET leader NX PX ttl`` and, only if that took, ``INCR term`` and write the token
  into ``leader``: a new term per new holder, never two holders of one term;
- renew: extend ``leader``'s TTL only while it still holds this replica's value.

A holder counts itself the leader only until its last successful acquire or renewal plus
:data:`SAFETY` of the TTL, on its own monotonic clock: a holder that is paused, partitioned
or cannot reach Redis stops deciding before the lease can pass to another replica. Shared
state written by the leader carries its token and is applied only while that token is the
current term (:mod:`~mlwarden.sidecar.fleet.state`): a deposed holder's writes are refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SAFETY", "Lease"]

log = logging.getLogger("mlwarden.sidecar.fleet")

#: The share of the TTL a holder trusts its lease for after a renewal (the rest absorbs clock
#: drift between hosts and the time a renewal takes).
SAFETY = 0.75

_ACQUIRE = """
if redis.call('SET', KEYS[1], 'acquiring', 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
  return token
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """This replica's side of the fleet's lease (``client``: a ``redis.asyncio`` client).

    :meth:`step` is called every third of the TTL by the fleet's loop: it renews the lease
    when this replica holds it, else tries to take it. Redis errors propagate to the caller,
    which counts Redis unavailable; leadership then lapses by itself (see the module
    docstring).
    """

    def __init__(
        self,
        client: Any,
        *,
        fleet: str,
        replica: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.replica = replica
        self.ttl_s = ttl_s
        self._clock = clock
        self.leader_key = f"mlwarden:{fleet}:leader"
        self.term_key = f"mlwarden:{fleet}:term"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        #: The fencing token of this replica's term; None while it holds no lease.
        self.token: int | None = None
        self._valid_until = 0.0
        #: Terms this replica has won (a takeover count).
        self.terms_won = 0

    def __repr__(self) -> str:
        return f"Lease({self.leader_key!r}, replica={self.replica!r}, token={self.token})"

    @property
    def is_leader(self) -> bool:
        """Holds the lease and renewed it recently enough to decide now."""
        return self.token is not None and self._clock() < self._valid_until

    @property
    def _value(self) -> str:
        return f"{self.token} {self.replica}"

    async def step(self) -> bool:
        """Renew or take the lease; whether this replica leads now."""
        ttl_ms = str(int(self.ttl_s * 1000))
        started = self._clock()
        if self.token is not None:
            renewed = await self._renew(keys=[self.leader_key], args=[self._value, ttl_ms])
            if renewed:
                self._valid_until = started + SAFETY * self.ttl_s
                return True
            log.warning("fleet: %s lost the lease (term %d)", self.replica, self.token)
            self.token = None
        token = int(
            await self._acquire(keys=[self.leader_key, self.term_key], args=[self.replica, ttl_ms])
        )
        if token:
            self.token = token
            self.terms_won += 1
            self._valid_until = started + SAFETY * self.ttl_s
            log.warning("fleet: %s leads (term %d)", self.replica, token)
            return True
        return False

    def lapse(self) -> None:
        """Stop leading now (Redis unreachable: the lease will expire by itself)."""
        if self.token is not None:
            log.warning("fleet: %s stops leading: Redis unavailable", self.replica)
        self.token = None

    async def holder(self) -> tuple[int, str] | None:
        """The current term and holder as Redis has them (None: no one leads)."""
        value = await self._client.get(self.leader_key)
        if not value:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        token, _, replica = text.partition(" ")
        return int(token), replica

    async def release(self) -> None:
        """Give the lease up (a clean stop): another replica may lead at once."""
        if self.token is None:
            return
        try:
            await self._release(keys=[self.leader_key], args=[self._value])
        finally:
            self.token = None
