"""The ``mlwarden`` command line: ``sidecar``, ``demo``, ``baseline build``, ``baseline check``.

The entry point is installed with the middleware alone, where ``baseline`` and ``--version``
must work: this module imports only the middleware and the standard library at import time;
``sidecar`` and ``demo`` import their parts when they run, after checking that the ``sidecar``
extra is there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mlwarden.middleware.errors import ConfigError

__all__ = ["main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlwarden")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlwarden",
        description="Keeps model-serving endpoints healthy without a person in the loop.",
    )
    parser.add_argument("--version", action="version", version=f"mlwarden {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="the whole self-healing story on loopback: two model versions, the sidecar, "
        "faults, healing",
        description="Trains a stable (v1) and a candidate (v2) churn model, serves each with "
        "the middleware, puts the sidecar in front (canary split, shadow copy, policies) and "
        "sends traffic through five phases: normal, candidate errors, input drift, primary "
        "outage, recovery. Shows the healing live and ends with a summary table; exits 1 if "
        "a phase did not heal.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="shorter phases (about a minute in all; what CI runs)"
    )
    demo.add_argument(
        "--prometheus",
        action="store_true",
        help="also start a local Prometheus scraping everything, when installed",
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    demo.add_argument(
        "--rate", type=float, default=None, help="client requests per second (default: 40)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (logs, ledger, configs) after a healed run",
    )
    view = demo.add_mutually_exclusive_group()
    view.add_argument(
        "--live",
        dest="live",
        action="store_true",
        default=None,
        help="redraw the view in place (default on a terminal)",
    )
    view.add_argument(
        "--log",
        dest="live",
        action="store_false",
        help="print events as lines (default when not on a terminal)",
    )

    sidecar = sub.add_parser(
        "sidecar",
        help="run the sidecar proxy in front of the model versions",
        description="Serves the proxy on the configured listen address: retries, circuit "
        "breakers, health checks and fallback routing between the configured upstreams; "
        "and the admin port: /metrics, /-/healthy, /-/ready, /-/status, token-guarded mutations.",
    )
    sidecar.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the sidecar YAML file (MLWARDEN__A__B=value overrides a key)",
    )
    sidecar.add_argument("--check", action="store_true", help="validate the configuration and exit")

    baseline = sub.add_parser("baseline", help="build or check a baseline profile")
    bsub = baseline.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    build = bsub.add_parser(
        "build", help="profile training data (CSV, Parquet or .npz) into baseline JSON"
    )
    build.add_argument("data", type=Path, help="training data: .csv, .parquet or .npz")
    build.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    build.add_argument(
        "--categorical", default="", help="comma-separated columns to treat as categorical"
    )
    build.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="COLS",
        help="comma-separated columns not to profile, such as ids and timestamps (repeatable)",
    )
    build.add_argument(
        "--target",
        metavar="COL",
        help="the label column, not profiled: requests never carry it",
    )
    build.add_argument("--bins", type=int, default=10, help="quantile bins for PSI (default: 10)")
    build.add_argument(
        "--max-categories",
        type=int,
        default=50,
        help="categories kept per categorical feature (default: 50)",
    )
    check = bsub.add_parser("check", help="validate a baseline JSON file")
    check.add_argument("path", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("sidecar", "demo") and (missing := _missing_sidecar_packages()):
        print(
            f"mlwarden {args.command} needs the sidecar extra: pip install 'mlwarden[sidecar]' "
            f"(missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "sidecar":
            return _sidecar(args.config, check=args.check)
        if args.command == "demo":
            from mlwarden.sidecar.demo.story import run_demo

            if args.rate is not None and not 1 <= args.rate <= 500:
                print(
                    "mlwarden demo: --rate: expected 1 to 500 requests per second", file=sys.stderr
                )
                return 2
            return run_demo(
                quick=args.quick,
                seed=args.seed,
                prometheus=args.prometheus,
                live=args.live,
                rate_per_s=args.rate,
                keep=args.keep,
            )
        if args.baseline_command == "build":
            return _baseline_build(args)
        return _baseline_check(args.path)
    except ConfigError as exc:
        print(f"mlwarden: {exc}", file=sys.stderr)
        return 2


# The distributions the sidecar and the demo import whatever their configuration, by the module
# they provide. The optional ones (OTLP, Redis, InfluxDB, uvloop) are checked where a setting
# asks for them, with a message naming the setting.
_SIDECAR_MODULES = {
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "httpx": "httpx",
    "httptools": "httptools",
    "pybreaker": "pybreaker",
    "yaml": "pyyaml",
}


def _missing_sidecar_packages() -> list[str]:
    """The sidecar's required distributions that are not installed (found without importing)."""
    from importlib.util import find_spec

    return [dist for module, dist in _SIDECAR_MODULES.items() if find_spec(module) is None]


