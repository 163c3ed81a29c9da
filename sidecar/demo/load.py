"""The demo's clients: requests through the sidecar at a fixed rate, each answer recorded.

The answers (when, which version answered, failed or not) are what the judges decide on;
they are bounded, as are the requests in flight (a tick that finds 64 is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from mlwarden.sidecar.demo.judges import Answer
from mlwarden.sidecar.demo.view import PhaseResult

__all__ = ["ClientLoad"]

_MAX_ANSWERS = 200_000  # about 20 minutes at 150/s
_MAX_IN_FLIGHT = 64


class ClientLoad:
    """Posts 1-3 rows of ``pool`` to ``url`` ``rate_per_s`` times a second."""

    def __init__(
        self,
        url: str,
        *,
        rate_per_s: float,
        rng: random.Random,
        pool: list[dict[str, Any]],
        result: Callable[[], PhaseResult | None],
    ) -> None:
        self.url = url
        self.rate_per_s = rate_per_s
        self.rng = rng
        self.pool = pool  # the rows sent; the story switches it to drifted customers
        self._result = result  # the running phase's result, which counts its requests
        self.answers: deque[Answer] = deque(maxlen=_MAX_ANSWERS)
        self.sent = 0
        self.failed = 0
        self.in_flight = 0

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Requests at a fixed rate until ``stop``; a machine that fell behind does not burst."""
        interval = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            elif delay < -1.0:
                next_at = time.monotonic()
            if self.in_flight >= _MAX_IN_FLIGHT:
                continue
            task = asyncio.get_running_loop().create_task(self._one(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    async def _one(self, client: httpx.AsyncClient) -> None:
        size = self.rng.randint(1, 3)
        start = self.rng.randrange(len(self.pool) - size)
        rows = self.pool[start : start + size]
        result = self._result()
        self.in_flight += 1
        self.sent += 1
        if result is not None:
            result.requests += 1
        try:
            response = await client.post(self.url, json={"instances": rows}, timeout=10.0)
            failed = not response.is_success
            upstream = response.headers.get("x-mlwarden-upstream", "")
            detail = f"HTTP {response.status_code} {response.text[:160]}" if failed else ""
        except httpx.HTTPError as exc:
            failed, upstream, detail = True, "", f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.in_flight -= 1
        self.answers.append(Answer(time.time(), upstream, failed, detail))
        if failed:
            self.failed += 1
            if result is not None:
                result.failed += 1
