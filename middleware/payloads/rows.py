"""Feature rows of one request, and the row/column machinery every request format shares.

:class:`FeatureBatch` (by column) and :class:`FeatureRow` (one object of named features, the
common request) are what the parser hands to the feature windows. :class:`BatchBuilder` holds
the baseline's features and the row limit, and builds batches from the shapes that every
format carries inside its envelope: a list of objects (records), a list of positional rows,
pandas columns (``{"f1": [..]}`` or ``{"f1": {"0": ..}}``), or one object as one row. Columns
are named only by the baseline, never by the payload, and row counts are checked before any
column is built.

How an object is read is decided by the values of the baseline's features in it (other names
are only counted): all single values, one row; all lists of one length, that many rows; all
index objects with the same keys, one row per key in the first one's order. Lists of different
lengths or index objects with different keys are ``shape_mismatch``; a mix of lists and single
values is ``nested_value``. A cell, wherever it is, must be a single value (a JSON scalar or
null): a list or an object where one value is expected is counted as ``nested_value``, never
read as a missing value.
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

#: Values that hold other values: never a feature's value (``nested_value``).
_CONTAINERS = frozenset({list, tuple, dict})


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
    """A non-plain value → a plain scalar, or None (missing, unknown types); a container is
    ``nested_value``: a list where one value is expected is not a missing value."""
    if value.__class__ is Missing:
        return None
    if value.__class__ in _CONTAINERS or (
        isinstance(value, Mapping | Sequence | np.ndarray)
        and not isinstance(value, str | bytes | bytearray)
    ):
        raise payload_error(
            "nested_value", f"a {type(value).__name__} where a single feature value is expected"
        )
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
    """A column of plain scalars: other values coerced (numpy scalars), missing ones None;
    a container in it is ``nested_value``."""
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
        if self.count_only:
            return FeatureBatch(column_length(obj), {}, fmt, 0)
        n, columns, unknown, layout = self._table(obj, columns_only=columns_only)
        return FeatureBatch(n, columns, "columns" if fmt == "object" and layout else fmt, unknown)

    def _table(
        self,
        obj: Mapping[str, Any],
        *,
        columns_only: bool = False,
        require_known: bool = True,
        rows_before: int = 0,
    ) -> tuple[int, dict[str, list[object]], int, bool]:
        """One object read as a small table: its rows, columns, unknown values and whether it
        was column-oriented. The layout follows the baseline's features in it (see the module
        docstring); ``rows_before`` rows of the same request count towards ``max_rows``."""
        features = self.features
        get = obj.get
        values = [get(f, MISSING) for f in features]
        known = len(values) - values.count(MISSING)
        if not known:
            if require_known:
                raise payload_error(
                    "no_known_features", "no baseline feature is named in the payload"
                )
            self.check_rows(rows_before + 1)
            return 1, {f: [None] for f in features}, len(obj), False
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
            self.check_rows(rows_before + n)
            none_column = [None] * n
            columns = {
                f: none_column.copy() if v is MISSING else clean(v)
                for f, v in zip(features, values, strict=True)
            }
            return n, columns, unknown_names * n, True
        if kinds == {dict}:  # {"f1": {"0": 1, "1": 2}, ...}: rows in the first column's order
            indexes = [v for v in values if v is not MISSING]
            index = list(indexes[0])
            if any(v.keys() != indexes[0].keys() for v in indexes[1:]):
                raise payload_error("shape_mismatch", "index columns with different row labels")
            n = len(index)
            self.check_rows(rows_before + n)
            none_column = [None] * n
            columns = {
                f: none_column.copy() if v is MISSING else clean(list(map(v.__getitem__, index)))
                for f, v in zip(features, values, strict=True)
            }
            return n, columns, unknown_names * n, True
        if not kinds.isdisjoint(_CONTAINERS):
            raise payload_error(
                "nested_value", "an object mixes columns (lists or objects) and single values"
            )
        if columns_only:
            raise payload_error("unsupported_format", "an object must map features to columns")
        self.check_rows(rows_before + 1)
        scalars = SCALAR_TYPES
        columns = {
            f: [v if type(v) in scalars else _coerce(v)]
            for f, v in zip(features, values, strict=True)
        }
        return 1, columns, unknown_names, False

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

    def from_records(
        self, rows: list[dict[str, Any]], fmt: str, *, tables: bool = False
    ) -> FeatureBatch:
        """A list of objects of named features, one row each; with ``tables`` (KServe v1
        instances) an object whose features are columns is read as that many rows."""
        if tables and self.count_only:
            return FeatureBatch(sum(map(column_length, rows)), {}, fmt, 0)
        columns: dict[str, list[object]] = {}
        missing = 0
        for f in self.features:
            column = [row.get(f, MISSING) for row in rows]
            kinds = set(map(type, column))
            if kinds <= SCALAR_TYPES:  # the usual case: the fresh list is the column
                columns[f] = column
                continue
            if tables and not kinds.isdisjoint(_CONTAINERS):
                return self._from_tables(rows, fmt)
            missing += column.count(MISSING)
            columns[f] = clean(column)
        n = len(rows)
        known = n * len(self.features) - missing
        if not known and not self.count_only:
            raise payload_error("no_known_features", "no baseline feature is named in any row")
        return FeatureBatch(n, columns, fmt, sum(map(len, rows)) - known)

    def _from_tables(self, objects: list[dict[str, Any]], fmt: str) -> FeatureBatch:
        """Objects each read as a small table (:meth:`_table`), their rows one after another."""
        columns: dict[str, list[object]] = {f: [] for f in self.features}
        n = unknown = 0
        known = False
        for obj in objects:
            rows, part, extra, _ = self._table(obj, require_known=False, rows_before=n)
            n += rows
            unknown += extra
            for f, values in part.items():
                columns[f] += values
            known = known or any(f in obj for f in self.features)
        if not known:
            raise payload_error("no_known_features", "no baseline feature is named in any row")
        return FeatureBatch(n, columns, fmt, unknown)

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
