"""Where the sidecar spends its CPU under load: a sampling profile of the real process.

``python3 -m benchmarks.proxy_profile [--seconds 10] [--connections 32] [--top 25]`` starts the
proxy benchmark's upstreams and a sidecar as users start it (``mlwarden sidecar --config``,
every resilience feature at its default), drives it with ``wrk`` and attaches ``py-spy record``
(``pip install py-spy``; ``--native`` so uvloop's and httptools' C frames count too) to the
sidecar's PID. Reported: the share of samples by own frame (the hottest functions) and by layer
(the serving layer, our request path, the upstream client, metrics, the event loop), so that a
change to the data plane can be judged by where the time went, not by one throughput figure.
Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import workload
from benchmarks.over_http import _lua_script, pinning
from benchmarks.proxy import _start_sidecar, _start_upstream, _stopping, _wrk_once

__all__ = ["main"]

# First match wins: (layer, substring of the frame's file or function).
_LAYERS: tuple[tuple[str, str], ...] = (
    ("metrics (prometheus_client)", "prometheus_client"),
    ("tracing (opentelemetry)", "opentelemetry"),
    ("serving layer (uvicorn)", "uvicorn/"),
    ("serving layer (mlwarden)", "sidecar/serving"),
    ("serving layer (mlwarden)", "sidecar/edge"),
    ("serving layer (mlwarden)", "sidecar/server"),
    ("upstream client", "sidecar/upstream"),
    ("resilience (breaker, retry)", "sidecar/resilience"),
    ("routing", "sidecar/routing"),
    ("request path (proxy, exchange, forwarding)", "sidecar/proxy"),
    ("request path (proxy, exchange, forwarding)", "sidecar/exchange"),
    ("request path (proxy, exchange, forwarding)", "sidecar/forwarding"),
    ("request path (proxy, exchange, forwarding)", "sidecar/give_up"),
    ("listeners and metrics (mlwarden)", "sidecar/metrics"),
    ("listeners and metrics (mlwarden)", "sidecar/proxy_metrics"),
    ("listeners and metrics (mlwarden)", "sidecar/listeners"),
    ("listeners and metrics (mlwarden)", "sidecar/signals"),
    ("asyncio / uvloop", "asyncio/"),
    ("asyncio / uvloop", "uvloop"),
    ("httptools", "httptools"),
)


def _layer(frame: str) -> str:
    for layer, needle in _LAYERS:
        if needle in frame:
            return layer
    return "other (interpreter, libc, kernel)"


def _function(frame: str) -> str:
    """``name (file:line)`` without its line: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def _inclusive(path: Path) -> collections.Counter[str]:
    """Samples with each function anywhere on the stack (its time and its callees')."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack:
            for function in {_function(f) for f in stack.split(";")}:
                counts[function] += int(count_text)
    return counts


def _collapse(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Own-frame and layer counts from py-spy's collapsed stacks (``frame;frame;... count``).

    A layer is charged with a sample when it is the innermost *Python* frame of ours or of a
    library named above, so C time under a Python call is charged to its caller's layer.
    """
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in reversed(frames):
            layer = _layer(frame)
            if not layer.startswith("other"):
                layers[layer] += count
                break
        else:
            layers["other (interpreter, libc, kernel)"] += count
    return own, layers, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="C frames too (slower sampling)")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="the sidecar alone on core 0 (upstreams beside wrk on core 1), so that the"
        " sampled wall time is the sidecar's CPU time, not time it waited preempted",
    )
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    server_prefix, load_prefix = pinning()
    bodies = workload.json_bodies(256, seed=2)
    with tempfile.TemporaryDirectory(prefix="mlwarden-proxy-profile-") as tmp:
        directory = Path(tmp)
        script = _lua_script(bodies, directory)
        out = directory / "profile.txt"
        with _stopping() as started:
            upstream_prefix = load_prefix if args.alone else server_prefix
            primary = _start_upstream("primary", upstream_prefix, directory)
            stable = _start_upstream("stable", upstream_prefix, directory)
            started += [primary, stable]
            sidecar, _admin = _start_sidecar("sidecar", primary, stable, server_prefix, directory)
            started.append(sidecar)
            for proc in started:
                proc.wait_ready(bodies[0])
            _wrk_once(sidecar, primary, script, load_prefix, connections=32, duration_s=3)
            spy_argv = [spy, "record", "--pid", str(sidecar.pid), "--format", "raw"]
            spy_argv += ["--rate", "250", "--duration", f"{args.seconds + 1:g}"]
            spy_argv += ["--output", str(out), "--nonblocking"]
            spy_argv += ["--native"] if args.native else []
            record = subprocess.Popen(
                spy_argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(0.5)
            run, upstream_us = _wrk_once(
                sidecar,
                primary,
                script,
                load_prefix,
                connections=args.connections,
                duration_s=args.seconds,
            )
            try:
                _, err = record.communicate(timeout=args.seconds + 30)
            except subprocess.TimeoutExpired:
                record.kill()
                _, err = record.communicate()
            if not out.exists():
                print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)
                return 1
        own, layers, total = _collapse(out)
        inclusive = _inclusive(out)
        roots: collections.Counter[str] = collections.Counter()
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            roots[";".join(stack.split(";")[:3])] += int(n)
        for root, n in roots.most_common(8):
            print(f"root {100 * n / total:5.1f}% {root}")
    print(
        f"sidecar under wrk -c{args.connections} for {args.seconds:g} s: "
        f"{run.requests_per_s:,.0f} req/s, proxy CPU {run.server_cpu_us:.0f} µs per request "
        f"(upstream {upstream_us:.0f} µs); {total} samples"
    )
    print("\nby layer (innermost frame of ours or of a named library):")
    for layer, count in layers.most_common():
        print(f"  {100 * count / total:5.1f}%  {layer}")
    print(f"\nmlwarden functions by inclusive share (top {args.top}):")
    ours = [(f, c) for f, c in inclusive.most_common() if "sidecar/" in f]
    for function, count in ours[: args.top]:
        print(f"  {100 * count / total:5.1f}%  {function}")
    print(f"\nhottest own frames (top {args.top}):")
    for frame, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
