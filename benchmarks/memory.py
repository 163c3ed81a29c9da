"""Memory independent of traffic: one variant, in a fresh process, measured at checkpoints.

``python3 -m benchmarks.memory VARIANT 20000 100000`` drives the variant in-process (as in
:mod:`benchmarks.inprocess`) and prints one JSON object: at every checkpoint (requests sent so
far) the RSS, the number of memory blocks Python's allocator holds
(``sys.getallocatedblocks``, which moves with every leaked object), and the number of
gc-tracked objects, each after a full collection. Every bounded structure of the middleware
(10,000-row feature windows, 2,000-request health window) is full well before the first
checkpoint, so growth between checkpoints means memory that grows with traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from typing import Any

from benchmarks import inprocess, workload

__all__ = ["measure"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample(sent: int) -> dict[str, int]:
    gc.collect()
    return {
        "requests": sent,
        "rss_bytes": _rss_bytes(),
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
    }


async def _measure(name: str, checkpoints: list[int]) -> dict[str, Any]:
    driver = inprocess.Driver(workload.build(name), workload.json_bodies(4096, seed=7))
    samples = []
    try:
        await driver.startup()
        sent = 0
        for checkpoint in sorted(checkpoints):
            while sent < checkpoint:
                step = min(2_000, checkpoint - sent)
                await driver.run(step)
                sent += step
                await asyncio.sleep(0)
            if driver.variant.provider is not None:
                await asyncio.to_thread(driver.variant.provider.force_flush)
            samples.append(_sample(sent))
        counts = workload.mlwarden_counts(driver.variant)
    finally:
        try:
            await driver.shutdown()
        finally:
            driver.variant.close()
    return {"variant": name, "samples": samples, "failures": driver.failures, "checks": counts}


def measure(name: str, checkpoints: list[int]) -> dict[str, Any]:
    return dict(inprocess.run_async(_measure(name, checkpoints)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=workload.VARIANTS)
    parser.add_argument("checkpoints", type=int, nargs="+")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.variant, args.checkpoints)))


if __name__ == "__main__":
    main()
