"""The results as markdown: tables with ratios to the bare app, targets with PASS/MISS.

A benchmark reports, it does not assert: a missed target is printed, never raised.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.inprocess import InProcessResult
from benchmarks.micro import FLOOR, FLOOR_WHEN_TARGET_SET_US, MicroResult
from benchmarks.over_http import HttpResult
from benchmarks.profiling import Profile
from benchmarks.proxy import ProxyResult

__all__ = ["Report", "render"]

_ROW_TARGET = "FeatureWindows.add, 1-row batches (flush amortised)"
_ROW_TARGET_10 = "FeatureWindows.add, 10-row batches (flush amortised)"
_DRIFT = "evaluate_drift, 20 numeric features, 10,000-row window"
_MiB = 1024 * 1024


@dataclass
class Report:
    mode: str
    started: str
    command: str = ""
    seconds: float = 0.0
    settings: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    load: dict[str, str] = field(default_factory=dict)
    inprocess: InProcessResult | None = None
    http: HttpResult | None = None
    micro: MicroResult | None = None
    memory: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    ablation: InProcessResult | None = None
    proxy: ProxyResult | None = None
    errors: dict[str, str] = field(default_factory=dict)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def _paired(a: list[float], b: list[float]) -> str:
    """Median [min-max] of per-round ratios a/b (rounds are adjacent in time)."""
    ratios = [x / y for x, y in zip(a, b, strict=False) if y]
    if not ratios:
        return "n/a"
    return f"{statistics.median(ratios):.2f} [{_spread(ratios, '{:.2f}')}]"


# --------------------------------------------------------------------------- sections


def _inprocess(r: InProcessResult) -> list[str]:
    rows = []
    for name, values in r.us_per_request.items():
        diff, ratio, ratios = r.paired(name)
        wall_diff, wall_ratio, _ = r.paired(name, wall=True)
        rows.append(
            [
                name,
                f"{r.median(name):.1f}",
                _spread(values),
                f"{diff:+.1f}",
                f"{ratio:.2f} [{_spread(ratios, '{:.2f}')}]",
                f"{r.wall_median(name):.1f}",
                f"{wall_diff:+.1f}",
                f"{wall_ratio:.2f}",
                str(r.failures.get(name, 0)),
            ]
        )
    lines = [
        "## In-process cost per request (ASGI call loop, no server)",
        "",
        f"{r.rounds} alternating rounds of {r.requests_per_round} requests per variant "
        "(order rotating each round), after a warm-up. *µs/request* is the median round; "
        "*overhead* and *ratio* are the medians of the per-round differences and ratios to "
        "`bare` run in the same round (paired, so most machine noise cancels). CPU time of "
        "the process (all threads) is the primary figure: unlike wall time it leaves out time "
        "spent waiting for a core that other work holds. Both include the loop's own small "
        "cost (scope, receive/send, a yield every 8 requests), equal for all variants.",
        "",
    ]
    return lines + _table(
        [
            "variant",
            "CPU µs/request",
            "rounds min-max",
            "overhead µs vs bare",
            "ratio to bare [rounds min-max]",
            "wall µs/request",
            "wall overhead µs",
            "wall ratio",
            "non-200",
        ],
        rows,
    )


def _http(r: HttpResult) -> list[str]:
    names = list(r.runs)
    attrs = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us")
    bare = {a: r.median("bare", a) for a in attrs}
    bare_rps = [run.requests_per_s for run in r.runs["bare"]]
    rows = []
    for name in names:
        rps, p50, p99, cpu = (r.median(name, a) for a in attrs)
        runs = r.runs[name]
        errors = sum(run.non_2xx + run.socket_errors for run in runs)
        rows.append(
            [
                name,
                f"{rps:.0f}",
                f"{rps / bare['requests_per_s']:.2f}",
                _paired([run.requests_per_s for run in runs], bare_rps),
                f"{p50:.2f}",
                f"{p50 / bare['p50_ms']:.2f}",
                f"{p99:.2f}",
                f"{p99 / bare['p99_ms']:.2f}",
                f"{cpu:.0f}",
                f"{bare['server_cpu_us'] / cpu:.2f}",
                f"{sum(run.requests for run in runs)}/{errors}",
            ]
        )
    pin = "server on core 0, wrk on core 1 (taskset)" if r.pinned else "not pinned"
    lines = [
        "## Over HTTP (uvicorn, one worker, wrk)",
        "",
        f"{r.rounds} alternating rounds of {r.duration_s:g} s per variant, "
        f"{r.connections} connections, wrk -t1 --latency, {pin}; medians over rounds. "
        "*Server CPU µs/request* is the server process's CPU time (all threads) per completed "
        "request; its *capacity ratio* (bare's CPU per request / the variant's) estimates the "
        "throughput ratio without the noise of other work on the machine.",
        "",
    ]
    return lines + _table(
        [
            "variant",
            "req/s",
            "ratio",
            "per-round req/s ratio [min-max]",
            "p50 ms",
            "ratio",
            "p99 ms",
            "ratio",
            "server CPU µs/request",
            "capacity ratio",
            "requests/errors",
        ],
        rows,
    )


def _micro(r: MicroResult) -> list[str]:
    targets: dict[str, tuple[float, str]] = {
        _ROW_TARGET: (2.0, "≤ 2 µs/row"),
        _ROW_TARGET_10: (2.0, "≤ 2 µs/row"),
        _DRIFT: (5.0, "≤ 5 ms"),
    }
    rows = []
    for name, values in r.figures.items():
        med = statistics.median(values)
        target = targets.get(name)
        rows.append(
            [
                name,
                f"{med:.3f} {r.units[name]}",
                _spread(values, "{:.3f}"),
                target[1] if target else "—",
                _verdict(med <= target[0]) if target else "—",
                r.notes.get(name, ""),
            ]
        )
    orphans = [f"- {name}: {note}" for name, note in r.notes.items() if name not in r.figures]
    return [
        "## Micro-benchmarks (20 numeric features)",
        "",
        *_table(["measurement", "median", "repeats min-max", "target", "verdict", "note"], rows),
        *orphans,
        *([""] if orphans else []),
    ]


def _memory_growth(entry: dict[str, Any]) -> tuple[float, int]:
    first, last = entry["samples"][0], entry["samples"][-1]
    return (last["rss_bytes"] - first["rss_bytes"]) / _MiB, (
        last["allocated_blocks"] - first["allocated_blocks"]
    )


def _memory(entries: list[dict[str, Any]]) -> list[str]:
    rows = []
    for entry in entries:
        for sample in entry["samples"]:
            rows.append(
                [
                    entry["variant"],
                    f"{sample['requests']:,}",
                    f"{sample['rss_bytes'] / _MiB:.1f}",
                    f"{sample['allocated_blocks']:,}",
                    f"{sample['gc_objects']:,}",
                ]
            )
        rss, blocks = _memory_growth(entry)
        rows.append(
            [f"**{entry['variant']} growth**", "first → last", f"{rss:+.2f}", f"{blocks:+,}", ""]
        )
    lines = [
        "## Memory independent of traffic (in-process, fresh process per variant)",
        "",
        "After a full garbage collection at each checkpoint. The feature windows (10,000 rows) "
        "and the health window (2,000 requests) are full before the first checkpoint.",
        "",
    ]
    return lines + _table(
        ["variant", "requests", "RSS MiB", "allocated blocks", "gc objects"], rows
    )


def _profiles(profiles: list[Profile]) -> list[str]:
    lines = [
        "## Where the time goes (cProfile of the in-process loop)",
        "",
        "cProfile charges every Python call, so these µs are inflated against the table "
        "above: read them as shares. *middleware own* = cumulative time in "
        "`InferenceMonitor.__call__` minus the time in the app it wraps.",
        "",
    ]
    rows = []
    for p in profiles:
        own = f"{p.middleware_us:.1f}" if p.middleware_us is not None else "—"
        inner = f"{p.inner_app_us:.1f}" if p.inner_app_us is not None else "—"
        rows.append([p.variant, f"{p.requests}", f"{p.total_us:.1f}", own, inner])
    lines += _table(
        ["variant", "requests", "profiled µs/request", "middleware own µs", "wrapped app µs"], rows
    )
    for p in profiles:
        if not p.mlwarden:
            continue
        own = p.middleware_us or 0.0

        def share(cumulative: float, own: float = own) -> str:
            if not own:
                return "—"
            return "incl. the app" if cumulative > own * 1.01 else f"{cumulative / own:.0%}"

        lines += [f"### {p.variant}: mlwarden functions by cumulative time, per request", ""]
        lines += _table(
            ["function", "calls/request", "own µs", "cumulative µs", "share of middleware own"],
            [
                [
                    f"`{row.function}`",
                    f"{row.calls_per_request:.2f}",
                    f"{row.own_us:.1f}",
                    f"{row.cumulative_us:.1f}",
                    share(row.cumulative_us),
                ]
                for row in p.mlwarden[:18]
            ],
        )
        lines += [f"### {p.variant}: hottest functions overall by own time, per request", ""]
        lines += _table(
            ["function", "calls/request", "own µs", "cumulative µs"],
            [
                [
                    f"`{row.function}`",
                    f"{row.calls_per_request:.2f}",
                    f"{row.own_us:.1f}",
                    f"{row.cumulative_us:.1f}",
                ]
                for row in p.hottest[:12]
            ],
        )
    return lines


def _ablation(r: InProcessResult) -> list[str]:
    rows = []
    for name, values in r.us_per_request.items():
        diff, ratio, _ = r.paired(name)
        step = "—"
        if name not in ("bare", "mlwarden"):
            step = f"{-r.paired(name, against='mlwarden')[0]:+.1f}"
        rows.append(
            [name, f"{r.median(name):.1f}", _spread(values), f"{diff:+.1f}", f"{ratio:.2f}", step]
        )
    lines = [
        "## What each recording step costs (in-process ablation, tracing off)",
        "",
        "`mlwarden` with one step replaced by a no-op in a subclass (benchmarks only; the "
        "middleware is unchanged): `-payload` skips parsing the request body and updating the "
        "feature windows, `-predictions` skips reading the response. The step's cost is the "
        "paired difference `mlwarden` minus the variant, without a profiler's distortion. "
        "`mlwarden multi-model` watches the same endpoint as one of several models (its model "
        "read from the path, its baseline from a mapping): its negative step is what the "
        "model lookup adds. "
        f"CPU µs, {r.rounds} alternating rounds of {r.requests_per_round} requests, medians.",
        "",
    ]
    return lines + _table(
        [
            "variant",
            "CPU µs/request",
            "rounds min-max",
            "overhead vs bare",
            "ratio to bare",
            "cost of the step(s) µs",
        ],
        rows,
    )


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _proxy(r: ProxyResult) -> list[str]:
    lines = [
        "## Sidecar proxy: mlwarden sidecar, nginx and naive proxies in front of one upstream",
        "",
        "The upstream is a raw ASGI app under uvicorn answering a 200-byte JSON prediction; "
        "`direct` has no proxy. The sidecar runs as `mlwarden sidecar --config FILE` with a "
        "second (stable) upstream and every resilience feature at its defaults (retries and "
        f"retry budget, breakers, health checks every 5 s). {r.pinning[:1].upper()}"
        f"{r.pinning[1:]}: the proxy and the upstream share core 0 in every variant. "
        + (f"{'; '.join(r.notes)}." if r.notes else ""),
        "",
    ]
    if r.throughput:
        names = list(r.throughput)
        direct = r.median("direct", "requests_per_s") if "direct" in names else None
        sidecar_rps = [run.requests_per_s for run in r.throughput.get("sidecar", [])]
        rows = []
        for name in names:
            runs = r.throughput[name]
            rps = r.median(name, "requests_per_s")
            errors = sum(run.non_2xx + run.socket_errors for run in runs)
            versus = (
                "—"
                if name == "sidecar" or not sidecar_rps
                else _paired(sidecar_rps, [run.requests_per_s for run in runs])
            )
            rows.append(
                [
                    name,
                    f"{rps:.0f}",
                    f"{rps / direct:.2f}" if direct else "—",
                    versus,
                    f"{r.median(name, 'p50_ms'):.2f}",
                    f"{r.median(name, 'p99_ms'):.2f}",
                    f"{r.median(name, 'server_cpu_us'):.0f}",
                    f"{statistics.median(r.upstream_cpu_us.get(name) or [0.0]):.0f}",
                    f"{sum(run.requests for run in runs)}/{errors}",
                ]
            )
        lines += [
            "### Throughput (wrk, closed loop)",
            "",
            f"{r.rounds} alternating rounds of {r.duration_s:g} s per variant, "
            f"{r.connections} connections, `wrk -t1 --latency`; medians over rounds. "
            "*sidecar / variant* is the median of the per-round ratios (adjacent in time). "
            "*Proxy CPU* is the proxy's processes' CPU time per request (for `direct`, the "
            "upstream's), the cost that decides capacity on a busy node.",
            "",
            *_table(
                [
                    "variant",
                    "req/s",
                    "ratio to direct",
                    "sidecar / variant [rounds min-max]",
                    "p50 ms",
                    "p99 ms",
                    "proxy CPU µs/request",
                    "upstream CPU µs/request",
                    "requests/errors",
                ],
                rows,
            ),
        ]
    if r.latency_pooled:
        base = r.latency_pooled.get("direct")
        rows = []
        for name, s in r.latency_pooled.items():
            p99s = [x["p99_ms"] for x in r.latency.get(name, [])]
            added = (
                ["—", "—"]
                if base is None or name == "direct"
                else [
                    f"{s['p50_ms'] - base['p50_ms']:+.2f}",
                    f"{s['p99_ms'] - base['p99_ms']:+.2f}",
                ]
            )
            rows.append(
                [
                    name,
                    f"{s['count']:.0f}",
                    f"{s['failed']:.0f}",
                    f"{s['p50_ms']:.2f}",
                    f"{s['p90_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                    f"{s['p999_ms']:.1f}",
                    f"{s['max_ms']:.1f}",
                    *added,
                    _spread(p99s, "{:.2f}") if p99s else "—",
                    f"{s['lag_p99_ms']:.2f}",
                ]
            )
        lines += [
            f"### Added latency at a fixed {r.rate_per_s:g} requests/s (open loop)",
            "",
            f"{r.latency_rounds} alternating rounds of {r.latency_s:g} s per variant (after a "
            "1 s warm-up that is not counted), all rounds pooled. The generator (this repo's "
            "`python3 -m benchmarks.open_loop`, uvloop + httptools, keep-alive connections) "
            "sends on a fixed schedule whatever the answers do, and every latency runs from the "
            "request's *scheduled* time, so a stall counts against every request it delayed "
            "(no coordinated omission). *Generator lag p99* is how late the generator itself "
            "sent: the floor of what it can resolve. A variant that cannot keep up builds a "
            "queue and its latencies grow to the 5 s client timeout (counted as failed).",
            "",
            *_table(
                [
                    "variant",
                    "requests",
                    "failed",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "max ms",
                    "added p50 ms vs direct",
                    "added p99 ms vs direct",
                    "p99 rounds min-max",
                    "generator lag p99 ms",
                ],
                rows,
            ),
        ]
    if r.failover:
        rows = []
        for i, f in enumerate(r.failover, 1):
            after = f["answers_after_kill"]
            kinds = ", ".join(f"{k} {v}" for k, v in f["failures_by_kind"].items())
            rows.append(
                [
                    str(i),
                    str(f["requests"]),
                    f"{f['failed']} ({f['failed_share']:.2%})" + (f": {kinds}" if kinds else ""),
                    _ms(f["first_stable_ms"]),
                    _ms(f["all_stable_ms"]),
                    _ms(f["last_primary_ms"]),
                    f"{after['primary']}/{after['stable']}",
                    f"{f['p50_ms_first_s_after_kill']:.1f} / {f['max_ms_first_s_after_kill']:.0f}",
                    ", ".join(f"{k} {v}" for k, v in f.get("breakers_after", {}).items()),
                ]
            )
        lines += [
            "### Failover: the primary killed (SIGKILL) under load",
            "",
            f"A fresh sidecar in front of a fresh primary and the stable upstream, "
            f"{r.rate_per_s:g} requests/s open loop; the primary's process is killed "
            f"{r.failover[0]['kill_at_s']:.1f} s in. Times are from the kill to the answers' "
            "arrival at the client; the version is read from `x-mlwarden-upstream`. *All "
            "stable* is the first stable answer after the last answer from the primary (those "
            "were in flight at the kill). A failed request is a non-2xx answer or no answer.",
            "",
            *_table(
                [
                    "repeat",
                    "requests",
                    "failed",
                    "kill → first stable ms",
                    "kill → all stable ms",
                    "last primary answer ms",
                    "answers after the kill primary/stable",
                    "p50 / max ms, requests due in the 1st s",
                    "breakers after",
                ],
                rows,
            ),
        ]
    if r.memory.get("samples"):
        m = r.memory
        lines += [
            "### Sidecar memory under sustained load",
            "",
            f"RSS (`VmRSS`) sampled every second during {m['duration_s']:g} s of wrk at full "
            f"speed ({r.connections} connections), after the rounds above. *At start-up* was "
            "read before any traffic.",
            "",
            *_table(
                [
                    "at start-up MiB",
                    "start MiB",
                    "end MiB",
                    "max MiB",
                    "growth MiB",
                    "requests",
                    "req/s",
                    "errors",
                ],
                [
                    [
                        f"{m['idle_kib'] / 1024:.1f}",
                        f"{m['start_kib'] / 1024:.1f}",
                        f"{m['end_kib'] / 1024:.1f}",
                        f"{m['max_kib'] / 1024:.1f}",
                        f"{m['growth_kib'] / 1024:+.1f}",
                        f"{m['requests']:,}",
                        f"{m['requests_per_s']:.0f}",
                        str(m["errors"]),
                    ]
                ],
            ),
        ]
    for name, checks in r.checks.items():
        lines += [f"{name}: `{checks}`", ""]
    return lines


def _checks(report: Report) -> list[str]:
    rows = []
    if report.inprocess:
        for name, counts in report.inprocess.checks.items():
            if counts:
                rows.append(["in-process", name, *_check_cells(counts)])
    if report.http:
        for name, counts in report.http.checks.items():
            rows.append(["HTTP", name, *_check_cells(counts)])
    for entry in report.memory:
        if entry.get("checks"):
            rows.append(["memory", entry["variant"], *_check_cells(entry["checks"])])
    if not rows:
        return []
    lines = ["## Sanity: the mlwarden variants really read features and predictions", ""]
    lines += _table(
        [
            "where",
            "variant",
            "rows scored",
            "payload errors",
            "predictions skipped",
            "drift evaluations",
            "other",
        ],
        rows,
    )
    if report.inprocess:
        spans = {k: v for k, v in report.inprocess.spans.items() if v is not None}
        if spans:
            lines += [
                "Spans exported (in-process, all rounds): "
                + ", ".join(f"{k} {v:,}" for k, v in spans.items()),
                "",
            ]
    return lines


def _check_cells(counts: dict[str, float]) -> list[str]:
    known = ("rows_scored", "payload_errors", "predictions_skipped", "drift_evaluations")
    other = ", ".join(f"{k} {v:g}" for k, v in counts.items() if k not in known)
    return [f"{counts.get(k, 0):g}" for k in known] + [other]


def _targets(report: Report) -> list[str]:
    rows: list[list[str]] = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        rows.append([target, measured, _verdict(ok)])

    ip, http, micro = report.inprocess, report.http, report.micro
    if ip and {"bare", "mlwarden", "instrumentator"} <= set(ip.us_per_request):
        ours, theirs = ip.paired("mlwarden")[0], ip.paired("instrumentator")[0]
        ours_wall = ip.paired("mlwarden", wall=True)[0]
        theirs_wall = ip.paired("instrumentator", wall=True)[0]
        head_to_head = ip.paired("mlwarden", against="instrumentator")[0]
        add(
            "tracing off: in-process overhead below prometheus-fastapi-instrumentator's",
            f"CPU {ours:+.1f} µs vs {theirs:+.1f} µs (paired mlwarden - instrumentator "
            f"{head_to_head:+.1f} µs; wall {ours_wall:+.1f} vs {theirs_wall:+.1f})",
            ours < theirs,
        )
    if http and {"bare", "mlwarden"} <= set(http.runs):
        ratio = http.median("mlwarden", "requests_per_s") / http.median("bare", "requests_per_s")
        capacity = http.median("bare", "server_cpu_us") / http.median("mlwarden", "server_cpu_us")
        add(
            "tracing off: ≥ 80% of bare throughput over HTTP",
            f"{ratio:.0%} (capacity from server CPU: {capacity:.0%})",
            ratio >= 0.8,
        )
    if http and {"mlwarden+tracing", "otel-asgi"} <= set(http.runs):
        ratio = http.median("mlwarden+tracing", "requests_per_s") / http.median(
            "otel-asgi", "requests_per_s"
        )
        capacity = http.median("otel-asgi", "server_cpu_us") / http.median(
            "mlwarden+tracing", "server_cpu_us"
        )
        add(
            "tracing on: ≥ 1.5x the throughput of opentelemetry-instrumentation-asgi",
            f"{ratio:.2f}x (capacity from server CPU: {capacity:.2f}x)",
            ratio >= 1.5,
        )
    if micro:
        # The 2 µs target was set where the numpy floor measured 1.2 µs; this machine's speed
        # is read off the same floor, measured in this run.
        scale = micro.best(FLOOR) / FLOOR_WHEN_TARGET_SET_US if FLOOR in micro.figures else 1.0
        for name in (_ROW_TARGET, _ROW_TARGET_10):
            if name in micro.figures:
                value = micro.best(name)
                label = "1-row" if name == _ROW_TARGET else "10-row"
                add(
                    f"per-row feature update ≤ 2 µs for 20 features ({label} batches), "
                    "scaled by this run's numpy floor",
                    f"best {value:.2f} (median {micro.median(name):.2f}) µs/row; floor "
                    f"{scale * FLOOR_WHEN_TARGET_SET_US:.2f} µs "
                    f"(target here {2.0 * scale:.2f} µs)",
                    value <= 2.0 * scale,
                )
        if _DRIFT in micro.figures:
            value = micro.best(_DRIFT)
            add(
                "drift evaluation of 20 features over 10,000 rows ≤ 5 ms",
                f"best {value:.2f} (median {micro.median(_DRIFT):.2f}) ms",
                value <= 5.0,
            )
    for entry in report.memory:
        rss, blocks = _memory_growth(entry)
        first, last = entry["samples"][0]["requests"], entry["samples"][-1]["requests"]
        add(
            f"{entry['variant']}: memory flat from {first:,} to {last:,} requests "
            "(|ΔRSS| ≤ 1 MiB, Δblocks ≤ 1,000)",
            f"{rss:+.2f} MiB, {blocks:+,} blocks",
            abs(rss) <= 1.0 and blocks <= 1_000,
        )
    if report.proxy:
        _proxy_targets(report.proxy, add)
    return ["## Targets", "", *_table(["target", "measured", "verdict"], rows)]


def _proxy_targets(r: ProxyResult, add: Callable[[str, str, bool | None], None]) -> None:
    if {"sidecar", "naive-aiohttp"} <= set(r.throughput):
        ratio = r.median("sidecar", "requests_per_s") / r.median("naive-aiohttp", "requests_per_s")
        cpu = r.median("naive-aiohttp", "server_cpu_us") / r.median("sidecar", "server_cpu_us")
        paired = _paired(
            [x.requests_per_s for x in r.throughput["sidecar"]],
            [x.requests_per_s for x in r.throughput["naive-aiohttp"]],
        )
        add(
            "sidecar: ≥ 1.5x the throughput of a naive Starlette + aiohttp proxy",
            f"{ratio:.2f}x (per round {paired}; capacity from proxy CPU: {cpu:.2f}x)",
            ratio >= 1.5,
        )
    if {"sidecar", "nginx"} <= set(r.throughput):
        ratio = r.median("sidecar", "requests_per_s") / r.median("nginx", "requests_per_s")
        cpu = r.median("nginx", "server_cpu_us") / r.median("sidecar", "server_cpu_us")
        add(
            "sidecar / nginx throughput (for reference, no target)",
            f"{ratio:.2f}x (capacity from proxy CPU: {cpu:.2f}x)",
            None,
        )
    pooled = r.latency_pooled
    if {"sidecar", "direct"} <= set(pooled):
        s, d = pooled["sidecar"], pooled["direct"]
        add(
            f"sidecar: added p50 latency < 1 ms at {r.rate_per_s:g} requests/s",
            f"{s['p50_ms'] - d['p50_ms']:+.2f} ms ({d['p50_ms']:.2f} → {s['p50_ms']:.2f})",
            s["p50_ms"] - d["p50_ms"] < 1.0,
        )
        add(
            f"sidecar: added p99 latency < 3 ms at {r.rate_per_s:g} requests/s",
            f"{s['p99_ms'] - d['p99_ms']:+.2f} ms ({d['p99_ms']:.2f} → {s['p99_ms']:.2f})",
            s["p99_ms"] - d["p99_ms"] < 3.0,
        )
    if r.failover:
        failed = sum(f["failed"] for f in r.failover)
        total = sum(f["requests"] for f in r.failover)
        first = [f["first_stable_ms"] for f in r.failover if f["first_stable_ms"] is not None]
        add(
            "sidecar: no client request fails when the primary is killed under load",
            f"{failed} of {total} failed over {len(r.failover)} kill(s); first stable answer "
            f"{', '.join(f'{x:.0f}' for x in first) or '—'} ms after the kill",
            failed == 0,
        )
    if r.memory.get("samples"):
        m = r.memory
        add(
            "sidecar: memory under sustained load (for reference, no target)",
            f"{m['growth_kib'] / 1024:+.1f} MiB over {m['requests']:,} requests "
            f"(max {m['max_kib'] / 1024:.1f} MiB)",
            None,
        )


def render(report: Report) -> str:
    lines = [
        f"# mlwarden benchmarks — {report.mode} run, {report.started}",
        "",
        f"Command: `{report.command or 'python3 -m benchmarks.run'}` "
        f"(took {report.seconds:.0f} s). Figures are medians of alternating rounds on a "
        "shared machine: compare ratios within this run, not absolute figures across runs.",
        "",
    ]
    sections: list[tuple[Any, Callable[[Any], list[str]]]] = [
        (report, _targets),
        (report.inprocess, _inprocess),
        (report.http, _http),
        (report.micro, _micro),
        (report.memory, _memory),
        (report, _checks),
        (report.ablation, _ablation),
        (report.proxy, _proxy),
        (report.profiles, _profiles),
    ]
    for data, section in sections:
        if data:
            lines += section(data)
    if report.errors:
        lines += ["## Parts that failed", ""]
        lines += _table(
            ["part", "error"], [[k, v.replace("\n", " ")[:500]] for k, v in report.errors.items()]
        )
    lines += ["## Environment", ""]
    env_rows = [[k, v] for k, v in report.environment.items()]
    env_rows += [[f"load average ({when})", value] for when, value in report.load.items()]
    for when, ref in report.reference.items():
        env_rows.append(
            [
                f"reference timings ({when})",
                f"empty loop 1M: {ref['empty_loop_1M_ms']:.1f} ms; json.loads of a request body: "
                f"{ref['json_loads_body_us']:.2f} µs",
            ]
        )
    env_rows += [[k, v] for k, v in report.settings.items()]
    lines += _table(["item", "value"], env_rows)
    return "\n".join(lines)
