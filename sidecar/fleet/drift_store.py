"""The fleet's drift counts in Redis: each replica's latest counts, and the leader's verdict.

Keys under ``mlwarden:{fleet}:drift:``

- ``replicas``: a sorted set of the replicas publishing counts, scored by the wall-clock time
  of their last publish (trimmed to the freshness horizon on every publish);
- ``counts:{replica}``: that replica's latest counts (JSON: the middleware's
  ``/-/drift/counts`` answer, its sizes keyed by the fleet scale each serves), expiring after
  the horizon, so a replica that stops publishing stops counting by itself;
- ``verdict``: a hash of the fleet's verdict as its leader last judged it, written only under
  the current term (the fencing script of :mod:`~mlwarden.sidecar.fleet.state`).

Bounded: one counts value per live replica (at most :data:`MAX_REPLICAS` read), each bounded
by the baseline's size; the verdict by the baseline's features.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_REPLICAS", "DriftStore"]

#: Replicas whose counts are read at most (a fleet of model pods is far smaller).
MAX_REPLICAS = 256


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DriftStore:
    """Reads and writes one fleet's drift counts (``client``: a ``redis.asyncio`` client;
    ``publish``: the fenced-write script of the fleet's state)."""

    def __init__(self, client: Any, *, fleet: str, publish: Any) -> None:
        self._client = client
        prefix = f"mlwarden:{fleet}"
        self.term_key = f"{prefix}:term"
        self.replicas_key = f"{prefix}:drift:replicas"
        self.verdict_key = f"{prefix}:drift:verdict"
        self._counts_prefix = f"{prefix}:drift:counts:"
        self._publish = publish

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
        return int(
            await self._publish(
                keys=[self.term_key, self.verdict_key],
                args=[str(token), replica, "verdict", json.dumps(verdict)],
            )
        )

    async def read_verdict(self) -> dict[str, Any] | None:
        """The verdict the fleet's leader last published, with its ``version`` (None: none)."""
        raw = await self._client.hgetall(self.verdict_key)
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            verdict = json.loads(fields.get("verdict", "null"))
        except ValueError:
            return None
        if not isinstance(verdict, dict):
            return None
        verdict["version"] = int(fields.get("version", 0))
        verdict["judged_by"] = fields.get("replica", "")
        return verdict
