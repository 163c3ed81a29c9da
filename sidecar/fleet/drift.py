"""Drift judged on the whole fleet's rows: every replica publishes counts, the leader sums them.

One server flags a shift once its window holds enough shifted rows; with N replicas behind a
load balancer each sees a third of the rows, so each alone needs N times as long. Drift
statistics need only counts per baseline cell, and counts add
(:mod:`mlwarden.middleware.drift_export`), so every ``drift_interval_s``:

- each replica asks its model server's middleware for the counts of its last
  ``ceil(S / N)`` rows for every drift scale ``S`` (``N``: the replicas publishing now) and
  publishes them in Redis (:class:`~mlwarden.sidecar.fleet.drift_store.DriftStore`);
- the leader sums the live replicas' counts per scale (those sharing its baseline's
  fingerprint; :class:`~mlwarden.sidecar.fleet.drift_judge.FleetDriftJudge`), and runs the
  drift tests on the sums with the calibration of that baseline:
  the same tests, thresholds and cadence (a scale tested once a fifth of its rows are new,
  fleet-wide) as one server seeing every row, so detection needs about its rows and the false-
  alarm budget per row is unchanged. It publishes the verdict under its fencing token and
  records ``fleet_drift_detected`` / ``fleet_drift_cleared`` when it changes (once per
  change: a new leader reads the last published verdict before judging);
- followers read the verdict.

Each replica's own verdict stays in its middleware's health report. Redis down: nothing is
published or judged (the fleet's signals read unknown) and each replica's own verdict goes on.
The leader judges on its own baseline: while its model server does not answer, no verdict.
Never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.drift import DriftThresholds
from mlwarden.sidecar.fleet.coordinator import Fleet
from mlwarden.sidecar.fleet.drift_judge import FleetDriftJudge
from mlwarden.sidecar.fleet.drift_store import DriftStore

__all__ = ["FleetDrift"]

log = logging.getLogger("mlwarden.sidecar.fleet")

#: A counts answer larger than this is refused (a baseline of hundreds of features is less).
MAX_COUNTS_BYTES = 8 * 1024 * 1024
#: A verdict older than this many drift intervals reads as unknown.
_STALE_INTERVALS = 3


class FleetDrift:
    """See the module docstring. ``url``: the base URL of the model server whose middleware's
    counts this replica publishes; ``record(**fields)`` writes this sidecar's ledger."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        url: str,
        target: str,
        path: str = "/-/drift",
        model: str = "",
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        record: Callable[..., None],
        verify: ssl.SSLContext | bool = True,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.target = target
        self._counts_url = url.rstrip("/") + path.rstrip("/") + "/counts"
        self._baseline_url = url.rstrip("/") + path.rstrip("/") + "/baseline"
        self._model = model
        self.interval_s = interval_s
        self._record = record
        self._clock = clock
        self._wall = wall_clock
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), trust_env=False, verify=verify
        )
        self.store = DriftStore(fleet.state)
        self._scales: tuple[int, ...] | None = None  # learnt from the first counts
        self._judge: FleetDriftJudge | None = None
        self._led_term: int | None = None
        #: The fleet's verdict as last published (or judged here), and when it was read.
        self.verdict: dict[str, Any] | None = None
        self._verdict_at: float | None = None
        self.published = 0
        self.fetch_errors = 0
        self.judgements = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"FleetDrift({self.target!r}, interval_s={self.interval_s})"

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.interval_s)

    async def step(self) -> None:
        """One pass: publish this replica's counts; judge as the leader, else read the
        verdict. Failures are counted and logged, never raised."""
        if not self.fleet.available:
            return
        try:
            async with asyncio.timeout(self.interval_s * 2 + 5):
                await self._publish_own()
                if self.fleet.is_leader:
                    await self._lead()
                else:
                    self._led_term = None
                    await self._follow()
        except Exception as exc:  # Redis or the model server: this pass only
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("fleet drift: pass failed (%s)", self.last_error)

    @property
    def horizon_s(self) -> float:
        """Counts and verdicts older than this are stale."""
        return _STALE_INTERVALS * self.interval_s + 2 * self.fleet.config.redis_timeout_s

    async def _get(self, url: str, params: dict[str, str]) -> Any:
        if self._model:
            params["model"] = self._model
        response = await self._client.get(url, params=params)
        if response.status_code != 200 or len(response.content) > MAX_COUNTS_BYTES:
            raise ValueError(f"{url}: HTTP {response.status_code}")
        return response.json()

    async def _publish_own(self) -> None:
        now = self._wall()
        live = await self.store.live(now, self.horizon_s)
        n = max(1, len(set(live) | {self.fleet.replica}))
        params: dict[str, str] = {}
        sizes: dict[int, int] = {}
        if self._scales is not None:
            sizes = {scale: math.ceil(scale / n) for scale in self._scales}
            params["rows"] = ",".join(str(s) for s in sorted(set(sizes.values())))
        try:
            answer = await self._get(self._counts_url, params)
            settings = DriftThresholds.from_mapping(answer["settings"])
            counts = answer["counts"]
            if self._scales != settings.scales:  # first pass, or the settings changed
                self._scales = settings.scales
                sizes = {scale: math.ceil(scale / n) for scale in settings.scales}
                if any(str(size) not in counts for size in sizes.values()):
                    return  # asked for other sizes: publish at the next pass
        except Exception as exc:
            self.fetch_errors += 1
            self.last_error = f"counts: {type(exc).__name__}: {exc}"[:300]
            return
        blob = {
            "baseline": answer["baseline"],
            "settings": answer["settings"],
            "added": int(answer["added"]),
            "rows": int(answer["rows"]),
            "counts": {str(scale): counts[str(size)] for scale, size in sizes.items()},
        }
        await self.store.put(self.fleet.replica, blob, now, self.horizon_s)
        self.published += 1

    # -- leading ------------------------------------------------------------------------------

    async def _lead(self) -> None:
        term = self.fleet.lease.token
        if self._led_term != term:
            # A new term: the fleet's verdict so far is where this leader starts from.
            self.verdict = await self.store.read_verdict()
            self._verdict_at = self._clock()
            self._led_term = term
        gathered = await self.store.gather(await self.store.live(self._wall(), self.horizon_s))
        own = gathered.get(self.fleet.replica)
        if own is None:
            return  # judged on this replica's baseline: without its counts, not this pass
        judge = await self._judge_for(own)
        if judge is None:
            return
        verdict = await asyncio.to_thread(judge.judge, gathered)
        self.judgements += 1
        previous = self.verdict
        version = await self.store.publish_verdict(term, self.fleet.replica, verdict)
        if version == 0:
            return  # deposed meanwhile: the next pass follows
        verdict["version"] = version
        verdict["judged_by"] = self.fleet.replica
        self.verdict, self._verdict_at = verdict, self._clock()
        self._record_change(previous, verdict)

    async def _judge_for(self, own: dict[str, Any]) -> FleetDriftJudge | None:
        """The judge of this replica's baseline (made again when its fingerprint changes)."""
        fingerprint = own.get("baseline")
        if self._judge is not None and self._judge.fingerprint == fingerprint:
            return self._judge
        try:
            settings = DriftThresholds.from_mapping(own["settings"])
            baseline = BaselineProfile.from_dict(await self._get(self._baseline_url, {}))
            self._judge = await asyncio.to_thread(
                FleetDriftJudge,
                baseline,
                settings,
                fingerprint=str(fingerprint),
                wall_clock=self._wall,
            )
        except Exception as exc:
            self.fetch_errors += 1
            self.last_error = f"baseline: {type(exc).__name__}: {exc}"[:300]
            return None
        return self._judge

    def _record_change(self, previous: dict[str, Any] | None, verdict: dict[str, Any]) -> None:
        was = bool(previous and previous.get("detected"))
        if verdict["detected"] == was:
            return
        where = f"the fleet's rows ({verdict['rows']} in the windows of "
        where += f"{len(verdict['replicas'])} replicas)"
        detected = verdict["detected"]
        self._record(
            action="fleet_drift_detected" if detected else "fleet_drift_cleared",
            target=self.target,
            reason=f"drift on {where}: {', '.join(verdict['drifted_features'][:20])}"
            if detected
            else f"no drift on {where}",
            severity="warning" if detected else "info",
            signals={"fleet_drift_ratio": verdict["ratio"], "rows": verdict["rows"]},
        )

    # -- following ----------------------------------------------------------------------------

    async def _follow(self) -> None:
        verdict = await self.store.read_verdict()
        if verdict is not None:
            self.verdict, self._verdict_at = verdict, self._clock()

    # -- reading ------------------------------------------------------------------------------

    def current(self) -> dict[str, Any] | None:
        """The fleet's verdict when it is fresh (None: none, or older than the horizon)."""
        if self.verdict is None or self._verdict_at is None or not self.fleet.available:
            return None
        if self._clock() - self._verdict_at > self.horizon_s:
            return None
        at = self.verdict.get("at")
        if isinstance(at, int | float) and self._wall() - at > self.horizon_s:
            return None  # the leader stopped judging
        return self.verdict

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready, for the admin ``/-/status``."""
        return {
            "target": self.target,
            "interval_s": self.interval_s,
            "published": self.published,
            "judgements": self.judgements,
            "fetch_errors": self.fetch_errors,
            "last_error": self.last_error,
            "verdict": self.current(),
        }

    async def aclose(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                await self._client.aclose()
