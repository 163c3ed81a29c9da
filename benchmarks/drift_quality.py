"""Drift detection judged end to end: ``python3 -m benchmarks.drift_quality [--runs N]``.

A new user's set-up, through the public API only (so that it measures any drift engine alike):
training data of 20 numeric features ``f0``..``f19`` ~ N(0, 1) and one categorical ``c``
(a/b/c = 0.5/0.3/0.2), 20,000 rows, profiled with ``mlwarden baseline build``; a FastAPI
model server with ``InferenceMonitor`` at its defaults (only ``model_name`` and ``baseline``)
under uvicorn in its own process; a client (httpx) sending KServe v1 batches
(``{"instances": [...]}``) paced in real time and reading ``GET /-/health`` every 0.1 s.

Every run starts a fresh server, sends 5,000 undrifted rows at 1,000 rows/s (the warm-up),
then one scenario's rows at the scenario's rate until the health report first says drift
(``drift.detected``) or the scenario's row cap. Recorded: the rows sent since the shift began
when drift was first reported, the features the report named, and how many health reads
reported drift while nothing had drifted (the warm-ups, ``none`` and ``fresh``). Scenarios
(one feature of 21 changed, the others as in training):

- ``shift-0.5sd``, ``shift-0.25sd``: the mean of ``f3`` up 0.5 or 0.25 standard deviations;
- ``scale-1.5``: the standard deviation of ``f3`` times 1.5, the same mean;
- ``categorical``: the shares of ``c`` from 0.5/0.3/0.2 to 0.35/0.3/0.35;
- ``rejected``: requests the app answers 422 (``?reject=1``) carrying ``f3`` + 3 sd,
  interleaved with undrifted requests answered 200, both at the scenario's rate: rows the
  model refused are not what it scored, and must not be reported as drift;
- ``none``: undrifted rows (must not be reported as drift).

Beside each scenario it prints the rows a one-sample test on the shifted rows alone would need
(alpha 0.05/21 two-sided, power 0.9): the floor that no detector reaches on live traffic.
A benchmark, not a test: a missed goal is printed as ``MISS``, nothing fails a build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from benchmarks.loopback import free_port, serve

_REPO_ROOT = Path(__file__).resolve().parent.parent
_RESULTS = Path(__file__).resolve().parent / "results"

FEATURES = tuple(f"f{i}" for i in range(20))
SHIFTED = "f3"
CATEGORICAL = "c"
CATEGORIES = ("a", "b", "c")
SHARES = (0.5, 0.3, 0.2)
TRAIN_ROWS = 20_000
WARMUP_ROWS = 5_000
WARMUP_RATE = 1_000  # rows/s, whatever the scenario's rate: keeps runs short
POLL_S = 0.1  # health reads at most this often (and at most once a request)
FAST_RATE = 500  # rows/s from which the caps of the 1,000 rows/s setting apply
MAX_IN_FLIGHT = 64
STARTUP_S = 2.0  # what starting one server costs, for the up-front estimate
ALPHA = 0.05 / 21  # one test per feature, Bonferroni
POWER = 0.9


# -- the scenarios and what theory says they need ---------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One change of the traffic after the warm-up; ``goal_rows`` None: must not be flagged."""

    name: str
    title: str
    caps: tuple[int, int]  # row cap at >= FAST_RATE rows/s, and below
    goal_rows: int | None
    shifted: str | None  # the feature that changed (its name is the right one to report)
    mean_shift: float = 0.0
    scale: float = 1.0
    shares: tuple[float, ...] = SHARES
    rejected: bool = False  # the changed rows go in 422-answered requests
    warmup: bool = True  # False: a fresh server, the scenario's rows from the first one
    slow_rate: int | None = None  # below FAST_RATE, this rate instead of the setting's

    def cap(self, rate: int) -> int:
        return self.caps[0] if rate >= FAST_RATE else self.caps[1]

    def rate_at(self, rate: int) -> int:
        return self.slow_rate if self.slow_rate is not None and rate < FAST_RATE else rate

    @property
    def undrifted(self) -> bool:
        """Every health read of its phase is a read on undrifted traffic."""
        return self.shifted is None


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("shift-0.5sd", "f3 mean +0.5 sd", (8_000, 1_500), 500, SHIFTED, mean_shift=0.5),
        Scenario(
            "shift-0.25sd", "f3 mean +0.25 sd", (12_000, 2_500), 2_000, SHIFTED, mean_shift=0.25
        ),
        Scenario("scale-1.5", "f3 sd x1.5", (8_000, 1_500), 1_000, SHIFTED, scale=1.5),
        Scenario(
            "categorical",
            "c 0.5/0.3/0.2 -> 0.35/0.3/0.35",
            (8_000, 1_500),
            1_000,
            CATEGORICAL,
            shares=(0.35, 0.3, 0.35),
        ),
        Scenario(
            "rejected",
            "422-answered rows, f3 +3 sd",
            (3_000, 1_500),
            None,
            SHIFTED,
            mean_shift=3.0,
            rejected=True,
        ),
        Scenario("none", "no change", (3_000, 1_000), None, None),
        Scenario(
            "fresh",
            "fresh server, no warm-up, no change (20 rows/s at the slow setting)",
            (3_000, 600),
            None,
            None,
            warmup=False,
            slow_rate=20,
        ),
    )
}

