"""The fleet's drift counts in Redis: each replica's latest counts, and the leader's verdict.

Keys under ``mlwarden:{fleet}:drift:``

- ``replicas``: a sorted set of the replicas publishing counts, scored by the wall-clock time
  of their last publish (trimmed to the freshness horizon on every publish);
- ``counts:{replica}``: that replica's latest counts (JSON: the middleware's
  ``/-/drift/counts`` answer, its sizes keyed by the fleet scale each serves), expiring after
  the horizon, so a replica that stops publishing stops counting by itself;
- ``verdict``: a hash of the fleet's verdict as its leader last judged it, written only under
  the current term (:meth:`FleetState.publish_fenced
  <mlwarden.sidecar.fleet.state.FleetState.publish_fenced>`).

Bounded: one counts value per live replica (at most :data:`MAX_REPLICAS` read), each bounded
by the baseline's size; the verdict by the baseline's features.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlwarden.sidecar.fleet.state import FleetState

__all__ = ["MAX_REPLICAS", "DriftStore"]

#: Replicas whose counts are read at most (a fleet of model pods is far smaller).
MAX_REPLICAS = 256


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DriftStore:
    """Reads and writes one fleet's drift counts, beside the fleet's ``state``."""

    def __init__(self, state: FleetState) -> None:
        self._state = state
        self._client = state.client
        self.replicas_key = f"{state.prefix}:drift:replicas"
        self.verdict_key = f"{state.prefix}:drift:verdict"
        self._counts_prefix = f"{state.prefix}:drift:counts:"

    def counts_key(self, replica: str) -> str:
        return self._counts_prefix + replica

    async def live(self, now: float, horizon_s: float) -> list[str]:
        """The replicas that published within ``horizon_s`` of ``now`` (epoch seconds)."""
        names = await self._client.zrangebyscore(
            self.replicas_key, now - horizon_s, "+inf", start=0, num=MAX_REPLICAS
        )
        return sorted(_text(n) for n in names)

    async def put(
        self, replica: str, counts: Mapping[str, Any], now: float, horizon_s: float
    ) -> None:
        """This replica's latest counts, fresh for ``horizon_s``."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self.counts_key(replica), json.dumps(counts), px=max(1, int(horizon_s * 1000)))
        pipe.zadd(self.replicas_key, {replica: now})
        pipe.zremrangebyscore(self.replicas_key, "-inf", f"({now - horizon_s}")
        pipe.expire(self.replicas_key, max(60, int(horizon_s * 4)))
        await pipe.execute()

    async def gather(self, replicas: list[str]) -> dict[str, dict[str, Any]]:
        """The latest counts of ``replicas`` (those expired meanwhile left out)."""
        if not replicas:
            return {}
        values = await self._client.mget([self.counts_key(r) for r in replicas])
        out: dict[str, dict[str, Any]] = {}
        for replica, raw in zip(replicas, values, strict=True):
            if raw is None:
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict):
                out[replica] = data
        return out

    async def publish_verdict(self, token: int, replica: str, verdict: Mapping[str, Any]) -> int:
        """The fleet's verdict under ``token``; its version, or 0 when ``token`` is not the
        current term (a deposed leader's write, refused)."""
        return await self._state.publish_fenced(
            self.verdict_key, token, replica, {"verdict": verdict}
        )

    async def read_verdict(self) -> dict[str, Any] | None:
        """The verdict the fleet's leader last published, with its ``version`` (None: none)."""
        raw = await self._state.read_fenced(self.verdict_key) or {}
        verdict = raw.get("verdict")
        if not isinstance(verdict, dict):
            return None
        return {**verdict, "version": raw.get("version", 0), "judged_by": raw.get("replica", "")}
