"""The ledger's window index: how often an action repeated over days, without reading files.

Escalation windows (the ledger's ``count_since``) may span days, far more than the ledger's
deque of recent records holds. :class:`WindowIndex` therefore keeps, separately and compactly,
the timestamps of the records per ``(policy, action, target)`` key, at most ``max_per_key``
(10,000 by default) per key, for at most 4,096 keys (the key quiet longest is evicted and
counted, ``index_keys_evicted``), pruned to ``horizon_s`` (8 days by default). The ledger
rebuilds it at start-up from every retained file (the scan stops once it is past both the
horizon and the records it keeps), so counts survive restarts, and a query costs a pass over a
few small deques, never a file scan.

Limits of the answer, documented rather than hidden: records older than the horizon are never
counted (the ledger clamps ``since`` to it, so the answer is the same before and after a
restart); records rotated out of the retained files are not counted after a restart (the
ledger's ``coverage_start`` says from when counts are complete); and a key holding more than
``max_per_key`` timestamps in the window answers that cap (escalation thresholds are small
numbers, so a saturated count still crosses them). The start-up scan reads at most
``(backups + 1) * max_bytes`` of ledger files (60 MiB by default: about a second, measured at
4 us a line, when all of it lies within the horizon; after a normal week a few kilobytes).
"""

from __future__ import annotations

import math
from collections import Counter, deque

from mlwarden.sidecar.healing.ledger_records import IndexKey

__all__ = ["WindowIndex"]

_INDEX_MAX_KEYS = 4096


class WindowIndex:
    """Record times per key within ``horizon_s``, at most ``max_per_key`` each.

    Not locked: the ledger's lock serialises every call. ``stats`` is the ledger's counter
    (``index_keys_evicted``).
    """

    __slots__ = ("_keys", "_max_per_key", "_stats", "horizon_s")

    def __init__(self, *, horizon_s: float, max_per_key: int, stats: Counter[str]) -> None:
        self.horizon_s = horizon_s
        self._max_per_key = max_per_key
        self._stats = stats
        self._keys: dict[IndexKey, deque[float]] = {}

    def __repr__(self) -> str:
        return f"WindowIndex(keys={len(self._keys)}, horizon_s={self.horizon_s})"

    def add(self, key: IndexKey, at: float) -> None:
        """One record of ``key`` at ``at`` (records arrive in time order)."""
        index = self._keys
        stamps = index.get(key)
        if stamps is None:
            if len(index) >= _INDEX_MAX_KEYS:
                # Evict the key that has been quiet longest.
                stale = min(index, key=lambda k: index[k][-1] if index[k] else -math.inf)
                del index[stale]
                self._stats["index_keys_evicted"] += 1
            stamps = index[key] = deque(maxlen=self._max_per_key)
        stamps.append(at)
        cutoff = at - self.horizon_s
        while stamps and stamps[0] < cutoff:
            stamps.popleft()

    def count(
        self,
        since: float,
        until: float | None,
        *,
        policy: str | None,
        action: str | None,
        target: str | None,
    ) -> int:
        """Records in ``since <= at < until`` whose key matches every filter given."""
        total = 0
        for (p, a, t), stamps in self._keys.items():
            if (
                (policy is not None and p != policy)
                or (action is not None and a != action)
                or (target is not None and t != target)
            ):
                continue
            total += sum(1 for at in stamps if at >= since and (until is None or at < until))
        return total
