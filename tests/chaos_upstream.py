"""A model server for the chaos tests, run as its own uvicorn process so it can be killed by PID.

Run it as a script (it imports only the standard library and uvicorn, so it starts fast)::

    python tests/chaos_upstream.py --port 8001 --name primary --fail-fraction 0.3 --seed 7

Every path outside ``/-/`` is a "prediction" and answers 200 JSON
``{"upstream": name, "id": id, "attempt": k}``, unless one of these says otherwise:

- ``--fail-fraction F --seed S``: attempt ``k`` of request ``id`` (the ``id`` query parameter)
  answers 503 when :func:`should_fail` says so. The verdict depends on ``(seed, id, k)`` only,
  not on arrival order, so a test computes the exact expected outcome even under concurrency.
- ``--mode 503``: every prediction answers 503; ``--mode hang``: it accepts the request and
  never answers (sleeps :data:`HANG_S`, longer than any deadline in the tests).
- ``--retry-after S``: the 503s carry ``Retry-After: S``.
- query overrides per request: ``fail_first=N`` (the first N attempts of this ``id`` answer
  503), ``retry_after=S`` and ``mode=hang|503|ok``.

Control and observation (not counted as predictions):

- ``GET /-/health``: ``--health report`` (default) answers the middleware's report shape
  ``{"status": "ok", "reasons": [], ...}``; ``failing`` answers that shape with ``"failing"``
  and 503; ``plain`` answers ``ok`` as text.
- ``GET /-/chaos/stats``: ``{"name", "requests", "statuses": {"200": n, "503": m}, "hanging"}``.
- ``GET /-/chaos/attempts?id=X``: the arrival times of each attempt of ``X`` on
  :func:`time.monotonic`, which on Linux is one system-wide clock, comparable with the test's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import parse_qs

import uvicorn

#: How long a hanging request sleeps: longer than any deadline in the tests, and bounded.
HANG_S = 60.0


def should_fail(seed: int, fraction: float, request_id: str, attempt: int) -> bool:
    """Whether attempt ``attempt`` (1-based) of ``request_id`` answers 503; seeded, order-free."""
    if fraction <= 0:
        return False
    # A str seed goes through SHA-512: the same in every process, whatever PYTHONHASHSEED is.
    return random.Random(f"{seed}:{request_id}:{attempt}").random() < fraction


class ChaosUpstream:
    """The raw ASGI app; its counters are read through ``/-/chaos/stats``."""

    def __init__(
        self,
        *,
        name: str,
        fail_fraction: float = 0.0,
        seed: int = 0,
        mode: str = "ok",
        retry_after: str | None = None,
        health: str = "report",
    ) -> None:
        self.name = name
        self.fail_fraction = fail_fraction
        self.seed = seed
        self.mode = mode
        self.retry_after = retry_after
        self.health = health
        self.requests = 0
        self.hanging = 0
        self.statuses: Counter[int] = Counter()
        self.attempts: defaultdict[str, list[float]] = defaultdict(list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        arrived = time.monotonic()
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        path = scope["path"]
        if path == "/-/health":
            await self._health(send)
        elif path == "/-/chaos/stats":
            await _send(
                send,
                200,
                {
                    "name": self.name,
                    "requests": self.requests,
                    "hanging": self.hanging,
                    "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                },
            )
        elif path == "/-/chaos/attempts":
            rid = query.get("id", "")
            await _send(send, 200, {"id": rid, "at": self.attempts.get(rid, [])})
        else:
            await self._predict(query, arrived, receive, send)

    async def _health(self, send: Any) -> None:
        if self.health == "plain":
            await _send(send, 200, b"ok")
            return
        failing = self.health == "failing"
        await _send(
            send,
            503 if failing else 200,
            {
                "status": "failing" if failing else "ok",
                "reasons": ["chaos: told to fail"] if failing else [],
                "model": {"name": "chaos", "version": self.name},
                "drift": {"evaluated": False, "detected": False, "drifted_features": []},
            },
        )

    async def _predict(
        self, query: dict[str, str], arrived: float, receive: Any, send: Any
    ) -> None:
        while (await receive()).get("more_body", False):
            pass  # the body is not used; read it so the connection stays reusable
        self.requests += 1
        rid = query.get("id", str(self.requests))
        self.attempts[rid].append(arrived)
        attempt = len(self.attempts[rid])
        mode = query.get("mode", self.mode)
        if mode == "hang":
            self.hanging += 1
            try:
                await asyncio.sleep(HANG_S)
            finally:
                self.hanging -= 1
            return
        fail = (
            mode == "503"
            or attempt <= int(query.get("fail_first", "0"))
            or should_fail(self.seed, self.fail_fraction, rid, attempt)
        )
        if fail:
            retry_after = query.get("retry_after", self.retry_after)
            headers = [(b"retry-after", retry_after.encode())] if retry_after else []
            self.statuses[503] += 1
            await _send(send, 503, {"error": "chaos: overloaded", "upstream": self.name}, headers)
            return
        self.statuses[200] += 1
        await _send(send, 200, {"upstream": self.name, "id": rid, "attempt": attempt})


async def _send(
    send: Any,
    status: int,
    body: dict[str, Any] | bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if isinstance(body, bytes):
        data, ctype = body, b"text/plain"
    else:
        data, ctype = json.dumps(body).encode(), b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--fail-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["ok", "503", "hang"], default="ok")
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--health", choices=["report", "plain", "failing"], default="report")
    args = parser.parse_args()
    app = ChaosUpstream(
        name=args.name,
        fail_fraction=args.fail_fraction,
        seed=args.seed,
        mode=args.mode,
        retry_after=args.retry_after,
        health=args.health,
    )
    # A long keep-alive: an idle connection closed under the proxy's feet would cost an attempt
    # and make exact counts depend on timing.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=60,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
