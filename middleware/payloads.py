"""Inference payloads → rows of named features; model responses → predictions.

This module owns the request and response *formats*: it turns a request body into a
:class:`FeatureBatch` (columns named only by the baseline, never by the payload) and a response
body into :class:`Predictions`. It knows nothing about statistics, metrics or ASGI; the monitor
feeds it bytes and counts the :class:`~mlwarden.middleware.errors.PayloadError` reasons.

Request formats understood, detected by shape:

- a JSON object of named features (one row), a list of such objects, a list of positional rows;
- pandas column orientation: ``{"f1": [..], "f2": [..]}`` and ``{"f1": {"0": ..}, ..}``;
- KServe v1 / TF-serving ``{"instances": ..}``;
- the Open Inference Protocol v2 ``{"inputs": [{"name", "shape", "datatype", "data"}, ..]}``;
- MLflow serving ``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs``;
- CSV bodies (``text/csv``, ``application/csv``);
- anything else through a user ``extractor``.

Every body is hostile until parsed: the work is bounded by the body size, never recursive over
the payload, and row counts are checked before any column is built.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from mlwarden.middleware.errors import PayloadError

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency, but stay correct without it
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "PAYLOAD_ERROR_REASONS",
    "PAYLOAD_FORMATS",
    "PREDICTION_SKIP_REASONS",
    "FeatureBatch",
    "FeatureRow",
    "PayloadParser",
    "PredictionReader",
    "Predictions",
]

#: Why a request payload yielded no features. A Prometheus label value: fixed and small.
#: ``too_large`` and ``body_not_read`` are assigned by the middleware, not by the parser.
PAYLOAD_ERROR_REASONS: tuple[str, ...] = (
    "empty_body",
    "not_utf8",
    "invalid_json",
    "too_deep",
    "invalid_csv",
    "unsupported_content_type",
    "unsupported_format",
    "shape_mismatch",
    "too_many_rows",
    "no_known_features",
    "extractor_error",
    "too_large",
    "body_not_read",
)

#: Why a response yielded no predictions. A Prometheus label value: fixed and small.
#: ``encoded``, ``too_large``, ``streaming`` and ``error_status`` are assigned by the middleware.
PREDICTION_SKIP_REASONS: tuple[str, ...] = (
    "not_json",
    "invalid_json",
    "encoded",
    "too_large",
    "streaming",
    "error_status",
    "no_predictions",
    "reader_error",
)

#: The values of :attr:`FeatureBatch.format` (also a label value).
PAYLOAD_FORMATS: tuple[str, ...] = (
    "object",
    "records",
    "rows",
    "columns",
    "kserve_v1",
    "oip_v2",
    "mlflow_dataframe_split",
    "mlflow_dataframe_records",
    "mlflow_inputs",
    "csv",
    "extractor",
)


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


@dataclass(frozen=True, slots=True)
class Predictions:
    """What a model response said: numeric values, class labels and confidences in [0, 1]."""

    values: list[float]
    classes: list[str]
    confidences: list[float]

    @property
    def count(self) -> int:
        return max(len(self.values), len(self.classes))


# --------------------------------------------------------------------------------------------
# shared helpers

_DETAIL_MAX = 200  # details end up in logs and span events; a payload must not flood them
_MAX_RANK = 32  # numpy's own limit; a deeper "shape" is hostile, not a tensor
_MAX_LABEL = 256  # a class label longer than this is text, not a class; keep memory bounded
_UTF8_BOM = codecs.BOM_UTF8

_JSON, _CSV, _TEXT, _OTHER = "json", "csv", "text", "other"


class _Missing:
    """Marks a feature absent from a row (unlike a JSON null, which is present)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
_SCALAR_TYPES = frozenset({int, float, str, bool, type(None)})
_SEQUENCE_TYPES = frozenset({list, tuple})
_NUMBER_TYPES = frozenset({int, float})


def _error(reason: str, detail: str) -> PayloadError:
    if len(detail) > _DETAIL_MAX:
        detail = detail[: _DETAIL_MAX - 3] + "..."
    return PayloadError(reason, detail)


def _media_kind(content_type: str | None) -> str:
    if content_type is None or content_type == "application/json":
        return _JSON
    return _classify_media(content_type)


@lru_cache(maxsize=64)
def _classify_media(content_type: str) -> str:
    # Cached because the same handful of header values repeat on every request; bounded so
    # that a client sending random values only churns the cache.
    media = content_type.partition(";")[0].strip().lower()
    if not media or media in ("application/json", "text/json") or media.endswith("+json"):
        return _JSON
    if media in ("text/csv", "application/csv"):
        return _CSV
    if media == "text/plain":
        return _TEXT
    return _OTHER


