"""The fleet's shared state in Redis: the canary's decisions (fenced) and the fleet's ledger.

- ``mlwarden:{fleet}:canary:{candidate}``: a hash of the canary as its leader decided it
  (``state``, ``weight``, ``step``, ``version``, ``token``, ``replica``). :meth:`FleetState.
  publish` writes it only while the writer's fencing token is the current term (one script,
  atomic): a deposed leader's write is refused and the caller told. ``version`` grows by one
  per accepted write; followers apply a version once.
- ``mlwarden:{fleet}:route``: the route a fleet policy forced on the leader (``route``, null
  when restored; ``policy``, ``away``), fenced and versioned the same way: every replica's
  fleet loop forces it once per new version (:mod:`~mlwarden.sidecar.fleet.routes`).
- ``mlwarden:{fleet}:ledger``: a stream every replica appends its ledger records to (beside
  its own file), capped at about ``max_records`` entries (``XADD MAXLEN ~``), so that
  ``GET /-/events?scope=fleet`` and an escalation can count the fleet's records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["FleetState"]

_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[2], 'token', ARGV[1], 'replica', ARGV[2], unpack(ARGV, 3))
return version
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FleetState:
    """Reads and writes one fleet's shared state (``client``: a ``redis.asyncio`` client)."""

    def __init__(self, client: Any, *, fleet: str, max_records: int = 10_000) -> None:
        #: The Redis client (also the fleet's other stores': drift counts).
        self.client = client
        self.prefix = f"mlwarden:{fleet}"
        self.term_key = f"{self.prefix}:term"
        self.ledger_key = f"{self.prefix}:ledger"
        self.max_records = max_records
        self._publish = client.register_script(_PUBLISH)

    def canary_key(self, candidate: str) -> str:
        return f"{self.prefix}:canary:{candidate}"

    @property
    def route_key(self) -> str:
        return f"{self.prefix}:route"

    async def publish_canary(
        self, candidate: str, token: int, replica: str, fields: Mapping[str, Any]
    ) -> int:
        """Write the canary's decided state under ``token``; its new version, or 0 when the
        token is not the current term (refused)."""
        return await self.publish_fenced(self.canary_key(candidate), token, replica, fields)

    async def read_canary(self, candidate: str) -> dict[str, Any] | None:
        """The canary as the fleet's leader last published it (None: never)."""
        return await self.read_fenced(self.canary_key(candidate))

    async def publish_route(self, token: int, replica: str, fields: Mapping[str, Any]) -> int:
        """Write the route a fleet policy forced under ``token``; its new version, or 0 when
        the token is not the current term (refused)."""
        return await self.publish_fenced(self.route_key, token, replica, fields)

    async def read_route(self) -> dict[str, Any] | None:
        """The route as the fleet's leader last published it (None: never)."""
        return await self.read_fenced(self.route_key)

    async def publish_fenced(
        self, key: str, token: int, replica: str, fields: Mapping[str, Any]
    ) -> int:
        """Set the hash ``key``'s ``fields`` (JSON) under ``token``: its new version, or 0
        when the token is not the current term (refused). Every leader-decided state."""
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, json.dumps(value)]
        return int(
            await self._publish(keys=[self.term_key, key], args=[str(token), replica, *flat])
        )

    async def read_fenced(self, key: str) -> dict[str, Any] | None:
        """A hash :meth:`publish_fenced` wrote, decoded (``version``, ``token``, ``replica``
        and the fields); None when never written."""
        raw = await self.client.hgetall(key)
        if not raw:
            return None
        out: dict[str, Any] = {}
        for key, value in raw.items():
            name, text = _text(key), _text(value)
            if name in ("version", "token"):
                out[name] = int(text)
            elif name == "replica":
                out[name] = text
            else:
                out[name] = json.loads(text)
        return out

    def proposals_key(self, candidate: str) -> str:
        return f"{self.prefix}:canary:{candidate}:proposals"

    async def propose_rollback(self, candidate: str, replica: str, reason: str) -> None:
        """A follower's own rollback (taken while it decided alone) put to the leader."""
        key = self.proposals_key(candidate)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, replica, reason[:500])
        pipe.expire(key, 3600)
        await pipe.execute()

    async def take_proposals(self, candidate: str) -> dict[str, str]:
        """The rollbacks proposed since the last call, by replica (removed as read)."""
        key = self.proposals_key(candidate)
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.delete(key)
        raw, _ = await pipe.execute()
        return {_text(k): _text(v) for k, v in (raw or {}).items()}

    async def append_records(self, replica: str, lines: list[str]) -> None:
        """Append ledger records (JSON lines) to the fleet's stream, capped."""
        pipe = self.client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(
                self.ledger_key,
                {"replica": replica, "record": line},
                maxlen=self.max_records,
                approximate=True,
            )
        await pipe.execute()

    async def records(self, limit: int = 100) -> list[dict[str, Any]]:
        """The fleet's most recent ledger records, newest first, each with its replica."""
        entries = await self.client.xrevrange(self.ledger_key, count=limit)
        out = []
        for _id, fields in entries:
            decoded = {_text(k): _text(v) for k, v in fields.items()}
            record = json.loads(decoded.get("record", "{}"))
            record["replica"] = decoded.get("replica", "")
            out.append(record)
        return out