_Z_ALPHA = NormalDist().inv_cdf(1 - ALPHA / 2)
_Z_POWER = NormalDist().inv_cdf(POWER)


def n_mean_shift(delta: float) -> int:
    """A z-test of the mean against the baseline's (its sd known): ((z_a + z_b) / delta)^2."""
    return math.ceil(((_Z_ALPHA + _Z_POWER) / delta) ** 2)


def n_scale_approx(ratio: float) -> int:
    """The chi-square variance test, through ln(s^2) ~ N(ln sigma^2, 2 / (n - 1)):
    n = 1 + 2 ((z_a + z_b) / ln(ratio^2))^2."""
    return math.ceil(1 + 2 * ((_Z_ALPHA + _Z_POWER) / math.log(ratio**2)) ** 2)


def n_scale_exact(ratio: float) -> int | None:
    """The smallest n at which the two-sided chi-square variance test has the power (scipy)."""
    try:
        from scipy import stats
    except ImportError:
        return None
    k = ratio**2
    for n in range(3, 100_000):
        df = n - 1
        high, low = stats.chi2.ppf(1 - ALPHA / 2, df), stats.chi2.ppf(ALPHA / 2, df)
        if stats.chi2.sf(high / k, df) + stats.chi2.cdf(low / k, df) >= POWER:
            return n
    return None


def _ncx2_df2_sf(x: float, lam: float) -> float:
    """P(X > x) for a noncentral chi-square with 2 degrees of freedom, exactly: the Poisson
    mixture sum_j Pois(j; lam/2) P(chi2(2 + 2j) > x), with P(chi2(2m) > x) =
    e^(-x/2) sum_{i<m} (x/2)^i / i!."""
    half_x, half_l = x / 2, lam / 2
    weight = math.exp(-half_l)  # Pois(0)
    term = math.exp(-half_x)  # (x/2)^0 / 0! e^(-x/2)
    tail = term  # P(chi2(2) > x)
    total = weight * tail
    for j in range(1, int(half_l + 20 * math.sqrt(half_l + 1) + 50)):
        weight *= half_l / j
        term *= half_x / j
        tail += term
        total += weight * tail
    return total