def _starts_like_json(body: bytes) -> bool:
    head = body[:256]
    if head.startswith(_UTF8_BOM):
        head = head[3:]
    return head.lstrip()[:1] in (b"{", b"[")


def _decode_text(body: bytes) -> str:
    if body.startswith(_UTF8_BOM):
        body = body[3:]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error("not_utf8", f"invalid UTF-8 at byte {exc.start}") from exc


def _load_json(body: bytes) -> Any:
    """Decode a JSON body: orjson when it is installed (several times faster than the stdlib,
    and this runs twice per model request), the stdlib for what orjson refuses (NaN and
    Infinity literals, integers beyond 64 bits, nesting past 1024, a BOM, bad UTF-8), so that
    both accept exactly the same payloads."""
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass
    return _loads(_decode_text(body))


def _loads(text: str) -> Any:
    """``json.loads`` with its failures sorted into reasons (NaN and Infinity stay floats)."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise _error("too_deep", "JSON nesting exceeds the interpreter's recursion limit") from exc
    except ValueError as exc:  # JSONDecodeError, and int literals beyond the digit limit
        raise _error("invalid_json", str(exc)) from exc


def _coerce(value: object) -> object:
    """A non-plain value → a plain scalar, or None (containers, missing, unknown types)."""
    if value.__class__ in (list, dict, tuple, _Missing):
        return None
    if isinstance(value, np.generic):  # numpy scalars from a user extractor
        value = value.item()
        return value if value.__class__ in _SCALAR_TYPES else None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _clean(column: Sequence[object]) -> list[object]:
    if set(map(type, column)) <= _SCALAR_TYPES:  # the usual case: one C pass, one C copy
        return list(column)
    return [v if type(v) in _SCALAR_TYPES else _coerce(v) for v in column]


def _shape_of(value: object) -> list[int] | None:
    if value.__class__ is not list or len(value) > _MAX_RANK:  # type: ignore[arg-type]
        return None
    shape: list[Any] = value  # type: ignore[assignment]
    for dim in shape:
        if dim.__class__ is not int or dim < 0:
            return None
    return shape


def _flatten(data: object, shape: list[int]) -> list[object] | None:
    """Row-major flat data of a tensor, or None when it does not fit ``shape``.

    Iterative and bounded by ``len(shape)``: nested data is flattened one level per dimension.
    """
    if data.__class__ is not list:
        return None
    flat: list[Any] = data  # type: ignore[assignment]
    if flat and flat[0].__class__ is list:
        if len(flat) != (shape[0] if shape else 1):
            return None
        for dim in shape[1:]:
            for sub in flat:
                if sub.__class__ is not list or len(sub) != dim:
                    return None
            flat = list(chain.from_iterable(flat))
    if len(flat) != math.prod(shape):
        return None
    return flat


# --------------------------------------------------------------------------------------------
# request side


class PayloadParser:
    """Turns request bodies into :class:`FeatureBatch` es named by the baseline's features.

    One parser serves every request of an endpoint: it holds configuration only, and
    :meth:`parse` keeps everything request-scoped in locals.
    """

    __slots__ = (
        "_count_only",
        "_envelopes",
        "_extractor",
        "_feature_set",
        "_features",
        "_getter",
        "_max_rows",
    )

    def __init__(
        self,
        *,
        features: Sequence[str],
        extractor: Callable[[Any], Any] | None = None,
        max_rows: int = 10_000,
    ) -> None:
        if isinstance(features, str | bytes) or not isinstance(features, Sequence):
            raise ValueError("features must be a sequence of feature names, not a single string")
        names = tuple(features)
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise ValueError(f"features must be non-empty strings, got {bad[:3]!r}")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"features must be unique, repeated: {dupes[:5]!r}")
        if extractor is not None and not callable(extractor):
            raise ValueError(f"extractor must be callable or None, got {extractor!r}")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
        self._features = names
        self._feature_set = frozenset(names)
        # Without features (no baseline) the parser still reads the payload's shape and counts
        # its rows; it returns no columns and, as every name would be unknown, counts none.
        self._count_only = not names
        self._extractor = extractor
        self._max_rows = max_rows
        # itemgetter fetches every feature of a complete object in one C call (the hot path).
        self._getter: Callable[[Any], tuple[Any, ...]]
        if len(names) > 1:
            self._getter = itemgetter(*names)
        elif names:
            getter = itemgetter(*names)
            self._getter = lambda obj: (getter(obj),)
        else:
            self._getter = lambda obj: ()
        # A protocol key that is also a baseline feature is read as that feature.
        self._envelopes = tuple(
            key
            for key in ("instances", "inputs", "dataframe_split", "dataframe_records")
            if key not in self._feature_set
        )

    def __repr__(self) -> str:
        shown = ", ".join(self._features[:3]) + (", ..." if len(self._features) > 3 else "")
        return (
            f"PayloadParser(features=[{shown}] ({len(self._features)}), "
            f"extractor={self._extractor!r}, max_rows={self._max_rows})"
        )

    @property
    def features(self) -> tuple[str, ...]:
        return self._features

    def parse(self, body: bytes, content_type: str | None) -> FeatureBatch | FeatureRow:
        """The feature rows of one request body; raises :class:`PayloadError` if there are none."""
        batch = self._parse(body, content_type)
        if self._count_only:
            return FeatureBatch(batch.rows, {}, batch.format, 0)
        return batch

    def _parse(self, body: bytes, content_type: str | None) -> FeatureBatch | FeatureRow:
        if not body or body.isspace():
            raise _error("empty_body", "the request body is empty")
        kind = _media_kind(content_type)
        if kind is _JSON or (kind is _TEXT and _starts_like_json(body)):
            payload = _load_json(body)
            if self._extractor is not None:
                return self._extract(payload)
            if payload.__class__ is dict:
                return self._from_dict(payload)
            if payload.__class__ is list:
                return self._from_list(payload, "records", "rows", top_level=True)
            raise _error("unsupported_format", f"a JSON {type(payload).__name__} is not a batch")
        if self._extractor is not None:
            return self._extract(body)
        if kind is _CSV:
            return self._from_csv(body)
        raise _error("unsupported_content_type", f"cannot read {content_type!r}")

    # -- JSON shapes -------------------------------------------------------------------------

    def _from_dict(self, obj: dict[str, Any]) -> FeatureBatch | FeatureRow:
        for key in self._envelopes:
            if key in obj:
                return self._from_envelope(key, obj[key])
        return self._from_object(obj, "object")

    def _from_envelope(self, key: str, inner: Any) -> FeatureBatch:
        if key == "instances":
            return self._from_instances(inner, "kserve_v1")
        if key == "inputs":
            if inner.__class__ is list and inner and _is_tensor(inner[0]):
                return self._from_oip(inner)
            return self._from_instances(inner, "mlflow_inputs")
        if key == "dataframe_split":
            return self._from_split(inner)
        if inner.__class__ is not list:  # dataframe_records
            raise _error("unsupported_format", "dataframe_records must be a list of objects")
        return self._from_list(inner, "mlflow_dataframe_records", None)

    def _from_instances(self, inner: Any, fmt: str) -> FeatureBatch:
        if inner.__class__ is list:
            return self._from_list(inner, fmt, fmt)
        if inner.__class__ is dict:
            return self._from_columns_or_row(inner, fmt, columns_only=True)
        raise _error("unsupported_format", f"{fmt}: expected a list or an object of columns")

    def _from_object(self, obj: dict[str, Any], fmt: str) -> FeatureBatch | FeatureRow:
        """One object of named features (the hot path), or pandas column orientation."""
        if self._count_only:
            return FeatureBatch(_column_length(obj), {}, fmt, 0)
        try:
            values = self._getter(obj)
        except KeyError:
            return self._from_columns_or_row(obj, fmt, columns_only=False)
        if not set(map(type, values)) <= _SCALAR_TYPES:
            return self._from_columns_or_row(obj, fmt, columns_only=False)
        return FeatureRow(self._features, values, fmt, len(obj) - len(values))

    def _from_columns_or_row(
        self, obj: Mapping[str, Any], fmt: str, *, columns_only: bool
    ) -> FeatureBatch:
        features = self._features
        get = obj.get
        values = [get(f, _MISSING) for f in features]
        known = len(values) - values.count(_MISSING)
        if not known:
            if self._count_only:
                return FeatureBatch(_column_length(obj), {}, fmt, 0)
            raise _error("no_known_features", "no baseline feature is named in the payload")
        kinds = set(map(type, values))
        kinds.discard(_Missing)
        unknown_names = len(obj) - known
        if kinds <= _SEQUENCE_TYPES:  # {"f1": [1, 2], "f2": [3, 4]}
            lengths = {len(v) for v in values if v is not _MISSING}
            if len(lengths) != 1:
                raise _error(
                    "shape_mismatch", f"columns of different lengths {sorted(lengths)[:5]}"
                )
            n = lengths.pop()
            self._check_rows(n)
            none_column = [None] * n
            columns = {
                f: none_column.copy() if v is _MISSING else _clean(v)
                for f, v in zip(features, values, strict=True)
            }
            return FeatureBatch(
                n, columns, "columns" if fmt == "object" else fmt, unknown_names * n
            )
        if kinds == {dict}:  # {"f1": {"0": 1, "1": 2}, ...}: rows follow the first column's index
            index = list(next(v for v in values if v is not _MISSING))
            n = len(index)
            self._check_rows(n)
            none_column = [None] * n
            columns = {
                f: none_column.copy() if v is _MISSING else _clean(list(map(v.get, index)))
                for f, v in zip(features, values, strict=True)
            }
            return FeatureBatch(
                n, columns, "columns" if fmt == "object" else fmt, unknown_names * n
            )
        if columns_only:
            raise _error("unsupported_format", f"{fmt}: an object must map features to columns")
        scalars = _SCALAR_TYPES
        columns = {
            f: [v if type(v) in scalars else _coerce(v)]
            for f, v in zip(features, values, strict=True)
        }
        return FeatureBatch(1, columns, fmt, unknown_names)

    def _from_list(
        self,
        items: list[Any],
        fmt_named: str,
        fmt_positional: str | None,
        *,
        top_level: bool = False,
    ) -> FeatureBatch:
        n = len(items)
        self._check_rows(n)
        if n == 0:
            return FeatureBatch(0, {f: [] for f in self._features}, fmt_named, 0)
        kinds = set(map(type, items))
        if kinds == {dict}:
            return self._from_records(items, fmt_named)
        if fmt_positional is None:
            raise _error("unsupported_format", f"{fmt_named}: expected a list of objects")
        if kinds == {list}:
            return self._from_rows(items, fmt_positional)
        if kinds <= _SCALAR_TYPES:
            width = len(self._features)
            if top_level and n == width:  # [5.1, 3.5, 1.4, 0.2]: one positional row
                return self._from_rows([items], fmt_positional)
            if width == 1:  # one feature, one scalar per row
                return FeatureBatch(n, {self._features[0]: items.copy()}, fmt_positional, 0)
            if self._count_only:
                return FeatureBatch(1 if top_level else n, {}, fmt_positional, 0)
            raise _error("shape_mismatch", f"{n} scalars for {width} features")
        raise _error("shape_mismatch", "rows mix objects, lists and scalars")

    def _from_records(self, rows: list[dict[str, Any]], fmt: str) -> FeatureBatch:
        columns: dict[str, list[object]] = {}
        missing = 0
        for f in self._features:
            column = [row.get(f, _MISSING) for row in rows]
            missing += column.count(_MISSING)
            columns[f] = _clean(column)
        n = len(rows)
        known = n * len(self._features) - missing
        if not known and not self._count_only:
            raise _error("no_known_features", "no baseline feature is named in any row")
        return FeatureBatch(n, columns, fmt, sum(map(len, rows)) - known)

    def _from_rows(self, rows: list[list[Any]], fmt: str) -> FeatureBatch:
        width = len(self._features)
        lengths = set(map(len, rows))
        if self._count_only:
            return FeatureBatch(len(rows), {}, fmt, 0)
        if lengths != {width}:
            raise _error(
                "shape_mismatch", f"rows of length {sorted(lengths)[:5]}, expected {width}"
            )
        by_position = zip(*rows, strict=True)
        if set(map(type, chain.from_iterable(rows))) <= _SCALAR_TYPES:
            columns = dict(zip(self._features, map(list, by_position), strict=True))
        else:
            columns = dict(zip(self._features, map(_clean, by_position), strict=True))
        return FeatureBatch(len(rows), columns, fmt, 0)

    def _from_split(self, split: Any) -> FeatureBatch:
        """MLflow ``dataframe_split``: ``{"columns": [...], "data": [[...], ...]}``."""
        fmt = "mlflow_dataframe_split"
        if split.__class__ is not dict or split.get("data").__class__ is not list:
            raise _error("unsupported_format", "dataframe_split needs a 'data' list of rows")
        data: list[Any] = split["data"]
        names = split.get("columns")
        if names is None:
            return self._from_list(data, fmt, fmt)
        if names.__class__ is not list:
            raise _error("unsupported_format", "dataframe_split 'columns' must be a list")
        n = len(data)
        self._check_rows(n)
        width = len(names)
        if n and (set(map(type, data)) != {list} or set(map(len, data)) != {width}):
            raise _error("shape_mismatch", f"dataframe_split rows must be lists of {width} values")
        position: dict[str, int] = {}
        for i, name in enumerate(names):
            if name.__class__ is str and name in self._feature_set:
                position.setdefault(name, i)
        if not n:
            return FeatureBatch(0, {f: [] for f in self._features}, fmt, 0)
        if not position:
            if self._count_only:
                return FeatureBatch(n, {}, fmt, 0)
            raise _error("no_known_features", "no baseline feature among dataframe_split columns")
        by_position = list(zip(*data, strict=True))
        columns = {
            f: _clean(by_position[position[f]]) if f in position else [None] * n
            for f in self._features
        }
        return FeatureBatch(n, columns, fmt, (width - len(position)) * n)

    def _from_oip(self, tensors: list[Any]) -> FeatureBatch:
        """Open Inference Protocol v2: one tensor per feature, or one ``[N, F]`` tensor."""
        fmt = "oip_v2"
        feature_set = self._feature_set
        named: dict[str, list[object]] = {}
        others: list[tuple[dict[str, Any], list[int]]] = []
        n: int | None = None
        for tensor in tensors:
            if not _is_tensor(tensor):
                raise _error("unsupported_format", "every OIP input needs 'name' and 'data'")
            shape = _shape_of(tensor.get("shape"))
            if shape is None:
                raise _error("shape_mismatch", f"input {tensor['name']!r}: invalid shape")
            name = tensor["name"]
            if name.__class__ is not str or name not in feature_set or name in named:
                others.append((tensor, shape))
                continue
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise _error(
                    "shape_mismatch", f"input {name!r}: shape {shape}, expected [N] or [N, 1]"
                )
            if n is None:
                n = shape[0]
                self._check_rows(n)
            elif shape[0] != n:
                raise _error("shape_mismatch", f"input {name!r} has {shape[0]} rows, not {n}")
            flat = _flatten(tensor["data"], shape)
            if flat is None:
                raise _error("shape_mismatch", f"input {name!r}: data does not match shape {shape}")
            named[name] = flat
        if n is not None:
            columns = {f: _clean(named[f]) if f in named else [None] * n for f in self._features}
            return FeatureBatch(n, columns, fmt, len(others) * n)
        return self._from_oip_positional(others)

    def _from_oip_positional(self, tensors: list[tuple[dict[str, Any], list[int]]]) -> FeatureBatch:
        width = len(self._features)
        for tensor, shape in tensors:
            if (len(shape) == 2 and shape[1] == width) or (len(shape) == 1 and width == 1):
                n = shape[0]
                self._check_rows(n)
                flat = _flatten(tensor["data"], shape)
                if flat is None:
                    raise _error(
                        "shape_mismatch", f"input {tensor['name']!r}: data does not match {shape}"
                    )
                if set(map(type, flat)) <= _SCALAR_TYPES:
                    columns = {f: flat[j::width] for j, f in enumerate(self._features)}
                else:
                    columns = {f: _clean(flat[j::width]) for j, f in enumerate(self._features)}
                return FeatureBatch(n, columns, "oip_v2", (len(tensors) - 1) * n)
        if self._count_only and tensors:
            n = tensors[0][1][0] if tensors[0][1] else 1
            self._check_rows(n)
            return FeatureBatch(n, {}, "oip_v2", 0)
        if len(tensors) == 1:  # one unnamed batch tensor of the wrong width
            shape = tensors[0][1]
            raise _error("shape_mismatch", f"input shape {shape}, expected [N, {width}]")
        raise _error("no_known_features", "no OIP input is named as a baseline feature")

    # -- CSV ---------------------------------------------------------------------------------

    def _from_csv(self, body: bytes) -> FeatureBatch:
        text = _decode_text(body)
        limit = self._max_rows + 1  # one more than allowed: the first row may be a header
        rows: list[list[str]] = []
        try:
            for row in csv.reader(io.StringIO(text, newline=""), strict=True):
                if row:  # blank lines carry nothing
                    rows.append(row)
                    if len(rows) > limit:
                        break
        except csv.Error as exc:
            raise _error("invalid_csv", str(exc)) from exc
        if not rows:
            raise _error("empty_body", "the CSV body has no rows")
        feature_set = self._feature_set
        first = rows[0]
        has_header = any(c.strip() in feature_set or not _is_number_or_empty(c) for c in first)
        if not has_header:
            self._check_rows(len(rows))
            return self._csv_columns(rows, list(self._features), "positional")
        data = rows[1:]
        self._check_rows(len(data))
        return self._csv_columns(data, [c.strip() for c in first], "header")

    def _csv_columns(self, data: list[list[str]], names: list[str], layout: str) -> FeatureBatch:
        width = len(names)
        lengths = set(map(len, data))
        if self._count_only:
            return FeatureBatch(len(data), {}, "csv", 0)
        if data and lengths != {width}:
            raise _error(
                "shape_mismatch", f"CSV rows of {sorted(lengths)[:5]} cells, {layout} has {width}"
            )
        position: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in self._feature_set:
                position.setdefault(name, i)
        n = len(data)
        if not n:
            return FeatureBatch(0, {f: [] for f in self._features}, "csv", 0)
        if not position:
            raise _error("no_known_features", "no baseline feature in the CSV header")
        by_position = list(zip(*data, strict=True))
        columns: dict[str, list[object]] = {
            f: [c or None for c in by_position[position[f]]] if f in position else [None] * n
            for f in self._features
        }
        return FeatureBatch(n, columns, "csv", (width - len(position)) * n)

    # -- extractor ---------------------------------------------------------------------------

    def _extract(self, payload: Any) -> FeatureBatch:
        """Runs the user hook; whatever it does wrong becomes ``extractor_error``, never a 500."""
        extractor = self._extractor
        assert extractor is not None
        try:
            result = extractor(payload)
        except Exception as exc:
            raise _error("extractor_error", f"{type(exc).__name__}: {exc}") from exc
        try:
            return self._from_extracted(result)
        except PayloadError as exc:
            if exc.reason in ("too_many_rows", "no_known_features"):
                raise
            raise _error("extractor_error", f"returned a bad shape: {exc.detail}") from exc
        except Exception as exc:  # a user Mapping whose methods raise
            raise _error("extractor_error", f"{type(exc).__name__}: {exc}") from exc

    def _from_extracted(self, result: Any) -> FeatureBatch:
        if isinstance(result, Mapping):
            # 1-D numpy arrays are columns too (``{"f1": np.array([...])}``)
            obj = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in result.items()}
            return self._from_columns_or_row(obj, "extractor", columns_only=False)
        if isinstance(result, Sequence) and not isinstance(result, str | bytes | bytearray):
            self._check_rows(len(result))
            rows = [r if r.__class__ is dict else dict(r) for r in result if isinstance(r, Mapping)]
            if len(rows) != len(result):
                raise _error("unsupported_format", "a sequence whose items are not all mappings")
            if not rows:
                return FeatureBatch(0, {f: [] for f in self._features}, "extractor", 0)
            return self._from_records(rows, "extractor")
        raise _error("unsupported_format", f"returned {type(result).__name__}, not rows")

    def _check_rows(self, n: int) -> None:
        if n > self._max_rows:
            raise _error("too_many_rows", f"{n} rows, at most {self._max_rows}")


def _column_length(obj: Mapping[str, Any]) -> int:
    """Rows of an object whose values are all equally long columns, else 1 (one row)."""
    lengths = {len(v) if v.__class__ in (list, dict) else -1 for v in obj.values()}
    if len(lengths) == 1:
        n = lengths.pop()
        if n >= 0:
            return n
    return 1


def _is_tensor(item: object) -> bool:
    return item.__class__ is dict and "name" in item and "data" in item  # type: ignore[operator]


def _is_number_or_empty(cell: str) -> bool:
    if not cell.strip():
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# response side

_CONFIDENCE_OUTPUTS = frozenset(
    {
        "probabilities",
        "probability",
        "proba",
        "probas",
        "scores",
        "score",
        "confidence",
        "confidences",
    }
)
_CLASS_KEYS = ("label", "class", "predicted_class", "predicted_label", "class_name")
_VALUE_KEYS = ("prediction", "predicted_value", "value")
_CONFIDENCE_KEYS = ("score", "confidence", "probability", "proba")
_VECTOR_KEYS = ("probabilities", "probas", "scores")

_PathPart = tuple[str, int | None]  # the key, and the list index when it is a number


class _Collector:
    """Accumulates one response's predictions; lives for one :meth:`PredictionReader.read`."""

    __slots__ = ("classes", "confidences", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.classes: list[str] = []
        self.confidences: list[float] = []

    def add_items(self, items: list[Any]) -> None:
        kinds = set(map(type, items))
        if kinds <= _NUMBER_TYPES:  # the common regression / score list: no per-item dispatch
            try:
                self.values.extend(map(float, filter(math.isfinite, items)))
                return
            except OverflowError:  # an int too large for a float: take the slow path
                pass
        elif kinds == {str}:
            self.classes.extend(s if len(s) <= _MAX_LABEL else s[:_MAX_LABEL] for s in items)
            return
        for item in items:
            self.add_item(item)

    def add_item(self, item: Any) -> None:
        cls = item.__class__
        if cls is list and len(item) == 1:  # [[0.7], [0.2]]: a column vector of scalars
            item = item[0]
            cls = item.__class__
        if cls is int or cls is float:
            self._add_value(item)
        elif cls is str or cls is bool:
            self.classes.append(_label(item))
        elif cls is list:
            self._add_vector(item, with_class=True)
        elif cls is dict:
            self._add_mapping(item)

    def add_confidence(self, item: Any) -> None:
        cls = item.__class__
        if cls is list and len(item) == 1:
            item = item[0]
            cls = item.__class__
        if cls is int or cls is float:
            self._add_confidence(item)
        elif cls is list or cls is dict:
            self._add_vector(item, with_class=False)

    def _add_value(self, value: float) -> None:
        try:
            if math.isfinite(value):
                self.values.append(float(value))
        except OverflowError:
            pass

    def _add_confidence(self, value: float) -> bool:
        if value.__class__ in _NUMBER_TYPES and 0.0 <= value <= 1.0:  # NaN fails both
            self.confidences.append(float(value))
            return True
        return False

    def _add_vector(self, vector: list[Any] | dict[str, Any], *, with_class: bool) -> bool:
        """A probability vector (list, or ``{class: prob}``): max → confidence, argmax → class."""
        if vector.__class__ is dict:
            labels: list[Any] = list(vector)
            probs: list[Any] = list(vector.values())
        else:
            labels, probs = [], vector  # type: ignore[assignment]
        if not probs or not set(map(type, probs)) <= _NUMBER_TYPES:
            return False
        try:
            if not all(map(math.isfinite, probs)):
                return False
        except OverflowError:
            return False
        best = max(probs)
        self._add_confidence(best)
        if with_class:
            at = probs.index(best)
            self.classes.append(_label(labels[at]) if labels else str(at))
        return True

    def _add_mapping(self, item: dict[str, Any]) -> None:
        has_class = False
        for key in _CLASS_KEYS:
            label = item.get(key)
            if label.__class__ in _SCALAR_TYPES and label is not None:
                self.classes.append(_label(label))
                has_class = True
                break
        for key in _VALUE_KEYS:
            value = item.get(key)
            if value is None:
                continue
            if value.__class__ is int or value.__class__ is float:
                self._add_value(value)
            elif value.__class__ is str or value.__class__ is bool:
                if not has_class:
                    self.classes.append(_label(value))
                    has_class = True
            elif value.__class__ is list and self._add_vector(value, with_class=not has_class):
                return  # a probability vector under "prediction" already gave the confidence
            break
        for key in _CONFIDENCE_KEYS:
            score = item.get(key)
            if score.__class__ in _NUMBER_TYPES:
                self._add_confidence(score)  # type: ignore[arg-type]
                return
            if score.__class__ is list or score.__class__ is dict:
                self._add_vector(score, with_class=not has_class)  # type: ignore[arg-type]
                return
        for key in _VECTOR_KEYS:
            vector = item.get(key)
            if (vector.__class__ is list or vector.__class__ is dict) and self._add_vector(
                vector,  # type: ignore[arg-type]
                with_class=not has_class,
            ):
                return


def _label(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    text = value if value.__class__ is str else str(value)
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL]  # type: ignore[return-value]


def _compile_path(path: str, option: str) -> tuple[_PathPart, ...]:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"{option} must be a dotted path like 'result.scores', got {path!r}")
    return tuple((p, int(p) if p.lstrip("-").isdigit() else None) for p in parts)


