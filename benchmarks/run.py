"""Run every benchmark and write the results table: ``python3 -m benchmarks.run [--quick]``.

Writes ``benchmarks/results/latest.md`` (the tables), ``latest.json`` (every round's raw
figures) and ``profile-<variant>.txt`` (full cProfile listings), and prints the markdown.
A part that fails is reported in the table and the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import environment, workload
from benchmarks.report import Report, render

_REPO_ROOT = Path(__file__).resolve().parent.parent
_RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("micro", "inprocess", "http", "memory", "profile", "ablation", "proxy")

FULL: dict[str, Any] = {
    "inprocess_per_round": 100,
    "inprocess_rounds": 120,
    "inprocess_warmup": 1_000,
    "http_connections": 32,
    "http_duration_s": 5,
    "http_rounds": 5,
    "http_warmup_s": 2,
    "micro_rows": 50_000,
    "micro_repeats": 7,
    "drift_repeats": 30,
    "memory_variants": ("mlwarden", "mlwarden+tracing"),
    "memory_checkpoints": (20_000, 100_000),
    "profile_requests": 5_000,
    "profile_warmup": 1_000,
    "ablation_per_round": 100,
    "ablation_rounds": 60,
    "proxy_connections": 32,
    "proxy_duration_s": 5,
    "proxy_rounds": 5,
    "proxy_warmup_s": 2,
    "proxy_rate": 500,
    "proxy_latency_s": 8,
    "proxy_latency_rounds": 3,
    "proxy_failover_repeats": 3,
    "proxy_failover_before_s": 3,
    "proxy_failover_after_s": 5,
    "proxy_memory_s": 60,
}
QUICK: dict[str, Any] = {
    "inprocess_per_round": 100,
    "inprocess_rounds": 25,
    "inprocess_warmup": 300,
    "http_connections": 32,
    "http_duration_s": 2,
    "http_rounds": 2,
    "http_warmup_s": 1,
    "micro_rows": 10_000,
    "micro_repeats": 3,
    "drift_repeats": 10,
    # The windows hold 10,000 rows: the first checkpoint must come after they are full.
    "memory_variants": ("mlwarden",),
    "memory_checkpoints": (12_000, 36_000),
    "profile_requests": 1_500,
    "profile_warmup": 300,
    "ablation_per_round": 100,
    "ablation_rounds": 15,
    "proxy_connections": 32,
    "proxy_duration_s": 3,
    "proxy_rounds": 2,
    "proxy_warmup_s": 1,
    "proxy_rate": 500,
    "proxy_latency_s": 4,
    "proxy_latency_rounds": 2,
    "proxy_failover_repeats": 1,
    "proxy_failover_before_s": 2,
    "proxy_failover_after_s": 4,
    "proxy_memory_s": 15,
}


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _memory(variant: str, checkpoints: tuple[int, ...]) -> dict[str, Any]:
    """One variant in a fresh interpreter, so that RSS is that variant's alone."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", variant, *map(str, checkpoints)],
        cwd=_REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.memory {variant} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, about 4-5 minutes")
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {','.join(PARTS)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=_RESULTS / "latest.md",
        help="where to write the markdown (the JSON and profiles go next to it)",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    cfg = QUICK if args.quick else FULL
    begin = time.monotonic()
    report = Report(
        mode="quick" if args.quick else "full",
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=" ".join(["python3 -m benchmarks.run", *(argv or sys.argv[1:])]),
    )
    report.settings = {f"setting {k}": str(v) for k, v in cfg.items()}
    report.environment = environment.collect()
    report.load["start"] = environment.load_average()
    report.reference["start"] = environment.reference_timings()
    if set(parts) - {"proxy"}:  # the proxy part sends no features to a monitor
        _progress("building the baseline")
        workload.baseline()

    def attempt(part: str, fn: Any) -> None:
        if part not in parts:
            return
        _progress(f"{part} ...")
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            report.errors[part] = f"{type(exc).__name__}: {exc}"

    def micro() -> None:
        from benchmarks.micro import run_micro

        report.micro = run_micro(
            rows=cfg["micro_rows"],
            repeats=cfg["micro_repeats"],
            drift_repeats=cfg["drift_repeats"],
            progress=_progress,
        )

    def inprocess() -> None:
        from benchmarks.inprocess import run_inprocess

        report.inprocess = run_inprocess(
            per_round=cfg["inprocess_per_round"],
            rounds=cfg["inprocess_rounds"],
            warmup=cfg["inprocess_warmup"],
            progress=_progress,
        )

    def http() -> None:
        from benchmarks.over_http import run_http

        report.http = run_http(
            connections=cfg["http_connections"],
            duration_s=cfg["http_duration_s"],
            rounds=cfg["http_rounds"],
            warmup_s=cfg["http_warmup_s"],
            progress=_progress,
        )

    def memory() -> None:
        for variant in cfg["memory_variants"]:
            report.memory.append(_memory(variant, cfg["memory_checkpoints"]))
            _progress(f"memory: {variant} done")

    def profile() -> None:
        from benchmarks.profiling import run_profiles

        report.profiles = run_profiles(n=cfg["profile_requests"], warmup=cfg["profile_warmup"])

    def ablation() -> None:
        from benchmarks.inprocess import run_inprocess

        report.ablation = run_inprocess(
            per_round=cfg["ablation_per_round"],
            rounds=cfg["ablation_rounds"],
            warmup=cfg["inprocess_warmup"],
            names=("bare", "mlwarden", *workload.ABLATIONS, workload.MULTI_MODEL),
            progress=_progress,
        )

    def proxy() -> None:
        from benchmarks.proxy import run_proxy

        report.proxy = run_proxy(
            connections=cfg["proxy_connections"],
            duration_s=cfg["proxy_duration_s"],
            rounds=cfg["proxy_rounds"],
            warmup_s=cfg["proxy_warmup_s"],
            rate=cfg["proxy_rate"],
            latency_s=cfg["proxy_latency_s"],
            latency_rounds=cfg["proxy_latency_rounds"],
            latency_warmup_s=1.0,
            failover_repeats=cfg["proxy_failover_repeats"],
            failover_before_s=cfg["proxy_failover_before_s"],
            failover_after_s=cfg["proxy_failover_after_s"],
            memory_s=cfg["proxy_memory_s"],
            progress=_progress,
        )

    for part, fn in (
        ("micro", micro),
        ("inprocess", inprocess),
        ("http", http),
        ("memory", memory),
        ("profile", profile),
        ("ablation", ablation),
        ("proxy", proxy),
    ):
        attempt(part, fn)

    report.load["end"] = environment.load_average()
    report.reference["end"] = environment.reference_timings()
    report.seconds = time.monotonic() - begin
    text = render(report)
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    raw = _jsonable({k: v for k, v in dataclasses.asdict(report).items() if k != "profiles"})
    raw["profiles"] = [
        {k: _jsonable(v) for k, v in dataclasses.asdict(p).items() if k != "text"}
        for p in report.profiles
    ]
    output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    for p in report.profiles:
        safe = p.variant.replace("+", "-")
        (output.parent / f"profile-{safe}.txt").write_text(p.text)
    print(text)
    _progress(f"wrote {output} in {report.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
