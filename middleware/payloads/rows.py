"""Feature rows of one request, and the row/column machinery every request format shares.

:class:`FeatureBatch` (by column) and :class:`FeatureRow` (one object of named features, the
common request) are what the parser hands to the feature windows. :class:`BatchBuilder` holds
the baseline's feature names and the row limit, and builds batches from the shapes that every
format carries inside its envelope: a list of objects (records), a list of positional rows,
pandas columns (``{"f1": [..]}`` or ``{"f1": {"0": ..}}``), or one object as one row. Columns
are named only by the baseline, never by the payload, and row counts are checked before any
column is built.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from mlwarden.middleware.bodies import (
    MISSING,
    SCALAR_TYPES,
    SEQUENCE_TYPES,
    Missing,
    payload_error,
)

__all__ = ["BatchBuilder", "FeatureBatch", "FeatureRow", "clean", "column_length"]


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Feature rows of one request, by column.

    ``columns`` holds only features the baseline names (never names from the payload), each a
    list of ``rows`` raw values as they came (int, float, str, bool or None for missing).
    """

    rows: int
    columns: dict[str, list[object]]
    format: str
    unknown_features: int = 0


class FeatureRow:
    """One row of named features: the common one-object request, without per-feature lists.

    It reads like a :class:`FeatureBatch` of one row (``rows``, ``columns``, ``format``,
    ``unknown_features``); ``values`` holds the row in the order of ``names`` (the parser's
    features), so that the windows can take it without building and unpacking 20 lists.
    """

    __slots__ = ("format", "names", "unknown_features", "values")
    rows = 1

    def __init__(
        self,
        names: tuple[str, ...],
        values: tuple[object, ...],
        format: str,
        unknown_features: int = 0,
    ) -> None:
        self.names = names
        self.values = values
        self.format = format
        self.unknown_features = unknown_features

    @property
    def columns(self) -> dict[str, list[object]]:
        return {name: [value] for name, value in zip(self.names, self.values, strict=True)}

    def __repr__(self) -> str:
        return f"FeatureRow({dict(zip(self.names, self.values, strict=True))!r}, {self.format!r})"


def _coerce(value: object) -> object:
    """A non-plain value → a plain scalar, or None (containers, missing, unknown types)."""
    if value.__class__ in (list, dict, tuple, Missing):
        return None
    if isinstance(value, np.generic):  # numpy scalars from a user extractor
        value = value.item()
        return value if value.__class__ in SCALAR_TYPES else None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def clean(column: Sequence[object]) -> list[object]:
    """A column of plain scalars: other values coerced (numpy scalars) or None (containers)."""
    if set(map(type, column)) <= SCALAR_TYPES:  # the usual case: one C pass, one C copy
        return list(column)
    return [v if type(v) in SCALAR_TYPES else _coerce(v) for v in column]


def column_length(obj: Mapping[str, Any]) -> int:
    """Rows of an object whose values are all equally long columns, else 1 (one row)."""
    lengths = {len(v) if v.__class__ in (list, dict) else -1 for v in obj.values()}
    if len(lengths) == 1:
        n = lengths.pop()
        if n >= 0:
            return n
    return 1


