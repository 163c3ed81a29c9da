"""What ground-truth support costs: request ids and remembered predictions.

``python3 -m benchmarks.ground_truth [--quick]`` prints a markdown table:

- the middleware's in-process cost per request with request ids and remembering on (the
  default) against the same middleware with ``request_id_header=None``, in alternating rounds
  (``benchmarks.inprocess``); the difference is what the feature costs a request, all in:
  the id, the response header and the remembering (done off the request's tail, in batches);
- the feature's own path per request, timed alone (the in-process difference above is within
  that comparison's noise): the id read or made, the response header added, the prediction
  remembered in a full 100,000-item memory (every call also evicts);
- ``PredictionMemory.remember`` alone, the same memory, with 36-byte ids (``bytes``, as the
  middleware keeps them);
- the memory held per remembered prediction, measured with tracemalloc over 100,000 of them
  (class predictions and numeric ones, 36-byte ids), ids included; and once the memory has
  turned over (100,000 more, each evicting one: the index's dict at its steady size, the
  evicted ids kept to tell ``expired`` labels included).

``remember`` stages predictions and puts them into the memory in batches: every timing ends
with a read of the memory (``len``), which puts the last staged ones in, so the figures are
amortised over whole batches.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
import uuid

from benchmarks import inprocess, workload

__all__ = ["main", "memory_per_item", "remember_ns"]


def remember_ns(items: int, calls: int, repeats: int) -> float:
    """Median ns per ``remember`` on a full memory of ``items`` (each call evicts one)."""
    from mlwarden.middleware.memory import PredictionMemory

    ids = [str(uuid.uuid4()).encode() for _ in range(items + calls)]
    results = []
    for _ in range(repeats):
        memory = PredictionMemory(max_items=items)
        for rid in ids[:items]:
            memory.remember(rid, "ok", 0.9, "1")
        len(memory)  # full, nothing staged
        batch = ids[items:]
        started = time.perf_counter_ns()
        for rid in batch:
            memory.remember(rid, "ok", 0.9, "1")
        len(memory)  # the last staged batch goes in: counted
        results.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(results)


def request_path_ns(items: int, calls: int, repeats: int) -> float:
    """Median ns per request of what the feature adds: id, response header, remembering."""
    from mlwarden.middleware.exchange import Exchange
    from mlwarden.middleware.feedback import Feedback
    from mlwarden.middleware.memory import PredictionMemory
    from mlwarden.middleware.request_ids import RequestIds

    headers = [
        (b"host", b"model:8000"),
        (b"user-agent", b"python-httpx/0.28"),
        (b"accept", b"*/*"),
        (b"content-type", b"application/json"),
        (b"content-length", b"120"),
    ]
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
    }

    async def send(message: object) -> None:
        return None

    results = []
    for _ in range(repeats):
        ids = RequestIds("x-request-id")
        feedback = Feedback(model="m", version="1", memory=PredictionMemory(max_items=items))
        for _ in range(items):  # full: every request below also evicts one
            feedback.remember(ids.for_request(headers), ["ok"], [], [0.9])
        len(feedback.memory)  # nothing staged
        exchange = Exchange(send, send, model=True, max_request=1, max_response=1)  # type: ignore[arg-type]
        exchange.request_id_header = ids.header
        started = time.perf_counter_ns()
        for _ in range(calls):
            rid = ids.for_request(headers)
            exchange.request_id = rid
            exchange._with_request_id(start)
            feedback.remember(rid, ["ok"], [], [0.9])
        len(feedback.memory)  # the last staged batch goes in: counted
        results.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(results)


def memory_per_item(items: int, prediction: object, *, turned_over: bool = False) -> float:
    """Bytes held per remembered prediction (36-byte ids included), by tracemalloc.

    ``turned_over``: after ``items`` more, each evicting one (the index's dict has grown to
    its steady size; the evicted ids kept for ``expired`` labels are counted too).
    """
    from mlwarden.middleware.memory import PredictionMemory

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memory = PredictionMemory(max_items=items)
    for i in range((2 if turned_over else 1) * items):
        memory.remember(str(uuid.UUID(int=i)).encode(), prediction, 0.9, "1")  # type: ignore[arg-type]
    assert len(memory) == items  # and nothing staged any more
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, per_round = (20, 100) if args.quick else (80, 100)
    result = inprocess.run_inprocess(
        per_round=per_round,
        rounds=rounds,
        warmup=500,
        names=("mlwarden", workload.NO_REQUEST_IDS),
        progress=lambda m: print(m, file=sys.stderr),
    )
    with_ids = result.us_per_request["mlwarden"]
    without = result.us_per_request[workload.NO_REQUEST_IDS]
    paired = [a - b for a, b in zip(with_ids, without, strict=True)]
    rows = [
        ("in-process CPU per request, request ids on", f"{statistics.median(with_ids):.1f} µs"),
        ("in-process CPU per request, request ids off", f"{statistics.median(without):.1f} µs"),
        (
            "cost of request ids + remembering, per request (paired rounds, median)",
            f"{statistics.median(paired):+.2f} µs (rounds: "
            f"{min(paired):+.1f} to {max(paired):+.1f})",
        ),
        (
            "the feature's path per request: id, header, remembering (full 100,000, amortised)",
            f"{request_path_ns(100_000, 100_000, 3 if args.quick else 7):.0f} ns",
        ),
        (
            "remember() alone on a full 100,000-item memory, 36-byte ids (evicting, amortised)",
            f"{remember_ns(100_000, 100_000, 3 if args.quick else 7):.0f} ns",
        ),
        (
            "memory per remembered class prediction (36-byte id included)",
            f"{memory_per_item(100_000, 'fraud'):.0f} bytes",
        ),
        (
            "memory per remembered numeric prediction (36-byte id included)",
            f"{memory_per_item(100_000, 0.731):.0f} bytes",
        ),
        (
            "memory per held class prediction once turned over (evicted ids kept included)",
            f"{memory_per_item(100_000, 'fraud', turned_over=True):.0f} bytes",
        ),
    ]
    print("| figure | value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
