"""The serving layer chosen by measurement: the same sidecar under three HTTP servers, and nginx.

``python3 -m benchmarks.serving_layers [--rounds 3] [--seconds 8] [--connections 32]`` starts
one upstream pair (the proxy benchmark's primary and stable) and, in front of them:

- ``mlwarden``: ``mlwarden sidecar --config FILE``, the sidecar's own server
  (:mod:`mlwarden.sidecar.server`) with its edge limits;
- ``uvicorn``: the same sidecar's proxy under uvicorn (httptools, uvloop), as served before;
- ``granian``: the same proxy under granian (Rust, hyper; ASGI interface, uvloop, one
  worker, one runtime thread);
- ``floor``: the sidecar's server and upstream client with no decisions at all
  (:mod:`benchmarks.floor_proxy`): what any proxy of these parts costs before it decides;
- ``nginx``: ``proxy_pass`` with upstream keep-alive (the reference of the targets).

Servers on core 0 (the upstreams too), wrk on core 1; rounds alternate between the variants
with the order rotating. Reported: median throughput, proxy CPU µs per request (all the
proxy's processes and threads, from ``/proc``) and each against nginx. Every process is
stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import workload
from benchmarks.loopback import free_port
from benchmarks.over_http import _lua_script, pinning
from benchmarks.proxy import (
    _children,
    _Process,
    _start_nginx,
    _start_sidecar,
    _start_upstream,
    _stopping,
    _wait_idle,
    _wrk_once,
    sidecar_config_text,
)

__all__ = ["main"]

VARIANTS = ("mlwarden", "uvicorn", "granian", "floor", "nginx")


def _start_other(
    server: str, primary: _Process, stable: _Process, prefix: list[str], directory: Path
) -> _Process:
    port, admin = free_port(), free_port()
    config = directory / f"{server}.yaml"
    config.write_text(sidecar_config_text(primary, stable, port, admin))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWARDEN")}
    env.update(PYTHONUNBUFFERED="1", MLWARDEN_BENCH_SIDECAR_CONFIG=str(config))
    if server == "uvicorn":
        argv = [*prefix, sys.executable, "-m", "benchmarks.serve_sidecar", "uvicorn"]
    else:
        granian = str(Path(sys.executable).with_name("granian"))
        argv = [
            *prefix, granian, "--interface", "asgi", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--runtime-threads", "1", "--loop",
            "uvloop", "--no-ws", "--log-level", "warning",
            "benchmarks.serve_sidecar:proxy_app",
        ]  # fmt: skip
    return _Process(server, argv, directory, port=port, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    server_prefix, load_prefix = pinning()
    bodies = workload.json_bodies(256, seed=2)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="mlwarden-serving-") as tmp:
        directory = Path(tmp)
        script = _lua_script(bodies, directory)
        with _stopping() as started:
            primary = _start_upstream("primary", server_prefix, directory)
            stable = _start_upstream("stable", server_prefix, directory)
            started += [primary, stable]
            targets: dict[str, _Process] = {}
            targets["mlwarden"], _ = _start_sidecar(
                "mlwarden", primary, stable, server_prefix, directory
            )
            for server in ("uvicorn", "granian"):
                targets[server] = _start_other(server, primary, stable, server_prefix, directory)
            port = free_port()
            targets["floor"] = _Process(
                "floor",
                [*server_prefix, sys.executable, "-m", "benchmarks.floor_proxy", str(port),
                 primary.url],
                directory,
                port=port,
            )  # fmt: skip
            targets["nginx"] = _start_nginx(primary, server_prefix, directory)
            started += list(targets.values())
            for proc in started:
                proc.wait_ready(bodies[0])
            for proc in targets.values():
                proc.children = _children(proc.pid)  # nginx's and granian's workers
                for child in list(proc.children):
                    proc.children += _children(child)
            for target in targets.values():  # warm-up
                _wrk_once(target, primary, script, load_prefix, connections=32, duration_s=2)
            for r in range(args.rounds):
                order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                for name in order:
                    _wait_idle(targets[name].pids())
                    run, _ = _wrk_once(
                        targets[name],
                        primary,
                        script,
                        load_prefix,
                        connections=args.connections,
                        duration_s=args.seconds,
                    )
                    if run.non_2xx or run.socket_errors:
                        print(f"{name}: {run.non_2xx} non-2xx, {run.socket_errors} socket errors")
                    runs[name].append((run.requests_per_s, run.server_cpu_us))
                    print(
                        f"round {r + 1} {name}: {run.requests_per_s:,.0f} req/s, "
                        f"{run.server_cpu_us:.0f} µs CPU per request",
                        flush=True,
                    )
    nginx_rps = statistics.median(r for r, _ in runs["nginx"])
    nginx_cpu = statistics.median(c for _, c in runs["nginx"])
    print(
        f"\n{args.rounds} rounds of wrk -t1 -c{args.connections} {args.seconds:g} s; servers and"
        " upstreams on core 0, wrk on core 1\n"
    )
    print("| server | throughput | vs nginx | proxy CPU per request | vs nginx |")
    print("| --- | --- | --- | --- | --- |")
    for name in VARIANTS:
        rps = statistics.median(r for r, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        print(
            f"| {name} | {rps:,.0f}/s | {rps / nginx_rps:.2f} | {cpu:.0f} µs | "
            f"{cpu / nginx_cpu:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
