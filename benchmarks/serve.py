"""Serve one variant with uvicorn on loopback: ``python3 -m benchmarks.serve VARIANT PORT``.

One worker, uvloop and httptools when installed, no access log. Started (and stopped by PID)
by :mod:`benchmarks.http`; usable alone to poke at a variant.
"""

from __future__ import annotations

import argparse
import importlib.util

import uvicorn

from benchmarks import workload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=workload.VARIANTS)
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    variant = workload.build(args.variant)
    config = uvicorn.Config(
        variant.app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_level="warning",
        workers=1,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        variant.close()


if __name__ == "__main__":
    main()