class BatchBuilder:
    """The baseline's features and the row limit; builds batches from the shared shapes.

    Without features (no baseline) it still reads a payload's shape and counts its rows
    (``count_only``); it then returns no columns and, as every name would be unknown, counts
    none. The attributes are read by every format module and never change.
    """

    __slots__ = ("count_only", "feature_set", "features", "getter", "max_rows")

    def __init__(self, features: tuple[str, ...], max_rows: int) -> None:
        self.features = features
        self.feature_set = frozenset(features)
        self.count_only = not features
        self.max_rows = max_rows
        # itemgetter fetches every feature of a complete object in one C call (the hot path).
        self.getter: Callable[[Any], tuple[Any, ...]]
        if len(features) > 1:
            self.getter = itemgetter(*features)
        elif features:
            getter = itemgetter(*features)
            self.getter = lambda obj: (getter(obj),)
        else:
            self.getter = lambda obj: ()

    def check_rows(self, n: int) -> None:
        if n > self.max_rows:
            raise payload_error("too_many_rows", f"{n} rows, at most {self.max_rows}")

    def empty(self, fmt: str) -> FeatureBatch:
        """A batch of no rows (an empty list is a valid request)."""
        return FeatureBatch(0, {f: [] for f in self.features}, fmt, 0)

    def from_columns_or_row(
        self, obj: Mapping[str, Any], fmt: str, *, columns_only: bool
    ) -> FeatureBatch:
        """Pandas column orientation, or (unless ``columns_only``) one object as one row."""
        features = self.features
        get = obj.get
        values = [get(f, MISSING) for f in features]
        known = len(values) - values.count(MISSING)
        if not known:
            if self.count_only:
                return FeatureBatch(column_length(obj), {}, fmt, 0)
            raise payload_error("no_known_features", "no baseline feature is named in the payload")
        kinds = set(map(type, values))
        kinds.discard(Missing)
        unknown_names = len(obj) - known
        if kinds <= SEQUENCE_TYPES:  # {"f1": [1, 2], "f2": [3, 4]}
            lengths = {len(v) for v in values if v is not MISSING}
            if len(lengths) != 1:
                raise payload_error(
                    "shape_mismatch", f"columns of different lengths {sorted(lengths)[:5]}"
                )
            n = lengths.pop()
            self.check_rows(n)
            none_column = [None] * n
            columns = {
                f: none_column.copy() if v is MISSING else clean(v)
                for f, v in zip(features, values, strict=True)
            }
            return FeatureBatch(
                n, columns, "columns" if fmt == "object" else fmt, unknown_names * n
            )
        if kinds == {dict}:  # {"f1": {"0": 1, "1": 2}, ...}: rows follow the first column's index
            index = list(next(v for v in values if v is not MISSING))
            n = len(index)
            self.check_rows(n)
            none_column = [None] * n
            columns = {
                f: none_column.copy() if v is MISSING else clean(list(map(v.get, index)))
                for f, v in zip(features, values, strict=True)
            }
            return FeatureBatch(
                n, columns, "columns" if fmt == "object" else fmt, unknown_names * n
            )
        if columns_only:
            raise payload_error(
                "unsupported_format", f"{fmt}: an object must map features to columns"
            )
        scalars = SCALAR_TYPES
        columns = {
            f: [v if type(v) in scalars else _coerce(v)]
            for f, v in zip(features, values, strict=True)
        }
        return FeatureBatch(1, columns, fmt, unknown_names)

    def from_list(
        self,
        items: list[Any],
        fmt_named: str,
        fmt_positional: str | None,
        *,
        top_level: bool = False,
    ) -> FeatureBatch:
        """A list of records (``fmt_named``) or of positional rows (``fmt_positional``; None:
        not allowed); a top-level list of as many scalars as features is one positional row."""
        n = len(items)
        self.check_rows(n)
        if n == 0:
            return self.empty(fmt_named)
        kinds = set(map(type, items))
        if kinds == {dict}:
            return self.from_records(items, fmt_named)
        if fmt_positional is None:
            raise payload_error("unsupported_format", f"{fmt_named}: expected a list of objects")
        if kinds == {list}:
            return self.from_rows(items, fmt_positional)
        if kinds <= SCALAR_TYPES:
            width = len(self.features)
            if top_level and n == width:  # [5.1, 3.5, 1.4, 0.2]: one positional row
                return self.from_rows([items], fmt_positional)
            if width == 1:  # one feature, one scalar per row
                return FeatureBatch(n, {self.features[0]: items.copy()}, fmt_positional, 0)
            if self.count_only:
                return FeatureBatch(1 if top_level else n, {}, fmt_positional, 0)
            raise payload_error("shape_mismatch", f"{n} scalars for {width} features")
        raise payload_error("shape_mismatch", "rows mix objects, lists and scalars")

    def from_records(self, rows: list[dict[str, Any]], fmt: str) -> FeatureBatch:
        """A list of objects of named features."""
        columns: dict[str, list[object]] = {}
        missing = 0
        for f in self.features:
            column = [row.get(f, MISSING) for row in rows]
            missing += column.count(MISSING)
            columns[f] = clean(column)
        n = len(rows)
        known = n * len(self.features) - missing
        if not known and not self.count_only:
            raise payload_error("no_known_features", "no baseline feature is named in any row")
        return FeatureBatch(n, columns, fmt, sum(map(len, rows)) - known)

    def from_rows(self, rows: list[list[Any]], fmt: str) -> FeatureBatch:
        """A list of positional rows, in the order of the baseline's features."""
        width = len(self.features)
        lengths = set(map(len, rows))
        if self.count_only:
            return FeatureBatch(len(rows), {}, fmt, 0)
        if lengths != {width}:
            raise payload_error(
                "shape_mismatch", f"rows of length {sorted(lengths)[:5]}, expected {width}"
            )
        by_position = zip(*rows, strict=True)
        if set(map(type, chain.from_iterable(rows))) <= SCALAR_TYPES:
            columns = dict(zip(self.features, map(list, by_position), strict=True))
        else:
            columns = dict(zip(self.features, map(clean, by_position), strict=True))
        return FeatureBatch(len(rows), columns, fmt, 0)
