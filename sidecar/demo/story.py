"""The demo's story: two model versions, the sidecar, and five phases of traffic and faults.

Set-up (all on 127.0.0.1, ports chosen by the OS, a temporary work directory):

- model ``v1`` (stable, the primary) and ``v2`` (the candidate), each a child process that
  trains a small logistic regression on synthetic customers at start and serves it with the
  middleware (:mod:`mlwarden.sidecar.demo.model`);
- the sidecar (``mlwarden sidecar``, a child process) with ``v2`` on a canary split and a
  shadow copy, ``v2`` as ``v1``'s fallback, the default policy tiers written out with their
  timings divided by ``TIME_SCALE`` (same conditions and actions; large drift or errors
  route to the stable version and call the retraining webhook), and one more policy: a
  primary out of rotation escalates (:mod:`~mlwarden.sidecar.demo.config`);
- in this process: the clients (:mod:`~mlwarden.sidecar.demo.load`), the "retraining
  pipeline" and the escalation channel (one small HTTP receiver for both webhooks), the watch
  on the sidecar's admin port (:mod:`~mlwarden.sidecar.demo.admin_watch`), the live view, and
  the judges (:mod:`~mlwarden.sidecar.demo.judges`).

Phases — each has a fault, what detects it, what heals it, and a check that it healed:

1. **normal**: traffic like the training data; the canary analyses pass and step up.
2. **candidate errors**: ``v2`` answers 500 to half its predictions; the canary analysis (or
   the candidate's breaker) rolls the canary back while retries and the stable version keep
   clients served. Once it is rolled back the bug is "fixed" (the fault switched off), so
   that ``v2`` can serve as the fallback later.
3. **input drift**: ``monthly_charges`` moves up 1.5 standard deviations; ``v1``'s health
   report shows drift; ``drift-large`` moves traffic to ``v2`` and calls the retraining
   webhook; the pipeline trains ``v1`` on inputs like the new ones and redeploys it (the new
   process trains first, then takes the port over); once ``v1``'s drift has been gone for
   ``restore_after_s`` the policy sends traffic back. Healed when clients are served by the
   retrained ``v1`` again.
4. **primary outage**: ``v1`` is SIGKILLed; retries and the breaker move traffic to ``v2``,
   health checks take ``v1`` out of rotation, and the policy escalates.
5. **recovery**: ``v1`` is started again; health checks bring it back into rotation and close
   its breaker.

A phase runs its planned time, then up to ``grace_s`` more while it has not healed. The run
exits 0 when every phase healed and 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import httpx
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwarden.sidecar.demo.admin_watch import AdminWatch
from mlwarden.sidecar.demo.config import (
    FULL,
    QUICK,
    Timing,
    sidecar_config,
)
from mlwarden.sidecar.demo.judges import Answer, PhaseJudges
from mlwarden.sidecar.demo.load import ClientLoad
from mlwarden.sidecar.demo.model import FAULT_PATH, MODEL_PATH, customers
from mlwarden.sidecar.demo.processes import (
    Child,
    free_port,
    python_module,
    start_prometheus,
    wait_until_ready,
)
from mlwarden.sidecar.demo.view import LiveView, PhaseResult, Snapshot, summary_table

__all__ = ["FULL", "QUICK", "Timing", "run_demo"]

DRIFT_SHIFT = {"monthly_charges": 1.5}


@dataclass(slots=True)
class _Phase:
    name: str
    fault: str
    story: str
    duration_s: float
    begin: Callable[[], Awaitable[None]]
    judge: Callable[[PhaseResult, float], None]  # fills the result; (result, t0)
    on_healed: Callable[[], Awaitable[None]] | None = None  # once, when first judged healed
    result: PhaseResult = field(init=False)
    started: float = 0.0  # wall time

    def __post_init__(self) -> None:
        self.result = PhaseResult(self.name, self.fault)


class Demo:
    """One run of the story; :meth:`run` returns the exit code."""

    def __init__(
        self,
        *,
        timing: Timing,
        seed: int,
        prometheus: bool,
        out: TextIO,
        live: bool | None,
        workdir: Path,
    ) -> None:
        self.timing = timing
        self.seed = seed
        self.want_prometheus = prometheus
        self.out = out
        self.workdir = workdir
        self.ports = {name: free_port() for name in ("v1", "v2", "proxy", "admin", "hooks")}
        self.token = secrets.token_hex(16)
        self.started_at = time.time()
        self.view = LiveView(out, live=live, started_at=self.started_at)
        self.interactive = sys.stdin is not None and sys.stdin.isatty()
        self.children: dict[str, Child] = {}  # by role; a redeploy replaces "v1"
        self.spawned: list[Child] = []  # every child ever started, stopped at the end
        self._pipeline: asyncio.Task[None] | None = None
        self.retrain_calls: list[float] = []
        self.escalations: list[float] = []
        self.redeployed_at: float | None = None
        self.drift_cleared_at: float | None = None
        self.redeploy_error: str | None = None
        self.prometheus_url: str | None = None
        self.pools = {
            "normal": customers(2_000, seed + 100),
            "drifted": customers(2_000, seed + 101, shift=DRIFT_SHIFT),
        }
        self.load = ClientLoad(
            self._url("proxy", MODEL_PATH),
            rate_per_s=timing.rate_per_s,
            rng=random.Random(seed),
            pool=self.pools["normal"],
            result=lambda: self.phase.result if self.phase is not None else None,
        )
        self.phase: _Phase | None = None
        self.phase_index = 0
        self._v1_argv = self._model_argv("v1", seed)
        self.watch = AdminWatch(self._url("admin"), since=self.started_at - 1)
        self.judges = PhaseJudges(self)

    # -- set-up ---------------------------------------------------------------------------------

    def _model_argv(self, version: str, seed: int, *extra: str) -> list[str]:
        return python_module(
            "mlwarden.sidecar.demo.model",
            "--version",
            version,
            "--port",
            str(self.ports[version]),
            "--seed",
            str(seed),
            *extra,
        )

    def _url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def sidecar_config(self) -> dict[str, Any]:
        return sidecar_config(
            ports=self.ports, token=self.token, timing=self.timing, workdir=self.workdir
        )

    def _hooks_app(self) -> Starlette:
        async def retrain(request: Request) -> JSONResponse:
            self.retrain_calls.append(time.time())
            if len(self.retrain_calls) == 1:
                self._pipeline = asyncio.get_running_loop().create_task(self._redeploy_v1())
            return JSONResponse({"accepted": True}, status_code=202)

        async def escalate(request: Request) -> JSONResponse:
            self.escalations.append(time.time())
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/retrain", retrain, methods=["POST"]),
                Route("/escalate", escalate, methods=["POST"]),
            ]
        )

    async def _start_children(self, client: httpx.AsyncClient) -> None:
        logs = self.workdir
        self.children["v1"] = Child(
            "v1", self._v1_argv, log_dir=logs, ready_url=self._url("v1", "/-/health")
        )
        self.children["v2"] = Child(
            "v2",
            self._model_argv("v2", self.seed + 1, "--rows", "8000"),
            log_dir=logs,
            ready_url=self._url("v2", "/-/health"),
        )
        for name in ("v1", "v2"):
            self.spawned.append(self.children[name])
            self.children[name].start()
        for name in ("v1", "v2"):
            await wait_until_ready(self.children[name], client, timeout_s=60)
        config_path = self.workdir / "sidecar.yaml"
        config_path.write_text(yaml.safe_dump(self.sidecar_config(), sort_keys=False))
        sidecar = Child(
            "sidecar",
            python_module("mlwarden.sidecar.cli", "sidecar", "--config", str(config_path)),
            log_dir=logs,
            ready_url=self._url("admin", "/-/ready"),
        )
        self.children["sidecar"] = sidecar
        self.spawned.append(sidecar)
        sidecar.start()
        await wait_until_ready(sidecar, client, timeout_s=60)
        if self.want_prometheus:
            await self._start_prometheus(client)

    async def _start_prometheus(self, client: httpx.AsyncClient) -> None:
        targets = {
            "mlwarden-sidecar": f"127.0.0.1:{self.ports['admin']}",
            "model-v1": f"127.0.0.1:{self.ports['v1']}",
            "model-v2": f"127.0.0.1:{self.ports['v2']}",
        }
        started = await start_prometheus(targets, self.workdir, client)
        if started is None:
            self._say(
                "--prometheus: no `prometheus` on PATH (Debian: apt install prometheus); "
                "going on without it"
            )
            return
        child, self.prometheus_url = started
        self.children["prometheus"] = child
        self.spawned.append(child)

    # -- what happens while it runs ---------------------------------------------------------------

    def ordered_events(self) -> list[dict[str, Any]]:
        return self.watch.ordered_events()

    @property
    def status(self) -> dict[str, Any] | None:
        return self.watch.status

    @property
    def answers(self) -> deque[Answer]:
        return self.load.answers

    async def _draw(self, stop: asyncio.Event) -> None:
        every = 0.25 if self.view.live else 0.5
        while not stop.is_set():
            self._frame()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def _frame(self) -> None:
        phase = self.phase
        if phase is None:
            return
        now = time.time()
        recent: dict[str, int] = {}
        recent_failed = 0
        for answer in reversed(self.load.answers):
            if answer.at < now - 2.0:
                break
            if answer.failed:
                recent_failed += 1
            else:
                recent[answer.upstream or "?"] = recent.get(answer.upstream or "?", 0) + 1
        self.view.frame(
            Snapshot(
                phase_index=self.phase_index,
                phase_count=5,
                phase=phase.name,
                story=phase.story,
                elapsed_s=now - phase.started,
                duration_s=phase.duration_s,
                recent_by_upstream=recent,
                recent_failed=recent_failed,
                sent=self.load.sent,
                failed=self.load.failed,
                status=self.watch.status,
                events=self.ordered_events(),
                prometheus_url=self.prometheus_url,
            )
        )

    # -- the faults -------------------------------------------------------------------------------

    async def _set_fault(self, client: httpx.AsyncClient, rate: float) -> None:
        response = await client.post(self._url("v2", FAULT_PATH), json={"error_rate": rate})
        response.raise_for_status()

    async def _redeploy_v1(self) -> None:
        """The retraining pipeline: train v1 on inputs like today's, then swap the process."""
        old = self.children["v1"]
        marker = self.workdir / "v1-retrained.txt"
        argv = self._model_argv(
            "v1",
            self.seed + 2,
            "--shift",
            "monthly_charges=1.5",
            "--trained-file",
            str(marker),
            "--take-over-s",
            "20",
        )
        new = Child("v1-retrained", argv, log_dir=self.workdir, ready_url=old.ready_url)
        self.spawned.append(new)
        new.start()
        deadline = time.monotonic() + 60
        while not marker.exists():
            if not new.alive() or time.monotonic() > deadline:
                self.redeploy_error = f"the retrained v1 did not train: {new.log_tail(5)}"
                await asyncio.to_thread(new.stop)
                return
            await asyncio.sleep(0.05)
        accuracy = marker.read_text().strip()
        self.watch.note(
            "retrained",
            "v1",
            f"pipeline: v1 trained on inputs like today's "
            f"(holdout accuracy {accuracy}); swapping the process",
        )
        stopping = time.monotonic()
        # SIGTERM: uvicorn finishes what is in flight and frees the port (off the event loop:
        # the load and the view go on meanwhile).
        await asyncio.to_thread(old.stop, 5.0)
        self.watch.note(
            "swapped",
            "v1",
            f"old v1 process exited after {time.monotonic() - stopping:.2f} s; the new one binds",
        )
        self.children["v1"] = new
        self._v1_argv = [a for a in argv if a not in ("--take-over-s", "20")]
        async with httpx.AsyncClient() as client:
            try:
                await wait_until_ready(new, client, timeout_s=30)
            except RuntimeError as exc:
                self.redeploy_error = str(exc)
                return
        self.redeployed_at = time.time()
        self.watch.note("redeployed", "v1", "pipeline: the retrained v1 is serving")
        await self._watch_drift()

    async def _watch_drift(self) -> None:
        """When the redeployed v1's own report first shows its window free of drift."""
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient() as client:
            while self.drift_cleared_at is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    report = (await client.get(self._url("v1", "/-/health"), timeout=2.0)).json()
                    drift = report.get("drift", {})
                    if (
                        drift.get("evaluated")
                        and drift.get("enough_data")
                        and not drift.get("detected")
                    ):
                        self.drift_cleared_at = time.time()
                        self.watch.note(
                            "drift_cleared",
                            "v1",
                            f"v1's report: no drift over {drift.get('rows')} rows",
                        )
                        return
                await asyncio.sleep(0.25)

    # -- the run ----------------------------------------------------------------------------------

    def phases(self, client: httpx.AsyncClient) -> list[_Phase]:
        t = self.timing

        async def nothing() -> None:
            return None

        async def errors_on() -> None:
            await self._set_fault(client, 0.5)
            self.watch.note("fault", "v2", "v2 now answers 500 to half its predictions")

        async def errors_off() -> None:
            await self._set_fault(client, 0.0)
            self.watch.note(
                "fault_cleared",
                "v2",
                "v2's bug fixed after the rollback: the fault is off (v2 stays the fallback)",
            )

        async def drift_on() -> None:
            self.load.pool = self.pools["drifted"]
            self.watch.note("fault", "clients", "monthly_charges now 1.5 std higher")

        async def outage() -> None:
            await asyncio.to_thread(self.children["v1"].kill)
            self.watch.note("fault", "v1", "SIGKILL")

        async def restart() -> None:
            child = self.children["v1"]
            child.start(self._v1_argv)
            self.watch.note("restarted", "v1", "v1 started again")

        return [
            _Phase(
                "normal",
                "none",
                "traffic like the training data; v2 on the canary split and the shadow copy",
                t.normal_s,
                nothing,
                self.judges.normal,
            ),
            _Phase(
                "candidate errors",
                "v2: 500 on half its requests",
                "the canary should roll v2 back; retries keep clients served; the bug is "
                "fixed once it is rolled back",
                t.errors_s,
                errors_on,
                self.judges.errors,
                on_healed=errors_off,
            ),
            _Phase(
                "input drift",
                "monthly_charges +1.5 std",
                "drift-large should move traffic to v2 and ask for retraining; the "
                "retrained v1 takes over and traffic comes back to it",
                t.drift_s,
                drift_on,
                self.judges.drift,
            ),
            _Phase(
                "primary outage",
                "v1 SIGKILLed",
                "retries and the breaker should move clients to v2; the policy escalates",
                t.outage_s,
                outage,
                self.judges.outage,
            ),
            _Phase(
                "recovery",
                "v1 restarted",
                "health checks should bring v1 back and close its breaker",
                t.recovery_s,
                restart,
                self.judges.recovery,
            ),
        ]

    async def run(self) -> int:
        hooks = uvicorn.Server(
            uvicorn.Config(
                self._hooks_app(),
                host="127.0.0.1",
                port=self.ports["hooks"],
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        hooks_task = asyncio.get_running_loop().create_task(hooks.serve())
        limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
        try:
            async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
                self._say(
                    f"mlwarden demo: training two churn models and starting them, the "
                    f"sidecar and the load (work directory {self.workdir})"
                )
                try:
                    await self._start_children(client)
                except RuntimeError as exc:
                    self._say(f"mlwarden demo: could not start: {exc}")
                    return 1
                self._say(
                    f"sidecar on {self._url('proxy')} (admin {self._url('admin')}), "
                    f"v1 on {self._url('v1')}, v2 on {self._url('v2')}"
                )
                if self.prometheus_url:
                    self._say(
                        f"Prometheus on {self.prometheus_url} (scraping the sidecar and "
                        f"both models; on a terminal it stays up after the story "
                        f"until you press Enter)"
                    )
                results = await self._story(client)
                self.view.done()
                self._say("\n" + summary_table(results))
                healed = all(r.healed for r in results)
                self._say(
                    f"\n{self.load.sent} client requests through the sidecar, "
                    f"{self.load.failed} failed"
                )
                self._say(
                    "every phase healed"
                    if healed
                    else "some phase did NOT heal: see the table and the logs"
                )
                if self.prometheus_url and self.interactive:
                    await self._hold()
        finally:
            if self._pipeline is not None:
                self._pipeline.cancel()
                with contextlib.suppress(BaseException):
                    await self._pipeline
            for child in reversed(self.spawned):
                await asyncio.to_thread(child.stop)
            hooks.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hooks_task, 10)
        return 0 if healed else 1

    async def _hold(self, limit_s: float = 1800.0) -> None:
        """Keep everything up for a look at Prometheus, until Enter (at most ``limit_s``)."""
        self._say(
            f"\nPrometheus on {self.prometheus_url} and the sidecar, v1 and v2 stay up "
            f"(no more load); press Enter to stop them (or wait {limit_s / 60:.0f} min)"
        )
        with contextlib.suppress(TimeoutError, OSError, ValueError):
            await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), limit_s)

    async def _story(self, client: httpx.AsyncClient) -> list[PhaseResult]:
        stop = asyncio.Event()
        phases = self.phases(client)
        self.phase = phases[0]
        self.phase.started = time.time()
        loop = asyncio.get_running_loop()
        workers = [
            loop.create_task(self.load.run(client, stop)),
            loop.create_task(self.watch.poll(client, stop)),
            loop.create_task(self._draw(stop)),
        ]
        try:
            for index, phase in enumerate(phases):
                self.phase, self.phase_index = phase, index
                phase.started = time.time()
                await phase.begin()
                t0 = time.time()
                planned = t0 + phase.duration_s
                latest = planned + self.timing.grace_s
                healed_seen = False
                while True:
                    await asyncio.sleep(0.5)
                    now = time.time()
                    phase.result.healed = False  # judged afresh: a later failure counts
                    phase.judge(phase.result, t0)
                    if phase.result.healed and not healed_seen:
                        healed_seen = True
                        if phase.on_healed is not None:
                            await phase.on_healed()
                    if now >= latest or (now >= planned and phase.result.healed):
                        break
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
        self.judges.explain_failures([(p.started, p.result) for p in phases])
        return [p.result for p in phases]

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def run_demo(
    *,
    quick: bool = False,
    seed: int = 7,
    prometheus: bool = False,
    live: bool | None = None,
    rate_per_s: float | None = None,
    keep: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run the story; 0 when every phase healed. ``quick`` is the short mode CI runs.

    The work directory (logs, ledger, configs) is removed after a healed run unless ``keep``;
    after a failed one it is kept and named, for the logs.
    """
    timing = QUICK if quick else FULL
    if rate_per_s is not None:
        timing = replace(timing, rate_per_s=rate_per_s)
    stream = out or sys.stdout
    workdir = Path(tempfile.mkdtemp(prefix="mlwarden-demo-"))
    demo = Demo(
        timing=timing, seed=seed, prometheus=prometheus, out=stream, live=live, workdir=workdir
    )
    code = 130
    try:
        code = asyncio.run(demo.run())
    except KeyboardInterrupt:
        stream.write("\nmlwarden demo: interrupted; every process it started is stopped\n")
    if code == 0 and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        stream.write(f"logs, ledger and configs kept in {workdir}\n")
    return code