def _sidecar(path: Path, *, check: bool) -> int:
    from mlwarden.sidecar.settings import load_sidecar_config

    config = load_sidecar_config(path)
    if check:
        from mlwarden.sidecar.tracing import otlp_traces_url

        if otlp_traces_url(config.tracing, os.environ) is not None:
            _require_otlp_exporter()
        if config.ledger.influx_url is not None:
            from mlwarden.middleware.influx import missing_client

            if (problem := missing_client("ledger.influx_url")) is not None:
                raise ConfigError([problem])
        order = " → ".join(config.routing.order)
        print(
            f"{path}: valid; routing {order}; listening on "
            f"{config.listen.host}:{config.listen.port}"
        )
        return 0
    import uvicorn
    from prometheus_client import REGISTRY

    from mlwarden.sidecar.admin import create_admin_app
    from mlwarden.sidecar.app import Sidecar
    from mlwarden.sidecar.edge import edge_limits
    from mlwarden.sidecar.forwarding import SERVER_HEADER
    from mlwarden.sidecar.server import HttpServer
    from mlwarden.sidecar.serving import DrainingServer, StoppableServer, serve_until_signalled
    from mlwarden.sidecar.tracing import configure_tracing

    tracer_provider = configure_tracing(config.tracing, os.environ)
    _log_to_stderr()

    async def serve() -> None:
        sidecar = Sidecar(config, registry=REGISTRY, tracer_provider=tracer_provider)
        # Started here, before serving, and stopped here: the proxy's server runs without
        # lifespan so that the start and the stop happen once each.
        await sidecar.start()
        try:
            admin = create_admin_app(sidecar)
            # proxy_headers off on the admin port: it logs and records (in the ledger) the
            # client's address as a mutation's actor; with it on, uvicorn would replace that
            # address with whatever a client sent in X-Forwarded-For. (The public port's
            # server reads no forwarding header: the proxy appends x-forwarded-for itself.)
            common: dict[str, object] = {
                "access_log": False,
                "log_level": "info",
                "proxy_headers": False,
            }
            servers: list[StoppableServer] = [
                # The public port: the sidecar's own server, holding the edge's limits
                # (mlwarden.sidecar.server); one date and one server header per answer (the
                # upstream's are not passed on).
                HttpServer(
                    sidecar.proxy,
                    host=config.listen.host,
                    port=config.listen.port,
                    limits=edge_limits(config),
                    counts=sidecar.edge,
                    drain_timeout_s=config.timeouts.drain_timeout_s,
                    default_headers=[SERVER_HEADER],
                ),
                DrainingServer(
                    uvicorn.Config(
                        admin,
                        host=config.admin.host,
                        port=config.admin.port,
                        timeout_graceful_shutdown=config.timeouts.drain_timeout_s,
                        **common,
                    )
                ),
            ]
            await serve_until_signalled(servers)
        finally:
            await sidecar.aclose()  # the ledger and the exporters, after the drain

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve())
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # flushes the spans still queued
    return 0


def _log_to_stderr() -> None:
    """The sidecar's own records (``mlwarden.*``, info and above) on stderr beside uvicorn's:
    without a handler only warnings would reach it, through logging's last resort."""
    logger = logging.getLogger("mlwarden")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (the ``sidecar`` extra), else asyncio's. uvicorn picks
    it itself only in ``Server.run``; the sidecar runs two servers in one loop of its own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _require_otlp_exporter() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        raise ConfigError(
            [
                "tracing.otlp_endpoint: exporting traces needs the OTLP exporter: "
                "pip install 'mlwarden[otlp]'"
            ]
        ) from None


# Column names that usually hold the label (compared case-insensitively). Kept short on
# purpose: the warning is a hint for the common mistake, not a guess at every label.
_LABEL_LIKE_NAMES = ("target", "label", "y", "class", "outcome")


def _names(values: Sequence[str]) -> list[str]:
    """Comma-separated names from one or more options, in order, each once."""
    names = (n.strip() for value in values for n in value.split(","))
    return list(dict.fromkeys(n for n in names if n))


def _baseline_build(args: argparse.Namespace) -> int:
    from mlwarden.middleware.baseline import build_baseline_file

    categorical = _names([args.categorical])
    exclude = _names(args.exclude)
    profile = build_baseline_file(
        args.data,
        args.out,
        bins=args.bins,
        max_categories=args.max_categories,
        categorical=categorical or None,
        exclude=exclude,
        target=args.target,
    )
    kinds = ", ".join(f"{f.name} ({f.kind})" for f in profile.features)
    numeric = sum(f.kind == "numeric" for f in profile.features)
    counts = f"{numeric} numeric, {len(profile.features) - numeric} categorical"
    skipped = [f"{args.target} (target)"] if args.target is not None else []
    skipped += [f"{name} (excluded)" for name in exclude if name != args.target]
    print(
        f"wrote {args.out}: {profile.rows} rows, {len(profile.features)} features ({counts}): "
        f"{kinds}; skipped: {', '.join(skipped) or 'none'}"
    )
    if args.target is None:
        for name in profile.names:
            if name.lower() in _LABEL_LIKE_NAMES:
                print(
                    f"mlwarden baseline build: warning: column {name!r} looks like a label and "
                    "was profiled as a feature; requests never carry the label, so it would "
                    f"report as missing on every request; pass --target {name} if it is the label",
                    file=sys.stderr,
                )
    return 0


def _baseline_check(path: Path) -> int:
    from mlwarden.middleware.baseline import load_baseline

    profile = load_baseline(path)
    print(f"{path}: valid, {len(profile.features)} features from {profile.rows} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
