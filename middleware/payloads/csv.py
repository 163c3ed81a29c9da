"""CSV bodies (``text/csv``, ``application/csv``).

The first row is a header when any of its cells names a baseline feature or is neither a
number nor empty; the columns are then taken by name, else by position in the baseline's order.
Cells stay strings (an empty cell is missing): the feature windows read numbers from them.
At most ``max_rows`` rows are read (one more when the first may be a header).
"""

from __future__ import annotations

import csv
import io

from mlwarden.middleware.bodies import decode_text, payload_error
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch

__all__ = ["from_csv"]


def from_csv(b: BatchBuilder, body: bytes) -> FeatureBatch:
    """The rows of a CSV body, with or without a header row."""
    text = decode_text(body)
    limit = b.max_rows + 1  # one more than allowed: the first row may be a header
    rows: list[list[str]] = []
    try:
        for row in csv.reader(io.StringIO(text, newline=""), strict=True):
            if row:  # blank lines carry nothing
                rows.append(row)
                if len(rows) > limit:
                    break
    except csv.Error as exc:
        raise payload_error("invalid_csv", str(exc)) from exc
    if not rows:
        raise payload_error("empty_body", "the CSV body has no rows")
    feature_set = b.feature_set
    first = rows[0]
    has_header = any(c.strip() in feature_set or not _is_number_or_empty(c) for c in first)
    if not has_header:
        b.check_rows(len(rows))
        return _columns(b, rows, list(b.features), "positional")
    data = rows[1:]
    b.check_rows(len(data))
    return _columns(b, data, [c.strip() for c in first], "header")


def _columns(b: BatchBuilder, data: list[list[str]], names: list[str], layout: str) -> FeatureBatch:
    width = len(names)
    lengths = set(map(len, data))
    if b.count_only:
        return FeatureBatch(len(data), {}, "csv", 0)
    if data and lengths != {width}:
        raise payload_error(
            "shape_mismatch", f"CSV rows of {sorted(lengths)[:5]} cells, {layout} has {width}"
        )
    position: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in b.feature_set:
            position.setdefault(name, i)
    n = len(data)
    if not n:
        return b.empty("csv")
    if not position:
        raise payload_error("no_known_features", "no baseline feature in the CSV header")
    by_position = list(zip(*data, strict=True))
    columns: dict[str, list[object]] = {
        f: [c or None for c in by_position[position[f]]] if f in position else [None] * n
        for f in b.features
    }
    return FeatureBatch(n, columns, "csv", (width - len(position)) * n)


def _is_number_or_empty(cell: str) -> bool:
    if not cell.strip():
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True
