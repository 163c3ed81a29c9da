"""What the sidecar's admin port says during the story: its status and its ledger, polled.

The events are kept by id (a poll returns recent ones again) and bounded; the demo's own steps
(a fault switched on, the pipeline's redeploy) are noted among them, so the live view and the
judges read one timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

__all__ = ["AdminWatch"]

_MAX_EVENTS = 2_000


class AdminWatch:
    """The admin port's ``/-/status`` and ``/-/events``, twice a second."""

    def __init__(self, admin_url: str, *, since: float) -> None:
        self._url = admin_url
        self._since = since
        self.status: dict[str, Any] | None = None
        self.events: dict[str, dict[str, Any]] = {}

    async def poll(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once(client)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        try:
            status = await client.get(f"{self._url}/-/status", timeout=2.0)
            self.status = status.json() if status.is_success else None
            events = await client.get(
                f"{self._url}/-/events",
                timeout=2.0,
                params={"since": self._since, "limit": 500},
            )
            for record in events.json().get("events", []) if events.is_success else []:
                self.events.setdefault(str(record.get("id")), record)
            while len(self.events) > _MAX_EVENTS:
                self.events.pop(next(iter(self.events)))
        except (httpx.HTTPError, ValueError):
            self.status = None

    def note(self, action: str, target: str, reason: str) -> None:
        """A step the demo itself took (a fault, the pipeline), shown among the ledger's."""
        n = sum(1 for k in self.events if k.startswith("demo-"))
        self.events[f"demo-{n:04d}"] = {
            "id": f"demo-{n:04d}",
            "at": time.time(),
            "action": action,
            "target": target,
            "outcome": "",
            "actor": "(demo)",
            "reason": reason,
        }

    def ordered_events(self) -> list[dict[str, Any]]:
        return sorted(self.events.values(), key=lambda r: (float(r.get("at", 0)), r.get("id")))
