"""How long a healing ledger append holds the calling thread (the event loop, in the sidecar).

Two paths, on a fresh ledger file in a temporary directory (the system's, or ``--dir``), with
fsync on, as the sidecar runs by default:

- ``inline``: the line written and fsynced on the calling thread (``LedgerFile.write``, what
  an append did before the writer thread);
- ``queued``: ``Ledger.append``, which keeps the record in memory, tells the listeners and
  queues the line for the writer thread (group commit); the queue is flushed at the end and
  its fsyncs counted.

Each figure is wall time on the calling thread per append, median and p99 over ``--count``
appends made one after another (a storm: the worst case for the inline path).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mlwarden.sidecar.healing.ledger import Ledger
from mlwarden.sidecar.healing.ledger_files import LedgerFile
from mlwarden.sidecar.healing.ledger_records import LedgerRecord

__all__ = ["measure"]


def _summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "median_ms": round(statistics.median(times) * 1e3, 4),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3, 4),
    }


def measure(count: int, directory: str | None = None) -> dict[str, Any]:
    """Both paths' figures for ``count`` appends each."""
    out: dict[str, Any] = {"count": count}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        stats: Counter[str] = Counter()
        file = LedgerFile(
            Path(tmp) / "inline.jsonl", max_bytes=64 << 20, backups=1, fsync=True, stats=stats
        )
        times = []
        try:
            for i in range(count):
                rec = LedgerRecord(action="fallback", target="primary", signals={"i": i}, at=1.0)
                begin = time.perf_counter()
                file.write(rec.to_json().encode() + b"\n")
                times.append(time.perf_counter() - begin)
        finally:
            file.close()
        out["inline"] = _summary(times)

        times = []
        with Ledger(Path(tmp) / "queued.jsonl", max_bytes=64 << 20, fsync=True) as ledger:
            for i in range(count):
                begin = time.perf_counter()
                ledger.append("fallback", "primary", signals={"i": i})
                times.append(time.perf_counter() - begin)
            ledger.flush()
            stats_after = ledger.stats()
        out["queued"] = {
            **_summary(times),
            "fsyncs": stats_after["fsyncs"],
            "dropped": stats_after["dropped"],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2_000, help="appends per path (2,000)")
    parser.add_argument("--dir", default=None, help="where the ledger files go (a temp dir)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.count, args.dir)))


if __name__ == "__main__":
    main()