def n_categorical(p: Sequence[float], q: Sequence[float]) -> int:
    """The chi-square goodness-of-fit test (dof = categories - 1 = 2): the noncentrality is
    lambda = n sum((q - p)^2 / p); n is where P(chi2(2, lambda) > c_alpha) reaches the power,
    with c_alpha = -2 ln(alpha) (the chi2(2) quantile in closed form)."""
    if len(p) != 3:
        raise ValueError("the closed form is for three categories")
    per_row = sum((qi - pi) ** 2 / pi for pi, qi in zip(p, q, strict=True))
    critical = -2 * math.log(ALPHA)
    low, high = 0.0, 1_000.0
    for _ in range(100):  # bisection on lambda
        mid = (low + high) / 2
        low, high = (mid, high) if _ncx2_df2_sf(critical, mid) < POWER else (low, mid)
    return math.ceil(high / per_row)


@functools.cache
def theory(s: Scenario) -> tuple[str, str]:
    """The theoretical rows (as printed) and how they were computed."""
    if s.goal_rows is None:
        return "-", ""
    if s.mean_shift:
        n = n_mean_shift(s.mean_shift)
        return f"{n}", f"z-test of the mean: n = ((z_a + z_b) / {s.mean_shift:g})^2 = {n}"
    if s.scale != 1.0:
        approx, exact = n_scale_approx(s.scale), n_scale_exact(s.scale)
        how = (
            f"chi-square variance test: n = 1 + 2 ((z_a + z_b) / ln({s.scale:g}^2))^2 = {approx}"
            " (ln s^2 ~ N(ln sigma^2, 2/(n-1)))"
        )
        if exact is None:
            return f"~{approx}", how + "; exact power needs scipy"
        return f"{exact}", how + f"; exact chi-square power (scipy): {exact}"
    n = n_categorical(SHARES, s.shares)
    per_row = sum((q - p) ** 2 / p for p, q in zip(SHARES, s.shares, strict=True))
    return f"{n}", (
        f"chi-square goodness of fit, dof 2: lambda = n * {per_row:.4f}, "
        f"P(chi2(2, lambda) > -2 ln(alpha) = {-2 * math.log(ALPHA):.2f}) = {POWER:g} at n = {n}"
    )


# -- data -------------------------------------------------------------------------------------


def rows(
    rng: np.random.Generator,
    n: int,
    *,
    mean_shift: float = 0.0,
    scale: float = 1.0,
    shares: Sequence[float] = SHARES,
) -> list[dict[str, object]]:
    """``n`` rows as JSON objects; ``f3`` scaled then shifted, ``c`` drawn with ``shares``."""
    x = rng.standard_normal((n, len(FEATURES)))
    i = FEATURES.index(SHIFTED)
    x[:, i] = x[:, i] * scale + mean_shift
    cats = rng.choice(len(CATEGORIES), size=n, p=list(shares))
    return [
        {**dict(zip(FEATURES, values, strict=True)), CATEGORICAL: CATEGORIES[cat]}
        for values, cat in zip(x.tolist(), cats.tolist(), strict=True)
    ]


