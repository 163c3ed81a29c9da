"""Drift detection by a fleet of three replicas against one server seeing every row, in process.

Each run streams rows in requests of ``--batch`` rows, round-robin over three replicas' feature
windows, ``--warm`` undrifted rows first, then rows with feature ``f0`` shifted by
``--shift`` standard deviations. Three judges watch the same stream:

- **one server** seeing every row: the middleware's :class:`DriftEvaluator`, evaluated exactly
  when its worker would (a fifth of the smallest scale new);
- **the fleet**: every ``--pass-rows`` rows, each replica's ``/-/drift/counts`` answer
  (:func:`~mlwarden.middleware.drift_export.counts_answer`, the last ``ceil(S / 3)`` rows per
  scale ``S``) goes to the leader's :class:`~mlwarden.sidecar.fleet.drift_judge.FleetDriftJudge`,
  exactly what the sidecars exchange through Redis (the pass stands for ``drift_interval_s``);
- **one replica alone**: replica 0's own evaluator (a third of the rows).

Reported per judge: runs that flagged the shift and the rows (fleet-wide, since the shift) it
took, median and quartiles; false alarms: runs that flagged during the undrifted warm-up, and
null runs (``--null-runs`` streams of ``--null-rows`` undrifted rows) that ever flagged.

    python3 -m benchmarks.fleet_drift --runs 40 --null-runs 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from benchmarks.drift_lifetimes import columns, make_baseline
from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.drift import DriftEvaluator, DriftThresholds
from mlwarden.middleware.drift_export import baseline_fingerprint, counts_answer
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.payloads import FeatureBatch
from mlwarden.sidecar.fleet.drift_judge import FleetDriftJudge

REPLICAS = 3
JUDGES = ("one server", "fleet of 3", "one replica alone")


@dataclass
class Stream:
    """One server's windows, three replicas' windows and the three judges over one stream."""

    baseline: BaselineProfile
    settings: DriftThresholds
    pass_rows: int
    single: FeatureWindows = field(init=False)
    replicas: list[FeatureWindows] = field(init=False)
    evaluators: list[DriftEvaluator] = field(init=False)
    judge: FleetDriftJudge = field(init=False)
    rows: int = 0
    _next_pass: int = 0

    def __post_init__(self) -> None:
        self.single = FeatureWindows(self.baseline, max_rows=10_000, max_age_s=None)
        self.replicas = [
            FeatureWindows(self.baseline, max_rows=10_000, max_age_s=None) for _ in range(REPLICAS)
        ]
        self.evaluators = [
            DriftEvaluator(self.single, self.settings),
            DriftEvaluator(self.replicas[0], self.settings),
        ]
        self.judge = FleetDriftJudge(
            self.baseline, self.settings, fingerprint=baseline_fingerprint(self.baseline)
        )
        self._cells = self.judge.calibration.numeric.cells
        self._sizes = {s: math.ceil(s / REPLICAS) for s in self.settings.scales}
        self._next_pass = self.pass_rows

    def feed(self, batch: FeatureBatch) -> dict[str, bool]:
        """Add one request; which judges flagged drift at an evaluation now."""
        self.single.add(batch)
        self.replicas[(self.rows // batch.rows) % REPLICAS].add(batch)
        self.rows += batch.rows
        flagged: dict[str, bool] = {}
        for name, evaluator in zip((JUDGES[0], JUDGES[2]), self.evaluators, strict=True):
            if evaluator.rows_until_due() == 0:
                flagged[name] = evaluator.evaluate().drift_detected
        if self.rows >= self._next_pass:
            self._next_pass += self.pass_rows
            gathered = {}
            for i, windows in enumerate(self.replicas):
                answer = counts_answer(
                    windows,
                    self.settings,
                    sorted(set(self._sizes.values())),
                    cells=self._cells,
                    baseline=self.baseline,
                )
                answer["counts"] = {
                    str(scale): answer["counts"][str(size)] for scale, size in self._sizes.items()
                }
                gathered[f"replica-{i}"] = answer
            verdict = self.judge.judge(gathered)
            if verdict["tested"]:
                flagged[JUDGES[1]] = verdict["detected"]
        return flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="drifted runs")
    parser.add_argument("--shift", type=float, default=0.2, help="shift of f0, in sd")
    parser.add_argument("--warm", type=int, default=3_000, help="undrifted rows first")
    parser.add_argument("--max-rows", type=int, default=12_000, help="drifted rows at most")
    parser.add_argument("--null-runs", type=int, default=20)
    parser.add_argument("--null-rows", type=int, default=15_000)
    parser.add_argument("--batch", type=int, default=10, help="rows per request")
    parser.add_argument("--pass-rows", type=int, default=60, help="fleet rows per leader pass")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    baseline = make_baseline(rng)
    settings = DriftThresholds()
    started = time.perf_counter()

    detected: dict[str, list[int]] = {j: [] for j in JUDGES}
    warm_alarms = dict.fromkeys(JUDGES, 0)
    for _ in range(args.runs):
        stream = Stream(baseline, settings, args.pass_rows)
        alarmed: set[str] = set()
        for _ in range(args.warm // args.batch):
            batch = FeatureBatch(args.batch, columns(rng, args.batch), "json")
            alarmed |= {j for j, hit in stream.feed(batch).items() if hit}
        for judge in alarmed:
            warm_alarms[judge] += 1
        onset, found = stream.rows, {}
        while stream.rows - onset < args.max_rows and len(found) < len(JUDGES):
            batch = FeatureBatch(args.batch, columns(rng, args.batch, args.shift), "json")
            for judge, hit in stream.feed(batch).items():
                if hit and judge not in found:
                    found[judge] = stream.rows - onset
        for judge, rows in found.items():
            detected[judge].append(rows)

    null_alarms = dict.fromkeys(JUDGES, 0)
    for _ in range(args.null_runs):
        stream = Stream(baseline, settings, args.pass_rows)
        alarmed = set()
        for _ in range(args.null_rows // args.batch):
            batch = FeatureBatch(args.batch, columns(rng, args.batch), "json")
            alarmed |= {j for j, hit in stream.feed(batch).items() if hit}
        for judge in alarmed:
            null_alarms[judge] += 1

    elapsed = time.perf_counter() - started
    print(
        f"fleet drift: f0 shifted by {args.shift} sd after {args.warm} undrifted rows, "
        f"{args.runs} runs (at most {args.max_rows} drifted rows each); "
        f"{args.null_runs} null runs of {args.null_rows} rows; {args.batch} rows per request, "
        f"a fleet pass every {args.pass_rows} rows; {elapsed:.0f} s"
    )
    print(
        "| judge | runs flagged | rows to flag: median | quartiles "
        "| false alarms in warm-up | null runs flagged |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    single_median = None
    for judge in JUDGES:
        rows = detected[judge]
        if rows:
            median = statistics.median(rows)
            q = statistics.quantiles(rows, n=4) if len(rows) > 1 else [rows[0]] * 3
            single_median = single_median or median
            shown = f"{median:,.0f} ({median / single_median:.2f}x one server)"
            quartiles = f"{q[0]:,.0f}-{q[2]:,.0f}"
        else:
            shown, quartiles = "-", "-"
        print(
            f"| {judge} | {len(rows)}/{args.runs} | {shown} | {quartiles} "
            f"| {warm_alarms[judge]}/{args.runs} | {null_alarms[judge]}/{args.null_runs} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
