"""This sidecar's membership of a fleet: the lease's loop, the shared state, the fleet ledger.

:class:`Fleet` runs one background loop (every third of the lease's TTL, or the poll
interval when shorter): renew or take the lease (:mod:`~mlwarden.sidecar.fleet.lease`), and
append the ledger records this replica wrote since the last pass to the fleet's stream
(:mod:`~mlwarden.sidecar.fleet.state`), then its other :attr:`Fleet.passes` (the fleet
policies' routes, :mod:`~mlwarden.sidecar.fleet.routes`). It never runs on the request path:
requests never wait on Redis.

Redis unreachable (or slower than ``redis_timeout_s``): the lease lapses at once (this replica
stops leading; the lease expires in Redis by itself), every replica decides alone, and the
change is recorded in the ledger (``fleet_degraded``, then ``fleet_restored`` when Redis
answers again). Ledger records keep queueing for the stream meanwhile, at most
:data:`MAX_QUEUED` (older ones dropped and counted), and are appended once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from mlwarden.sidecar.config.fleet import FleetConfig
from mlwarden.sidecar.fleet.counts import FleetCounts
from mlwarden.sidecar.fleet.lease import Lease
from mlwarden.sidecar.fleet.state import FleetState
from mlwarden.sidecar.listeners import Listener

__all__ = ["MAX_QUEUED", "Fleet"]

log = logging.getLogger("mlwarden.sidecar.fleet")

#: Ledger records waiting for the fleet's stream (Redis down), at most.
MAX_QUEUED = 10_000


def _redis_client(config: FleetConfig) -> Any:
    try:
        import redis.asyncio
    except ImportError:
        from mlwarden.middleware.errors import ConfigError

        raise ConfigError(
            ["fleet.redis_url: needs the redis package (pip install 'mlwarden[sidecar]')"]
        ) from None

    return redis.asyncio.Redis.from_url(
        config.redis_url,
        socket_timeout=config.redis_timeout_s,
        socket_connect_timeout=config.redis_timeout_s,
    )


class Fleet(Listener):
    """See the module docstring. ``record(**fields)`` writes this sidecar's ledger; the fleet
    hears every record through :meth:`recorded` (it is a ledger listener)."""

    def __init__(
        self,
        config: FleetConfig,
        *,
        record: Callable[..., None],
        count_horizon_s: float = 7 * 86_400.0,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.replica = config.replica or f"{socket.gethostname()}-{os.getpid()}"
        self._client = client if client is not None else _redis_client(config)
        self._owns_client = client is None
        self.lease = Lease(
            self._client,
            fleet=config.name,
            replica=self.replica,
            ttl_s=config.lease_ttl_s,
            clock=clock,
        )
        self.state = FleetState(self._client, fleet=config.name)
        #: The fleet's counts of healing records (escalation windows); policies set later.
        self.counts = FleetCounts(
            self._client,
            fleet=config.name,
            horizon_s=count_horizon_s,
            wall_clock=wall_clock,
            clock=clock,
        )
        #: Called at the end of every pass while this replica leads (the escalation sweep).
        self.on_lead: Callable[[], Any] | None = None
        #: More of each pass with Redis, in order (the fleet's routes); a failure: Redis down.
        self.passes: list[Callable[[], Awaitable[None]]] = []
        self._record = record
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[str] = deque()
        #: Redis reachable at the last pass (a fresh sidecar assumes so until told otherwise).
        self.available = True
        self.redis_errors = 0
        self.records_dropped = 0
        self.records_sent = 0
        self._degraded_since: float | None = None

    def __repr__(self) -> str:
        return f"Fleet({self.config.name!r}, replica={self.replica!r}, leader={self.is_leader})"

    @property
    def is_leader(self) -> bool:
        return self.lease.is_leader

    @property
    def interval_s(self) -> float:
        return min(self.config.lease_ttl_s / 3, self.config.poll_interval_s)

    # -- the ledger's records, to the fleet's stream --------------------------------------------

    def recorded(self, record: Any) -> None:
        """As a ledger listener: queue the record for the fleet's stream and counts (never
        waits)."""
        self.counts.recorded(record)
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.records_dropped += 1
        self._queue.append(record.to_json())

    async def _send_records(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            try:
                await self.state.append_records(self.replica, batch)
            except BaseException:
                self._queue.extendleft(reversed(batch))  # kept for the next pass
                raise
            self.records_sent += len(batch)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Lease and stream, every :attr:`interval_s`, until cancelled."""
        while True:
            await self.step()
            await self._sleep(self.interval_s)

    async def step(self) -> None:
        """One pass: lease, then records. A Redis failure degrades, never raises."""
        try:
            async with asyncio.timeout(self.config.redis_timeout_s * 4):
                await self.lease.step()
                await self._send_records()
                await self.counts.sync(
                    max_age_s=3 * self.interval_s + self.config.redis_timeout_s * 4
                )
                for more in self.passes:
                    await more()
        except Exception as exc:  # redis.RedisError, OSError, TimeoutError: all say "down"
            self.redis_errors += 1
            self.lease.lapse()
            if self.available:
                self.available = False
                self._degraded_since = self._clock()
                log.warning(
                    "fleet %s: Redis unavailable (%s): deciding alone", self.config.name, exc
                )
                self._record(
                    action="fleet_degraded",
                    target=self.replica,
                    reason=f"Redis unavailable ({type(exc).__name__}): this sidecar decides "
                    "alone until it is back",
                    severity="warning",
                )
            return
        if not self.available:
            self.available = True
            down_s = self._clock() - (self._degraded_since or self._clock())
            self._degraded_since = None
            self._record(
                action="fleet_restored",
                target=self.replica,
                reason=f"Redis reachable again after {down_s:.1f}s: following the fleet",
                severity="info",
            )
        if self.on_lead is not None and self.is_leader:
            try:
                self.on_lead()
            except Exception:
                log.exception("fleet %s: the leader's sweep failed", self.config.name)

    async def aclose(self) -> None:
        """Give the lease up (another replica leads at once), send what is queued (bounded),
        close the client this fleet made."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.redis_timeout_s * 4):
                await self.lease.release()
                await self._send_records()
        if self._owns_client:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready, for the admin ``/-/status``."""
        return {
            "name": self.config.name,
            "replica": self.replica,
            "leader": self.is_leader,
            "term": self.lease.token,
            "terms_won": self.lease.terms_won,
            "redis_available": self.available,
            "redis_errors": self.redis_errors,
            "records_queued": len(self._queue),
            "records_sent": self.records_sent,
            "records_dropped": self.records_dropped,
        }