def build_baseline(seed: int, workdir: Path) -> Path:
    """Training data as CSV, profiled as a user would: ``mlwarden baseline build``."""
    rng = np.random.default_rng([seed, 0])
    data = rows(rng, TRAIN_ROWS)
    csv = workdir / f"train-{seed}.csv"
    header = ",".join((*FEATURES, CATEGORICAL))
    lines = [",".join([*(f"{r[f]:.6f}" for f in FEATURES), str(r[CATEGORICAL])]) for r in data]
    csv.write_text(header + "\n" + "\n".join(lines) + "\n")
    out = workdir / f"baseline-{seed}.json"
    cli = Path(sys.executable).with_name("mlwarden")
    command = str(cli) if cli.exists() else shutil.which("mlwarden")
    if command is not None:
        subprocess.run(
            [command, "baseline", "build", str(csv), "--out", str(out), "--categorical", "c"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:  # no entry point on PATH (not installed with pip): the same through the API
        from mlwarden.middleware.baseline import build_baseline_file

        build_baseline_file(csv, out, categorical=[CATEGORICAL])
    return out


# -- the model server (run as its own process) ------------------------------------------------


class Batch(BaseModel):
    instances: list[dict[str, float | str]]


def model_app(baseline: str) -> Any:
    """A FastAPI model server with the monitor at its defaults; ``?reject=1`` answers 422."""
    from fastapi import FastAPI, HTTPException

    from mlwarden.middleware import InferenceMonitor

    app = FastAPI()
    app.add_middleware(InferenceMonitor, model_name="drift-bench", baseline=baseline)

    @app.post("/predict")
    async def predict(batch: Batch, reject: bool = False) -> dict[str, list[float]]:
        if reject:
            raise HTTPException(status_code=422, detail="rejected by the model's input checks")
        scores = []
        for row in batch.instances:
            z = sum(float(row.get(f, 0.0)) for f in FEATURES[:5]) / 5.0
            scores.append(1.0 / (1.0 + math.exp(-z)))
        return {"predictions": scores}

    return app


def _serve(port: int, baseline: str) -> None:
    serve(model_app(baseline), port)


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase (warm-up or scenario) saw; ``counted`` rows are those answered so far."""

    counted: int = 0
    reads: int = 0
    alarms: int = 0
    failed_reads: int = 0
    unexpected: int = 0  # requests answered with the wrong status, or not at all
    first_alarm: int | None = None  # rows counted when a read first reported drift
    named: tuple[str, ...] = ()
    lag_s: float = 0.0  # the most a request was sent behind its schedule


@dataclass
class Outcome:
    scenario: str
    rate: int
    run: int
    warmup: Phase = field(default_factory=Phase)
    phase: Phase = field(default_factory=Phase)
    capped_by_time: bool = False
    seconds: float = 0.0
    error: str = ""

    @property
    def flagged(self) -> bool:
        return self.phase.first_alarm is not None


Slot = list[tuple[bytes, int, bool]]  # (body, rows counted, rejected) sent at one instant


def _slots(
    stream: list[dict[str, object]], per_request: int, rejected: list[dict[str, object]] | None
) -> list[Slot]:
    """Request bodies per send instant; with ``rejected``, a rejected request and a normal one."""
    out: list[Slot] = []
    for i in range(0, len(stream), per_request):
        normal = orjson.dumps({"instances": stream[i : i + per_request]})
        if rejected is None:
            out.append([(normal, len(stream[i : i + per_request]), False)])
        else:
            chunk = rejected[i : i + per_request]
            out.append([(orjson.dumps({"instances": chunk}), len(chunk), True), (normal, 0, False)])
    return out


async def _drive(
    client: Any,
    port: int,
    slots: list[Slot],
    interval_s: float,
    max_s: float,
    phase: Phase,
    *,
    stop_on_alarm: bool,
) -> bool:
    """Send ``slots`` on schedule while reading the health report; True if the time cap hit."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    stop, done = asyncio.Event(), asyncio.Event()
    headers = {"content-type": "application/json"}

    async def one(body: bytes, counted: int, rejected: bool) -> None:
        url = f"{base}/predict?reject=1" if rejected else f"{base}/predict"
        try:
            r = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            phase.unexpected += 1
            return
        if r.status_code != (422 if rejected else 200):
            phase.unexpected += 1
        phase.counted += counted

    async def read_health() -> None:
        counted = phase.counted  # the rows the server had answered when the read was sent
        try:
            r = await client.get(f"{base}/-/health")  # 503 when failing: still a report
            drift = orjson.loads(r.content).get("drift") or {}
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
            phase.failed_reads += 1
            return
        phase.reads += 1
        if drift.get("detected") is True or drift.get("drift_detected") is True:
            phase.alarms += 1
            if phase.first_alarm is None:
                phase.first_alarm = counted
                phase.named = tuple(str(n) for n in drift.get("drifted_features") or ())
                if stop_on_alarm:
                    stop.set()

    async def poll() -> None:
        every = max(POLL_S, interval_s)
        next_at = loop.time()
        while not done.is_set():
            await read_health()
            next_at = max(next_at + every, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=next_at - loop.time())

    poller = asyncio.create_task(poll())
    tasks: set[asyncio.Task[None]] = set()
    started = loop.time()
    timed_out = False
    for i, slot in enumerate(slots):
        if stop.is_set():
            break
        if loop.time() - started > max_s:
            timed_out = True
            break
        delay = started + i * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            phase.lag_s = max(phase.lag_s, -delay)
        for body, counted, rejected in slot:
            task = asyncio.create_task(one(body, counted, rejected))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while len(tasks) > MAX_IN_FLIGHT:  # a stalled server: wait rather than pile up
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if tasks:
        await asyncio.wait(tasks, timeout=15.0)
    done.set()
    await poller
    if phase.first_alarm is None:
        await read_health()  # the last rows are in: one more look
    return timed_out


async def run_once(
    scenario: Scenario, rate: int, run: int, baseline: Path, workdir: Path, warmup: asyncio.Lock
) -> Outcome:
    """One fresh server: the warm-up (holding ``warmup``), then the scenario at ``rate``."""
    import httpx

    outcome = Outcome(scenario.name, rate, run)
    rng = np.random.default_rng([run, list(SCENARIOS).index(scenario.name) + 1, rate])
    cap = scenario.cap(rate)
    rate = scenario.rate_at(rate)
    per_request = max(1, rate // 100)
    warm_slots = _slots(rows(rng, WARMUP_ROWS), WARMUP_RATE // 100, None)
    changed = rows(rng, cap, mean_shift=scenario.mean_shift, scale=scenario.scale,
                   shares=scenario.shares)  # fmt: skip
    if scenario.rejected:
        slots = _slots(rows(rng, cap), per_request, changed)
    else:
        slots = _slots(changed, per_request, None)
    interval_s = per_request / rate
    port = free_port()
    log_path = workdir / f"server-{scenario.name}-{rate}-{run}.log"
    await warmup.acquire()  # one server start and warm-up at a time
    holding = True
    started = time.monotonic()
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.drift_quality", "serve", str(port),
                 str(baseline)],
                cwd=_REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
        try:
            limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=32)
            async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
                await _ready(client, port, proc)
                if scenario.warmup:
                    await _drive(
                        client,
                        port,
                        warm_slots,
                        (WARMUP_RATE // 100) / WARMUP_RATE,
                        WARMUP_ROWS / WARMUP_RATE * 1.5 + 10,
                        outcome.warmup,
                        stop_on_alarm=False,
                    )
                warmup.release()  # the next run may start its server and warm-up now
                holding = False
                outcome.capped_by_time = await _drive(
                    client,
                    port,
                    slots,
                    interval_s,
                    cap / rate * 1.5 + 10,
                    outcome.phase,
                    stop_on_alarm=not scenario.undrifted,  # undrifted: every read counts
                )
        except Exception as exc:  # a run that fails is reported, the others go on
            tail = log_path.read_text(errors="replace")[-500:]
            outcome.error = f"{type(exc).__name__}: {exc} {tail}".strip()
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
    finally:
        if holding:
            warmup.release()
    outcome.seconds = time.monotonic() - started
    return outcome


async def _ready(client: Any, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the monitor's own endpoint answers (its app has started), within a deadline."""
    import httpx

    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if (await client.get(f"http://127.0.0.1:{port}/-/health")).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the server on {port} did not answer within 30 s")


# -- all runs ---------------------------------------------------------------------------------


def _jobs(rate: int, jobs: int) -> int:
    """Runs at a low rate overlap (their warm-ups never do); fast ones run one at a time."""
    return 1 if rate >= FAST_RATE else max(1, jobs)


def estimate_s(rates: Sequence[int], scenarios: Sequence[Scenario], runs: int, jobs: int) -> float:
    """The longest the whole benchmark takes: every scenario to its row cap."""
    warm = STARTUP_S + WARMUP_ROWS / WARMUP_RATE + 0.5
    total = runs * 1.5  # a baseline per run
    for rate in rates:
        phases = [s.cap(rate) / s.rate_at(rate) for s in scenarios]
        serial = runs * (len(scenarios) * warm + sum(phases))
        parallel = _jobs(rate, jobs)
        if parallel == 1:
            total += serial
        else:
            total += max(runs * len(scenarios) * warm + min(phases), serial / parallel)
    return total


def _line(o: Outcome) -> str:
    if o.error:
        return f"run {o.run + 1:2d} {o.rate:5d} rows/s {o.scenario:12s} ERROR {o.error[:300]}"
    p, w = o.phase, o.warmup
    unexpected = p.unexpected + w.unexpected
    found = (
        f"flagged after {p.first_alarm:,} rows ({', '.join(p.named) or 'no feature named'})"
        if o.flagged
        else f"not flagged in {p.counted:,} rows"
    )
    if SCENARIOS[o.scenario].undrifted:
        found += f", {p.alarms} of {p.reads} reads"
    return (
        f"run {o.run + 1:2d} {o.rate:5d} rows/s {o.scenario:12s} {found} | warm-up: "
        f"{w.alarms} of {w.reads} reads flagged | lag {max(p.lag_s, w.lag_s) * 1000:.0f} ms"
        f"{' | TIME CAP' if o.capped_by_time else ''}"
        f"{f' | {unexpected} unexpected answers' if unexpected else ''}"
        f" | {o.seconds:.0f} s"
    )


async def run_all(
    rates: Sequence[int],
    scenarios: Sequence[Scenario],
    runs: int,
    jobs: int,
    baselines: dict[int, Path],
    workdir: Path,
) -> list[Outcome]:
    warmup = asyncio.Lock()

    async def one(s: Scenario, rate: int, run: int, gate: asyncio.Semaphore) -> Outcome:
        async with gate:
            outcome = await run_once(s, rate, run, baselines[run], workdir, warmup)
        print(_line(outcome), flush=True)
        return outcome

    outcomes: list[Outcome] = []
    for rate in rates:
        gate = asyncio.Semaphore(_jobs(rate, jobs))
        # Interleaved (run 1 of every scenario, then run 2...): machine noise hits them all.
        outcomes += await asyncio.gather(
            *(one(s, rate, run, gate) for run in range(runs) for s in scenarios)
        )
    return outcomes


# -- the report -------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(r) + " |" for r in body),
        "",
    ]


@dataclass
class Judged:
    """The figures of one scenario at one rate, over its runs."""

    scenario: Scenario
    rate: int
    done: list[Outcome]
    errors: int

    @property
    def flagged(self) -> list[Outcome]:
        return [o for o in self.done if o.flagged]

    @property
    def rows(self) -> list[int]:
        return sorted(o.phase.first_alarm for o in self.flagged if o.phase.first_alarm is not None)

    @property
    def only_shifted(self) -> int:
        return sum(o.phase.named == (self.scenario.shifted,) for o in self.flagged)

    @property
    def ok(self) -> bool:
        if not self.done:
            return False
        if self.scenario.goal_rows is None:
            return not self.flagged
        return len(self.flagged) == len(self.done) and self.rows[-1] <= self.scenario.goal_rows


def _judge(outcomes: list[Outcome], s: Scenario, rate: int) -> Judged:
    mine = [o for o in outcomes if o.scenario == s.name and o.rate == rate]
    return Judged(s, rate, [o for o in mine if not o.error], sum(bool(o.error) for o in mine))


def _named(j: Judged) -> str:
    flagged = j.flagged
    if not flagged:
        return "-"
    others = Counter(n for o in flagged for n in o.phase.named if n != j.scenario.shifted)
    out = f"{j.only_shifted}/{len(flagged)}" if j.scenario.goal_rows is not None else ""
    if j.scenario.goal_rows is None:
        names = Counter(n for o in flagged for n in o.phase.named)
        out = ", ".join(f"{n} x{c}" for n, c in names.most_common(5)) or "none named"
    elif others:
        out += " (also " + ", ".join(f"{n} x{c}" for n, c in others.most_common(5)) + ")"
    return out


def _false_alarms(outcomes: list[Outcome]) -> tuple[int, int]:
    """Health reads that reported drift while nothing had drifted, and all such reads."""
    alarms = reads = 0
    for o in outcomes:
        if o.error:
            continue
        alarms += o.warmup.alarms
        reads += o.warmup.reads
        if SCENARIOS[o.scenario].undrifted:
            alarms += o.phase.alarms
            reads += o.phase.reads
    return alarms, reads


def render(
    outcomes: list[Outcome],
    rates: Sequence[int],
    scenarios: Sequence[Scenario],
    runs: int,
    meta: dict[str, str],
) -> str:
    out = [
        "# Drift detection quality",
        "",
        f"`{meta['command']}`: {runs} run(s) per scenario and rate, {meta['started']}, "
        f"{meta['minutes']} min; load average {meta['load_before']} before, "
        f"{meta['load_after']} after.",
        "",
        f"Training data: {len(FEATURES)} features f0..f19 ~ N(0, 1) and `c` with shares "
        f"a/b/c = {'/'.join(f'{p:g}' for p in SHARES)}, {TRAIN_ROWS:,} rows, profiled with "
        "`mlwarden baseline build`. A FastAPI server with `InferenceMonitor` at its defaults "
        "(`model_name` and `baseline` only) under uvicorn; KServe v1 batches "
        '(`{"instances": [...]}`); `GET /-/health` read every 0.1 s. Each run: a fresh server, '
        f"{WARMUP_ROWS:,} undrifted rows at {WARMUP_RATE:,} rows/s, then the scenario at its "
        "rate until the report says `drift.detected` or the row cap. *Rows to flag*: rows "
        "answered since the change began when a health read first reported drift (for "
        "`rejected`, the rejected rows). *Named*: runs whose report named only the changed "
        "feature, of the runs flagged.",
        "",
    ]
    judged: list[Judged] = []
    for rate in rates:
        per_request = max(1, rate // 100)
        out += [
            f"## {rate:,} rows/s (requests of {per_request} row{'s' if per_request > 1 else ''}, "
            f"{rate / per_request:g} requests/s)",
            "",
        ]
        body = []
        mine = [o for o in outcomes if o.rate == rate]
        for s in scenarios:
            j = _judge(outcomes, s, rate)
            judged.append(j)
            goal = f"<= {s.goal_rows:,}" if s.goal_rows is not None else "not flagged"
            rows_ = j.rows
            body.append(
                [
                    s.name,
                    s.title,
                    goal,
                    theory(s)[0],
                    f"{len(j.flagged)}/{len(j.done)}"
                    + (f" ({j.errors} failed)" if j.errors else ""),
                    f"{statistics.median(rows_):,.0f}" if rows_ else "-",
                    f"{rows_[-1]:,}" if rows_ else "-",
                    f"{s.cap(rate):,}",
                    _named(j),
                    _verdict(j.ok),
                ]
            )
        out += _table(
            [
                "scenario",
                "change",
                "goal (rows)",
                "theoretical n",
                "flagged / runs",
                "rows to flag, median",
                "max",
                "row cap",
                "named only the changed feature",
                "verdict",
            ],
            body,
        )
        alarms, reads = _false_alarms(mine)
        share = alarms / reads if reads else 0.0
        lag = max((max(o.warmup.lag_s, o.phase.lag_s) for o in mine if not o.error), default=0.0)
        unexpected = sum(o.warmup.unexpected + o.phase.unexpected for o in mine)
        failed_reads = sum(o.warmup.failed_reads + o.phase.failed_reads for o in mine)
        capped = sum(o.capped_by_time for o in mine)
        out += [
            f"False alarms while nothing had drifted (warm-ups, `none`, `fresh`): {alarms} of "
            f"{reads:,} health reads ({share:.1%}). Client: largest send lag "
            f"{lag * 1000:.0f} ms, {unexpected} unexpected answers, {failed_reads} failed "
            f"health reads, {capped} run(s) stopped by the time cap.",
            "",
        ]
    out += ["## Goals", ""]
    goals: list[list[str]] = []
    for j in judged:
        s = j.scenario
        rows_ = j.rows
        if s.goal_rows is not None:
            measured = f"{len(j.flagged)}/{len(j.done)} flagged" + (
                f", max {rows_[-1]:,} rows" if rows_ else ""
            )
            target = f"{s.title} flagged within {s.goal_rows:,} rows ({j.rate:,} rows/s)"
        else:
            measured = f"{len(j.flagged)}/{len(j.done)} flagged"
            target = f"`{s.name}` ({s.title}) not flagged ({j.rate:,} rows/s)"
        goals.append([target, measured, _verdict(j.ok)])
    detections = [j for j in judged if j.scenario.goal_rows is not None]
    flagged = sum(len(j.flagged) for j in detections)
    only = sum(j.only_shifted for j in detections)
    if detections:
        goals.append(
            [
                "only the changed feature named",
                f"{only} of {flagged} detections",
                _verdict(flagged > 0 and only == flagged),
            ]
        )
    alarms, reads = _false_alarms(outcomes)
    share = alarms / reads if reads else 0.0
    goals.append(
        [
            "false alarms <= 1% of health reads (undrifted phases)",
            f"{alarms} of {reads:,} ({share:.2%})",
            _verdict(reads > 0 and share <= 0.01),
        ]
    )
    out += _table(["goal", "measured", "verdict"], goals)
    out += [
        "## Theoretical n",
        "",
        f"Rows a one-sample test on the changed rows alone needs, knowing the baseline exactly: "
        f"alpha = 0.05/21 two-sided (z_a = {_Z_ALPHA:.3f}), power {POWER:g} "
        f"(z_b = {_Z_POWER:.3f}). A floor, not a target: the monitor's window also holds the "
        "rows from before the change, and it does not know which feature will move.",
        "",
    ]
    out += [f"- `{s.name}`: {theory(s)[1]}" for s in scenarios if theory(s)[1]]
    out += ["", "## Runs", "", "```", *(_line(o) for o in outcomes), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        _serve(int(argv[1]), argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 runs per scenario")
    parser.add_argument(
        "--rates", default="1000,50", help="rows/s of the scenarios (default 1000,50)"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"of {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help=f"runs below {FAST_RATE} rows/s that overlap (warm-ups never do; default 2)",
    )
    parser.add_argument(
        "--output", type=Path, default=_RESULTS / "drift-quality.md", help="the markdown report"
    )
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
        scenarios = [SCENARIOS[n.strip()] for n in args.scenarios.split(",") if n.strip()]
    except (ValueError, KeyError) as exc:
        parser.error(f"--rates or --scenarios: {exc} (scenarios: {', '.join(SCENARIOS)})")
    if runs < 1 or not rates or min(rates) < 1 or not scenarios:
        parser.error("--runs, --rates and --scenarios need at least one positive value")
    estimate = estimate_s(rates, scenarios, runs, args.jobs)
    print(
        f"{runs} run(s) x {len(scenarios)} scenario(s) x {len(rates)} rate(s): at most about "
        f"{_duration(estimate)} (every scenario to its row cap; less when "
        "drift is found early)",
        flush=True,
    )
    meta = {
        "command": "python3 -m benchmarks.drift_quality " + " ".join(argv),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": _load_average(),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlwarden-drift-bench-") as tmp:
        workdir = Path(tmp)
        baselines = {run: build_baseline(run, workdir) for run in range(runs)}
        outcomes = asyncio.run(run_all(rates, scenarios, runs, args.jobs, baselines, workdir))
    meta["minutes"] = f"{(time.monotonic() - started) / 60:.1f}"
    meta["load_after"] = _load_average()
    text = render(outcomes, rates, scenarios, runs, meta)
    print()
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