def _follow(document: Any, parts: tuple[_PathPart, ...]) -> Any:
    """The node at ``parts``, or ``_MISSING``; numeric parts index lists (and match dict keys)."""
    node = document
    for key, index in parts:
        if node.__class__ is dict:
            node = node.get(key, _MISSING)
            if node is _MISSING:
                return _MISSING
        elif node.__class__ is list and index is not None:
            try:
                node = node[index]
            except IndexError:
                return _MISSING
        else:
            return _MISSING
    return node


class PredictionReader:
    """Reads what a model answered from its response body, for prediction and confidence metrics.

    Out of the box it understands ``{"predictions": [...]}`` (KServe v1, MLflow, TF-serving),
    ``{"outputs": [...]}`` (OIP v2), a top-level list and a bare number or string;
    ``prediction_path`` / ``confidence_path`` point elsewhere (a dotted path, or a callable for
    predictions). A dedicated confidence source replaces confidences found in the predictions.
    """

    __slots__ = ("_confidence_path", "_max_items", "_prediction_path")

    def __init__(
        self,
        *,
        prediction_path: str | Callable[[Any], Any] | None = None,
        confidence_path: str | None = None,
        max_items: int = 10_000,
    ) -> None:
        self._prediction_path: tuple[_PathPart, ...] | Callable[[Any], Any] | None
        if prediction_path is None or callable(prediction_path):
            self._prediction_path = prediction_path
        elif isinstance(prediction_path, str):
            self._prediction_path = _compile_path(prediction_path, "prediction_path")
        else:
            raise ValueError(
                f"prediction_path must be a str, a callable or None, got {prediction_path!r}"
            )
        if confidence_path is not None and not isinstance(confidence_path, str):
            raise ValueError(f"confidence_path must be a str or None, got {confidence_path!r}")
        self._confidence_path = (
            None if confidence_path is None else _compile_path(confidence_path, "confidence_path")
        )
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items must be a positive int, got {max_items!r}")
        self._max_items = max_items

    def __repr__(self) -> str:
        def show(path: object) -> str:
            if isinstance(path, tuple):
                return repr(".".join(key for key, _ in path))
            return repr(path)

        return (
            f"PredictionReader(prediction_path={show(self._prediction_path)}, "
            f"confidence_path={show(self._confidence_path)}, max_items={self._max_items})"
        )

    def read(self, body: bytes, content_type: str | None) -> Predictions:
        """The predictions in one response body; raises :class:`PayloadError` when there are none.

        ``PayloadError.reason`` is one of :data:`PREDICTION_SKIP_REASONS`.
        """
        if not body or body.isspace():
            raise _error("no_predictions", "the response body is empty")
        kind = _media_kind(content_type)
        if not (kind is _JSON or (kind is _TEXT and _starts_like_json(body))):
            raise _error("not_json", f"cannot read {content_type!r}")
        try:
            document = _load_json(body)
        except PayloadError as exc:  # not_utf8 / too_deep are all "invalid JSON" to a response
            raise _error("invalid_json", exc.detail) from exc
        found = _Collector()
        if self._prediction_path is None:
            self._read_default(document, found)
        else:
            self._read_items(self._predictions_at(document), found)
        if self._confidence_path is not None:
            found.confidences = []
            node = _follow(document, self._confidence_path)
            if node is not _MISSING:
                self._read_confidences(node, found)
        if not (found.values or found.classes or found.confidences):
            raise _error("no_predictions", "nothing readable as a prediction")
        return Predictions(found.values, found.classes, found.confidences)

    def _predictions_at(self, document: Any) -> Any:
        path = self._prediction_path
        if callable(path):
            try:
                node = path(document)
            except Exception as exc:
                raise _error("reader_error", f"{type(exc).__name__}: {exc}") from exc
            tolist = getattr(node, "tolist", None)
            if callable(tolist) and not isinstance(node, list):  # a numpy array
                try:
                    node = tolist()
                except Exception as exc:
                    raise _error("reader_error", f"{type(exc).__name__}: {exc}") from exc
            elif isinstance(node, tuple):
                node = list(node)
            return node
        node = _follow(document, path)  # type: ignore[arg-type]
        if node is _MISSING:
            raise _error("no_predictions", "prediction_path not found in the response")
        return node

    def _read_default(self, document: Any, found: _Collector) -> None:
        if document.__class__ is dict:
            if "predictions" in document:
                self._read_items(document["predictions"], found)
                return
            outputs = document.get("outputs")
            if outputs.__class__ is list and outputs and all(map(_is_tensor, outputs)):
                self._read_oip(outputs, found)
                return
        self._read_items(document, found)

    def _read_oip(self, outputs: list[dict[str, Any]], found: _Collector) -> None:
        """The first output predicts; an output named like "probabilities" gives confidences."""
        predicted = confidence = None
        for tensor in outputs:
            name = tensor["name"]
            is_confidence = name.__class__ is str and name.lower() in _CONFIDENCE_OUTPUTS
            if is_confidence and confidence is None:
                confidence = tensor
            elif not is_confidence and predicted is None:
                predicted = tensor
        if predicted is None:  # only probabilities: they give both classes and confidences
            self._read_items(confidence, found)
            return
        self._read_items(predicted, found)
        if confidence is not None:
            found.confidences = []
            self._read_confidences(confidence, found)

    def _rows(self, node: Any) -> list[Any] | None:
        """The items of a predictions node, capped at ``max_items``; a tensor yields its rows."""
        if node.__class__ is dict and _is_tensor(node):
            shape = _shape_of(node.get("shape"))
            if shape is None or not shape:
                return None
            width = math.prod(shape[1:])
            flat = _flatten(node["data"], shape)
            if flat is None:
                return None
            if width == 0:
                return []
            if width == 1:
                return flat[: self._max_items]
            flat = flat[: self._max_items * width]
            return [flat[i : i + width] for i in range(0, len(flat), width)]
        if node.__class__ is list:
            return node[: self._max_items]
        if node is None or node is _MISSING:
            return []
        return [node]

    def _read_items(self, node: Any, found: _Collector) -> None:
        items = self._rows(node)
        if items is None:
            raise _error("no_predictions", "an output tensor whose data does not fit its shape")
        found.add_items(items)

    def _read_confidences(self, node: Any, found: _Collector) -> None:
        items = self._rows(node)
        for item in items or ():
            found.add_confidence(item)
