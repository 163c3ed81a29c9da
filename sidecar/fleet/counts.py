"""The fleet's count of healing records, for escalation windows that count every replica's heals.

"A policy firing more than 3 times in a week escalates" means the fleet's firings: three heals
on three replicas are one repeated incident, not three isolated ones. Each replica adds its
``policy_fired`` and ``escalation`` records to a sorted set per (action, policy) in Redis
(``mlwarden:{fleet}:count:{action}:{policy}``, member the record's id, score its time), trims
the sets to the escalation window, and reads them back into a local mirror on every pass of
the fleet's loop. :class:`FleetRecords` answers the policy engine's counts from that mirror
(plus this replica's records not sent yet), synchronously and without Redis on the caller's
path; without a fresh mirror (Redis down, or not synced for three passes) it answers from the
local ledger, as a sidecar without a fleet does. Bounded: the sets by the window (and at most
:data:`MAX_PER_KEY` members read back), the keys by the configured policies.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["COUNTED", "MAX_PER_KEY", "FleetCounts", "FleetRecords"]

#: The actions whose records the fleet counts (the escalation's inputs).
COUNTED = ("policy_fired", "escalation")
#: Members read back per key at most (a window of heals is far smaller).
MAX_PER_KEY = 10_000
_MAX_PENDING = 10_000


class FleetCounts:
    """The mirror of the fleet's counted records (``client``: a ``redis.asyncio`` client)."""

    def __init__(
        self,
        client: Any,
        *,
        fleet: str,
        horizon_s: float,
        policies: Iterable[str] = (),
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = f"mlwarden:{fleet}:count"
        self.horizon_s = horizon_s
        self._wall = wall_clock
        self._clock = clock
        self._keys: dict[tuple[str, str], str] = {}
        self.set_policies(policies)
        self._mirror: dict[tuple[str, str], list[float]] = {}
        self._pending: deque[tuple[tuple[str, str], str, float]] = deque(maxlen=_MAX_PENDING)
        self.synced_at: float | None = None
        self._max_age_s = 0.0

    def set_policies(self, policies: Iterable[str]) -> None:
        """The policies whose records are counted (the engine's, once it is built)."""
        names = list(policies)  # read once: a generator would be spent by the first action
        self._keys = {(a, p): f"{self._prefix}:{a}:{p}" for a in COUNTED for p in names}

    def recorded(self, record: Any) -> None:
        """A ledger record of this replica: queued for the fleet's sets when it counts."""
        key = (record.action, record.policy)
        if key in self._keys:
            self._pending.append((key, record.id, float(record.at)))

    async def sync(self, max_age_s: float) -> None:
        """Send what is pending, trim to the horizon, read every set back; the mirror is
        trusted for ``max_age_s`` after this."""
        now = self._wall()
        low = now - self.horizon_s
        sent = list(self._pending)
        pipe = self._client.pipeline(transaction=False)
        for key, member, at in sent:
            pipe.zadd(self._keys[key], {member: at})
        names = list(self._keys.items())
        for _, name in names:
            pipe.zremrangebyscore(name, "-inf", f"({low}")
            pipe.expire(name, int(self.horizon_s) + 60)
            pipe.zrangebyscore(name, low, "+inf", withscores=True, start=0, num=MAX_PER_KEY)
        results = await pipe.execute()
        for _ in sent:
            self._pending.popleft()
        offset = len(sent)
        mirror = {}
        for i, (key, _name) in enumerate(names):
            members = results[offset + 3 * i + 2]
            mirror[key] = sorted(score for _member, score in members)
        self._mirror = mirror
        self.synced_at = self._clock()
        self._max_age_s = max_age_s

    def fresh(self) -> bool:
        """Synced within the age the last sync allowed (three of the fleet's passes)."""
        return self.synced_at is not None and self._clock() - self.synced_at <= self._max_age_s

    def count(self, since: float, action: str, policy: str) -> int | None:
        """The fleet's records of ``action`` by ``policy`` since ``since`` (epoch seconds);
        None when the mirror is not fresh or the key is not counted."""
        key = (action, policy)
        if key not in self._keys or not self.fresh():
            return None
        scores = self._mirror.get(key, [])
        fleet = len(scores) - bisect.bisect_left(scores, since)
        pending = sum(1 for k, _, at in self._pending if k == key and at >= since)
        return fleet + pending


class FleetRecords:
    """The policy engine's view of the ledger in a fleet: counts of the counted actions from
    the fleet's mirror (see the module docstring), everything else from the local ledger."""

    def __init__(self, ledger: Any, counts: FleetCounts) -> None:
        self._ledger = ledger
        self._counts = counts

    def count_since(self, since: float, **filters: Any) -> int:
        if set(filters) == {"policy", "action"}:
            fleet = self._counts.count(since, filters["action"], filters["policy"])
            if fleet is not None:
                return fleet
        return int(self._ledger.count_since(since, **filters))

    def query(self, *, limit: int) -> Any:
        return self._ledger.query(limit=limit)
