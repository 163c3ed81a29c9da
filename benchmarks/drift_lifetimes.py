"""False alarms of drift detection over whole server lifetimes, in process.

The end-to-end benchmark (``benchmarks.drift_quality``) judges detection through HTTP in
real time, which allows a few runs. False alarms are rare events and need many: here fresh
servers' feature windows are fed undrifted rows (20 standard-normal features and one
categorical, as in the end-to-end benchmark, against a baseline of 20,000 training rows) in
requests of ``--batch`` rows, and evaluated exactly when the middleware's worker would (once
the smallest scale has a fifth of its rows new), with the real :class:`DriftEvaluator`.
Reported: lifetimes that ever flagged drift, and the share of evaluations that flagged, by
window size (a fresh server's partial window first, then each scale).

    python3 -m benchmarks.drift_lifetimes --lifetimes 100 --rows 5000
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from mlwarden.middleware.baseline import BaselineProfile, build_baseline
from mlwarden.middleware.drift import DriftEvaluator, DriftThresholds
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.payloads import FeatureBatch

FEATURES = 20
SHARES = [0.5, 0.3, 0.2]


def columns(rng: np.random.Generator, rows: int, shift: float = 0.0) -> dict[str, list[object]]:
    """``rows`` rows of the benchmark's features by column; ``f0`` moved by ``shift`` sd."""
    out: dict[str, list[object]] = {
        f"f{i}": rng.normal(loc=shift if i == 0 else 0.0, size=rows).tolist()
        for i in range(FEATURES)
    }
    out["c"] = rng.choice(["a", "b", "c"], rows, p=SHARES).tolist()
    return out


def make_baseline(rng: np.random.Generator) -> BaselineProfile:
    """The baseline of 20,000 training rows of the same features."""
    training = {f"f{i}": rng.normal(size=20_000) for i in range(FEATURES)}
    training["c"] = rng.choice(["a", "b", "c"], 20_000, p=SHARES).astype(object)
    return build_baseline(training)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifetimes", type=int, default=100)
    parser.add_argument("--rows", type=int, default=5_000, help="rows per lifetime")
    parser.add_argument("--batch", type=int, default=10, help="rows per request")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    baseline = make_baseline(rng)
    settings = DriftThresholds()
    started = time.perf_counter()
    flagged_lifetimes = 0
    evaluations: Counter[str] = Counter()
    fired: Counter[str] = Counter()
    reports = flagged_reports = 0
    for _ in range(args.lifetimes):
        windows = FeatureWindows(baseline, max_rows=10_000, max_age_s=None)
        evaluator = DriftEvaluator(windows, settings)
        ever = False
        for _ in range(args.rows // args.batch):
            windows.add(
                FeatureBatch(rows=args.batch, columns=columns(rng, args.batch), format="json")
            )
            if evaluator.rows_until_due():
                continue
            report = evaluator.evaluate()
            reports += 1
            flagged_reports += report.drift_detected
            ever = ever or report.drift_detected
            hits = evaluator.fired_by_scale()
            for scale in evaluator.last_tested:
                full = report.rows >= scale
                label = (
                    f"{scale} rows" if full else f"partial ({settings.min_rows}-{scale - 1} rows)"
                )
                evaluations[label] += 1
                fired[label] += hits[scale]
        flagged_lifetimes += ever
    elapsed = time.perf_counter() - started
    print(f"# Drift false alarms over server lifetimes (in process, {elapsed:.0f} s)\n")
    print(
        f"{args.lifetimes} fresh servers x {args.rows:,} undrifted rows in requests of "
        f"{args.batch}; 21 features; defaults (scales {list(settings.scales)}, "
        f"expected_run_rows {settings.expected_run_rows:,}).\n"
    )
    share = flagged_lifetimes / args.lifetimes
    goal = "ok" if share <= 0.05 else "MISS"
    print(
        f"- lifetimes that ever flagged: {flagged_lifetimes} / {args.lifetimes} "
        f"({share:.1%}; goal <= 5%: {goal})"
    )
    rshare = flagged_reports / max(reports, 1)
    goal = "ok" if rshare <= 0.01 else "MISS"
    print(
        f"- evaluations (health verdicts) that flagged: {flagged_reports} / {reports:,} "
        f"({rshare:.2%}; goal <= 1%: {goal})"
    )
    print("\n| window tested | evaluations | fired | share |\n|---|---:|---:|---:|")

    def order(label: str) -> int:
        return 0 if label.startswith("partial") else int(label.split()[0])

    for label in sorted(evaluations, key=order):
        n, k = evaluations[label], fired[label]
        print(f"| {label} | {n:,} | {k} | {k / n:.3%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
