"""Every payload shape of KServe v1, the Open Inference Protocol v2 and MLflow serving, read
by the parser and by a reference reader written here from the protocols' documents.

Generated payloads (seeded, 500 per protocol, well-formed and broken) go through
both. For each one the two agree: the same rows (values and their types, in the baseline's
feature order), the same count of unknown values and the same format, or both find it
unreadable for the same reason. A payload the parser reads differently from the reference,
or reads where the reference cannot, fails the test.

The reference follows the documents, not the parser's code:

- KServe v1 (``kserve.utils.get_predict_input``, TF-serving's REST row format):
  ``instances`` (or ``inputs``) is a list of objects (each a table as ``pd.DataFrame(obj)``
  reads it: single values one row, equal lists that many rows), of lists of records (when the
  first instance starts with an object), of positional rows, or of single values (one input).
- OIP v2 (the inference request JSON): ``inputs`` is a list of ``{"name", "shape",
  "datatype", "data"}`` tensors whose ``data`` is row-major, flat or nested as the shape says;
  one tensor per feature (``[N]`` or ``[N, 1]``) or one ``[N, F]`` batch tensor.
- MLflow serving (``mlflow.pyfunc.scoring_server``): ``dataframe_split`` (pandas split orient:
  ``columns``, ``data``, optional ``index``), ``dataframe_records`` (records orient),
  ``instances`` and ``inputs`` (TF-serving row and columnar formats), and ``params``.

The middleware knows no order of features but the baseline's, so positional rows map onto
the baseline's features in order and a row of another length cannot be read.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.payloads import PAYLOAD_ERROR_REASONS, FeatureRow, PayloadParser

ENVELOPES = ("instances", "inputs", "dataframe_split", "dataframe_records")
MAX_ROWS = 10  # small, so that generated payloads cross it
PAYLOADS_PER_PROTOCOL = 500
#: Baselines to read with: one feature is a case of its own (a list of values is its rows).
FEATURE_SETS = (("f0", "f1", "f2"), ("f0",))
_SCALARS = (int, float, str, bool, type(None))


# -- the reference reader ------------------------------------------------------------------


class Unreadable(Exception):
    """The reference cannot read the payload, for ``reason`` (one of the parser's)."""

    def __init__(self, reason: str) -> None:
        assert reason in PAYLOAD_ERROR_REASONS
        super().__init__(reason)
        self.reason = reason


@dataclass
class Read:
    rows: list[tuple[Any, ...]]
    unknown: int
    format: str


def _is_scalar(value: Any) -> bool:
    return type(value) in _SCALARS


class Reference:
    """A slow, literal reading of the protocols for one baseline's features."""

    def __init__(self, features: tuple[str, ...], max_rows: int) -> None:
        self.features = features
        self.max_rows = max_rows

    def read(self, doc: Any) -> Read:
        if not isinstance(doc, dict):
            raise Unreadable("unsupported_format")
        present = [k for k in ENVELOPES if k in doc and k not in self.features]
        if len(present) > 1:
            raise Unreadable("unsupported_format")  # KServe reads inputs, MLflow refuses
        if not present:
            rows, unknown, columns = self.table(doc, require_known=True)
            return Read(rows, unknown, "columns" if columns else "object")
        key = present[0]
        inner = doc[key]
        if key == "instances":
            return self.instances(inner, "kserve_v1")
        if key == "inputs":
            if isinstance(inner, list) and inner and self.is_tensor(inner[0]):
                return self.tensors(inner)
            return self.instances(inner, "mlflow_inputs")
        if key == "dataframe_split":
            return self.dataframe_split(inner)
        return self.dataframe_records(inner)

    # shared pieces

    def limit(self, n: int) -> None:
        if n > self.max_rows:
            raise Unreadable("too_many_rows")

    def cells(self, values: list[Any]) -> list[Any]:
        """Feature values must be single values; a list or object there is not one."""
        if not all(_is_scalar(v) for v in values):
            raise Unreadable("nested_value")
        return values

    def record(self, obj: dict[str, Any]) -> tuple[tuple[Any, ...], int, int]:
        """One object as one row: the row, its unknown names, its known names."""
        row = tuple(obj.get(f) for f in self.features)
        self.cells([obj[f] for f in self.features if f in obj])
        known = sum(f in obj for f in self.features)
        return row, len(obj) - known, known

    def table(
        self, obj: dict[str, Any], *, require_known: bool, columns_only: bool = False, before=0
    ) -> tuple[list[tuple[Any, ...]], int, bool]:
        """pandas' ``DataFrame(obj)`` for the baseline's features in ``obj``: rows, unknown
        values, and whether it was column-oriented."""
        known = [f for f in self.features if f in obj]
        if not known:
            if require_known:
                raise Unreadable("no_known_features")
            self.limit(before + 1)
            return [tuple(None for _ in self.features)], len(obj), False
        values = [obj[f] for f in known]
        others = len(obj) - len(known)
        if all(isinstance(v, list) for v in values):
            if len({len(v) for v in values}) != 1:
                raise Unreadable("shape_mismatch")
            n = len(values[0])
            self.limit(before + n)
            for v in values:
                self.cells(v)
            rows = [tuple(obj[f][i] if f in obj else None for f in self.features) for i in range(n)]
            return rows, others * n, True
        if all(isinstance(v, dict) for v in values):
            labels = list(values[0])
            if any(set(v) != set(labels) for v in values):
                raise Unreadable("shape_mismatch")
            n = len(labels)
            self.limit(before + n)
            for v in values:
                self.cells(list(v.values()))
            rows = [
                tuple(obj[f][label] if f in obj else None for f in self.features)
                for label in labels
            ]
            return rows, others * n, True
        if any(isinstance(v, list | dict) for v in values):
            raise Unreadable("nested_value")  # pandas would broadcast; TF-serving a tensor
        if columns_only:
            raise Unreadable("unsupported_format")
        self.limit(before + 1)
        return [tuple(obj.get(f) for f in self.features)], others, False

    def records(self, items: list[dict[str, Any]], fmt: str) -> Read:
        rows, unknown, known = [], 0, 0
        for obj in items:
            row, extra, names = self.record(obj)
            rows.append(row)
            unknown += extra
            known += names
        if not known:
            raise Unreadable("no_known_features")
        return Read(rows, unknown, fmt)

    def positional(self, items: list[list[Any]], fmt: str) -> Read:
        width = len(self.features)
        if any(len(row) != width for row in items):
            raise Unreadable("shape_mismatch")
        for row in items:
            self.cells(row)
        return Read([tuple(row) for row in items], 0, fmt)

    def rows_list(self, items: list[Any], fmt: str, *, named_only: bool = False) -> Read:
        """A list of records, of positional rows or (one feature) of values."""
        self.limit(len(items))
        if not items:
            return Read([], 0, fmt)
        if all(isinstance(i, dict) for i in items):
            return self.records(items, fmt)
        if named_only:
            raise Unreadable("unsupported_format")
        if all(isinstance(i, list) for i in items):
            return self.positional(items, fmt)
        if all(_is_scalar(i) for i in items):
            if len(self.features) == 1:
                return Read([(i,) for i in items], 0, fmt)
            raise Unreadable("shape_mismatch")  # N inputs of one value, not one row
        raise Unreadable("shape_mismatch")

    # KServe v1 and TF-serving rows

    def instances(self, inner: Any, fmt: str) -> Read:
        if isinstance(inner, dict):  # TF-serving's columnar "inputs"
            rows, unknown, _ = self.table(inner, require_known=True, columns_only=True)
            return Read(rows, unknown, fmt)
        if not isinstance(inner, list):
            raise Unreadable("unsupported_format")
        if inner and isinstance(inner[0], list) and inner[0] and isinstance(inner[0][0], dict):
            # get_predict_input: an instance that is a list of records is a DataFrame of them
            if not all(isinstance(i, list) for i in inner):
                raise Unreadable("shape_mismatch")
            self.limit(sum(len(i) for i in inner))
            flat = [r for i in inner for r in i]
            if not all(isinstance(r, dict) for r in flat):
                raise Unreadable("shape_mismatch")
            return self.records(flat, fmt)
        if inner and all(isinstance(i, dict) for i in inner):
            # get_predict_input: every instance object is pd.DataFrame(instance)
            self.limit(len(inner))
            rows: list[tuple[Any, ...]] = []
            unknown = 0
            for obj in inner:
                part, extra, _ = self.table(obj, require_known=False, before=len(rows))
                rows += part
                unknown += extra
            if not any(f in obj for obj in inner for f in self.features):
                raise Unreadable("no_known_features")
            return Read(rows, unknown, fmt)
        return self.rows_list(inner, fmt)

    # OIP v2

    @staticmethod
    def is_tensor(item: Any) -> bool:
        return isinstance(item, dict) and "name" in item and "data" in item

    @staticmethod
    def shape(value: Any) -> list[int] | None:
        if not isinstance(value, list) or len(value) > 32:
            return None
        if not all(type(d) is int and d >= 0 for d in value):
            return None
        return value

    @staticmethod
    def row_major(data: Any, shape: list[int]) -> list[Any]:
        """The tensor's elements in row-major order: ``data`` flat (its first element is no
        list), or nested exactly as deep as ``shape``. What sits at the bottom is a cell,
        checked as every cell is (a list there is a nested value, not a shape)."""

        def nested(d: Any, dims: list[int]) -> list[Any] | None:
            if not dims:
                return [d]
            if not isinstance(d, list) or len(d) != dims[0]:
                return None
            out: list[Any] = []
            for sub in d:
                part = nested(sub, dims[1:])
                if part is None:
                    return None
                out += part
            return out

        if not isinstance(data, list):
            raise Unreadable("shape_mismatch")
        if data and isinstance(data[0], list):
            flat = nested(data, shape if shape else [1])
            if flat is None:
                raise Unreadable("shape_mismatch")  # ragged, or not as deep as the shape
            data = flat
        if len(data) != math.prod(shape):
            raise Unreadable("shape_mismatch")
        return data

    def tensors(self, inputs: list[Any]) -> Read:
        features = set(self.features)
        named: dict[str, list[Any]] = {}
        others: list[tuple[dict[str, Any], list[int]]] = []
        n: int | None = None
        for t in inputs:
            if not self.is_tensor(t):
                raise Unreadable("unsupported_format")
            shape = self.shape(t.get("shape"))
            if shape is None:
                raise Unreadable("shape_mismatch")
            name = t["name"]
            if not isinstance(name, str) or name not in features or name in named:
                others.append((t, shape))
                continue
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise Unreadable("shape_mismatch")
            if n is None:
                n = shape[0]
                self.limit(n)
            elif shape[0] != n:
                raise Unreadable("shape_mismatch")
            named[name] = self.row_major(t["data"], shape)
        if n is not None:
            for values in named.values():
                self.cells(values)
            rows = [
                tuple(named[f][i] if f in named else None for f in self.features) for i in range(n)
            ]
            return Read(rows, len(others) * n, "oip_v2")
        width = len(self.features)
        for t, shape in others:
            if (len(shape) == 2 and shape[1] == width) or (len(shape) == 1 and width == 1):
                self.limit(shape[0])
                flat = self.cells(self.row_major(t["data"], shape))
                rows = [tuple(flat[i * width : (i + 1) * width]) for i in range(shape[0])]
                return Read(rows, (len(others) - 1) * shape[0], "oip_v2")
        if len(others) == 1:
            raise Unreadable("shape_mismatch")  # one batch tensor of another width
        raise Unreadable("no_known_features")

    # MLflow

    def dataframe_split(self, split: Any) -> Read:
        fmt = "mlflow_dataframe_split"
        if not isinstance(split, dict) or not isinstance(split.get("data"), list):
            raise Unreadable("unsupported_format")
        data = split["data"]
        if split.get("columns") is None:
            return self.rows_list(data, fmt)
        names = split["columns"]
        if not isinstance(names, list):
            raise Unreadable("unsupported_format")
        self.limit(len(data))
        if data and not all(isinstance(r, list) and len(r) == len(names) for r in data):
            raise Unreadable("shape_mismatch")
        position: dict[str, int] = {}
        for i, name in enumerate(names):
            if isinstance(name, str) and name in self.features and name not in position:
                position[name] = i
        if not data:
            return Read([], 0, fmt)
        if not position:
            raise Unreadable("no_known_features")
        for i in position.values():
            self.cells([r[i] for r in data])
        rows = [
            tuple(r[position[f]] if f in position else None for f in self.features) for r in data
        ]
        return Read(rows, (len(names) - len(position)) * len(data), fmt)

    def dataframe_records(self, records: Any) -> Read:
        if not isinstance(records, list):
            raise Unreadable("unsupported_format")
        return self.rows_list(records, "mlflow_dataframe_records", named_only=True)


# -- the parser, seen the same way ---------------------------------------------------------


def middleware_read(parser: PayloadParser, body: bytes) -> Read:
    batch = parser.parse(body, "application/json")
    if isinstance(batch, FeatureRow):
        rows = [tuple(batch.values)]
    else:
        assert list(batch.columns) == list(parser.features)
        assert all(len(c) == batch.rows for c in batch.columns.values())
        rows = list(zip(*batch.columns.values(), strict=True))
    assert len(rows) == batch.rows
    return Read(rows, batch.unknown_features, batch.format)


def typed(rows: list[tuple[Any, ...]]) -> list[tuple[tuple[type, Any], ...]]:
    """Rows with each value's type: ``True == 1`` must not hide a bool read as a number."""
    return [tuple((type(v), v) for v in row) for row in rows]


# -- generated payloads --------------------------------------------------------------------


class Payloads:
    """Seeded payloads of one protocol: every documented shape, then broken variants."""

    NAMES = ("f0", "f1", "f2", "u0", "u1")

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def scalar(self) -> Any:
        kind = self.r.randrange(6)
        if kind == 0:
            return self.r.randint(-1000, 1000)
        if kind == 1:
            return round(self.r.uniform(-100, 100), self.r.randrange(0, 6))
        if kind == 2:
            return self.r.choice(["a", "b", "", "f0", "0.5", "é"])
        if kind == 3:
            return self.r.choice([True, False])
        if kind == 4:
            return None
        return self.r.choice([0, 1, 0.0, -0.0, 1e300])

    def cell(self, broken: float = 0.03) -> Any:
        """A single value, or now and then a list or object where one is expected."""
        if self.chance(broken):
            return self.r.choice([[self.scalar()], {"v": self.scalar()}, []])
        return self.scalar()

    def names(self, low: int = 0) -> list[str]:
        return self.r.sample(self.NAMES, self.r.randint(low, len(self.NAMES)))

    def n(self) -> int:
        return self.r.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 11])

    def length(self, n: int, p: float = 0.08) -> int:
        """``n``, or now and then one more or one less."""
        return max(0, n + self.r.choice([-1, 1])) if self.chance(p) else n

    def record(self) -> dict[str, Any]:
        return {name: self.cell() for name in self.names()}

    def positional(self, width: int) -> list[Any]:
        return [self.cell() for _ in range(self.length(width))]

    def column_table(self) -> dict[str, Any]:
        n = self.n()
        obj = {name: [self.cell() for _ in range(self.length(n))] for name in self.names(1)}
        if self.chance(0.1):
            obj[self.r.choice(self.NAMES)] = self.scalar()  # a single value among columns
        return obj

    def index_table(self) -> dict[str, Any]:
        labels = [str(i) for i in range(self.n())]
        obj = {}
        for name in self.names(1):
            keys = labels.copy()
            self.r.shuffle(keys)
            if self.chance(0.1):
                keys = keys[1:] if keys else ["9"]
            obj[name] = {k: self.cell() for k in keys}
        return obj

    def rows(self, *, allow_columns: bool = True) -> Any:
        """What an ``instances`` list (or ``inputs``, or split ``data``) holds."""
        width = self.r.choice([1, 3, 3, 3, 2, 4])
        n = self.n()
        shape = self.r.randrange(8 if allow_columns else 3)
        if shape == 0:
            return [self.record() for _ in range(n)]
        if shape == 1:
            return [self.positional(width) for _ in range(n)]
        if shape == 2:
            return [self.cell() for _ in range(n)]
        if shape == 3:
            return [self.column_table() for _ in range(max(n, 1))]
        if shape == 4:
            return [self.index_table() for _ in range(max(n, 1))]
        if shape == 5:
            return [[self.record() for _ in range(self.n())] for _ in range(max(n, 1))]
        if shape == 6:  # items of different kinds
            makers = [self.record, lambda: self.positional(width), self.cell, self.column_table]
            return [self.r.choice(makers)() for _ in range(max(n, 2))]
        return [[[self.scalar() for _ in range(width)]] for _ in range(max(n, 1))]  # tensors

    def extras(self, doc: dict[str, Any], keys: list[tuple[str, Callable[[], Any]]]) -> None:
        for key, make in keys:
            if self.chance(0.3):
                doc[key] = make()

    # KServe v1

    def kserve_v1(self) -> dict[str, Any]:
        key = "inputs" if self.chance(0.2) else "instances"
        which = self.r.randrange(10)
        if which < 7:
            inner: Any = self.rows()
        elif which == 7:
            inner = self.column_table()  # a columns object in place of the list
        elif which == 8:
            inner = self.record()  # an object of single values in place of the list
        else:
            inner = self.r.choice(["abc", 3, None, True, {"f0": {"0": 1}}])
        doc: dict[str, Any] = {key: inner}
        self.extras(doc, [("parameters", lambda: {"x": 1}), ("id", lambda: "r1")])
        if self.chance(0.03):
            doc["inputs" if key == "instances" else "instances"] = [[1, 2, 3]]
        return doc

    # OIP v2

    def data_for(self, shape: list[int], datatype: str) -> Any:
        def element() -> Any:
            if datatype == "BYTES":
                return self.r.choice(["a", "bb", "", "f1"])
            if datatype == "BOOL":
                return self.r.choice([True, False])
            if datatype.startswith("INT"):
                return self.r.randint(-50, 50)
            return round(self.r.uniform(-5, 5), 3)

        def nest(dims: list[int]) -> Any:
            if not dims:
                return element() if not self.chance(0.01) else [element()]
            return [nest(dims[1:]) for _ in range(dims[0])]

        size = math.prod(shape)
        if self.chance(0.05):
            size = self.length(size, 1.0)
        if self.chance(0.03):
            return self.r.choice(["abc", 3, {"x": 1}])
        if len(shape) > 1 and self.chance(0.5):
            data = nest(shape)
            if self.chance(0.05) and data:
                data[0] = [data[0]]  # a row too deep
            return data
        flat = [element() for _ in range(size)]
        if flat and self.chance(0.03):
            flat[-1] = [flat[-1]]  # a stray list in flat data
        return flat

    def tensor(self, name: Any, shape: Any) -> dict[str, Any]:
        datatype = self.r.choice(["FP32", "FP64", "INT64", "INT32", "BYTES", "BOOL"])
        data = self.data_for(shape, datatype) if Reference.shape(shape) else [1.0]
        t: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype, "data": data}
        if self.chance(0.1):
            t["parameters"] = {"content_type": "str"}
        if self.chance(0.02):
            del t[self.r.choice(["shape", "data", "datatype"])]
        return t

    def oip_v2(self) -> dict[str, Any]:
        n = self.n()
        layout = self.r.randrange(4)
        inputs: list[Any] = []
        if layout <= 1:  # one tensor per feature
            for name in self.names(1):
                rows = self.length(n, 0.05)
                shape: Any = [rows] if self.chance(0.5) else [rows, 1]
                if self.chance(0.05):
                    shape = self.r.choice([[rows, 2], [1, rows], [], [-1], "x", [rows, True]])
                inputs.append(self.tensor(name, shape))
        elif layout == 2:  # one batch tensor, maybe with others
            width = self.r.choice([1, 2, 3, 3, 4])
            inputs.append(self.tensor("input-0", [n, width]))
            if self.chance(0.3):
                inputs.append(self.tensor(self.r.choice(["u0", "mask", "f1"]), [n]))
            self.r.shuffle(inputs)
        else:  # odd ones: a one-dimensional batch, a scalar tensor, a name that is no string
            inputs.append(
                self.r.choice(
                    [
                        self.tensor("input-0", [n]),
                        self.tensor("input-0", []),
                        self.tensor(7, [n]),
                        self.tensor("f0", [n, 1, 1]),
                    ]
                )
            )
        if self.chance(0.04):
            inputs.append(self.r.choice([{"f0": 1.0}, 3, [1, 2]]))  # not a tensor
        if self.chance(0.03):
            inputs = []
        doc: dict[str, Any] = {"inputs": inputs}
        self.extras(
            doc,
            [
                ("id", lambda: "42"),
                ("parameters", lambda: {"content_type": self.r.choice(["pd", "np"])}),
                ("outputs", lambda: [{"name": "predict"}]),
            ],
        )
        return doc

    # MLflow

    def mlflow(self) -> dict[str, Any]:
        which = self.r.randrange(6)
        if which == 0:
            names = [self.r.choice([*self.NAMES, 3]) for _ in range(self.r.randint(0, 5))]
            data = [[self.cell() for _ in range(self.length(len(names)))] for _ in range(self.n())]
            split: Any = {"columns": names, "data": data}
            if self.chance(0.3):
                split["index"] = list(range(len(data)))
            if self.chance(0.05):
                split = self.r.choice([[1, 2], {"columns": "f0", "data": []}, {"columns": names}])
            doc: dict[str, Any] = {"dataframe_split": split}
        elif which == 1:
            doc = {"dataframe_split": {"data": self.rows(allow_columns=False)}}
        elif which == 2:
            records: Any = [self.record() for _ in range(self.n())]
            if self.chance(0.1):
                records = self.r.choice([[[1, 2, 3]], {"f0": 1}, "records"])
            doc = {"dataframe_records": records}
        elif which == 3:
            doc = {"instances": self.rows()}
        elif which == 4:
            doc = {"inputs": self.column_table() if self.chance(0.6) else self.record()}
        else:
            doc = {"inputs": self.rows()}
        self.extras(doc, [("params", lambda: {"temperature": 0.1})])
        return doc


GENERATORS = {
    "kserve_v1": (Payloads.kserve_v1, 1701),
    "oip_v2": (Payloads.oip_v2, 2402),
    "mlflow": (Payloads.mlflow, 3103),
}


def disagreement(parser: PayloadParser, reference: Reference, body: bytes) -> tuple[bool, str]:
    """Whether the parser read ``body``, and how its reading departs from the reference's
    (empty when it does not)."""
    try:
        expected: Read | Unreadable = reference.read(json.loads(body))
    except Unreadable as exc:
        expected = exc
    try:
        got: Read | PayloadError = middleware_read(parser, body)
    except PayloadError as exc:
        assert exc.reason in PAYLOAD_ERROR_REASONS
        got = exc
    if isinstance(got, Read) and isinstance(expected, Read):
        if (typed(got.rows), got.unknown, got.format) == (
            typed(expected.rows),
            expected.unknown,
            expected.format,
        ):
            return True, ""
        return True, f"read differently: {got} != {expected}"
    if isinstance(got, PayloadError) and isinstance(expected, Unreadable):
        if got.reason == expected.reason:
            return False, ""
        return False, f"counted {got.reason}, the reference says {expected.reason}"
    if isinstance(got, Read):
        assert isinstance(expected, Unreadable)
        return True, f"read what the reference cannot ({expected.reason}): {got}"
    return False, f"counted {got.reason} what the reference reads: {expected}"


@pytest.mark.parametrize("protocol", list(GENERATORS))
def test_generated_payloads_are_read_as_the_reference_reads_them_or_counted(protocol):
    make, seed = GENERATORS[protocol]
    gen = Payloads(seed)
    readers = [
        (PayloadParser(features=f, max_rows=MAX_ROWS), Reference(f, MAX_ROWS)) for f in FEATURE_SETS
    ]
    count_only = PayloadParser(features=(), max_rows=MAX_ROWS)
    read = counted = 0
    found: list[str] = []
    deadline = time.monotonic() + 60
    for i in range(PAYLOADS_PER_PROTOCOL):
        assert time.monotonic() < deadline, f"stopped at payload {i}: too slow"
        body = json.dumps(make(gen)).encode()
        try:  # without a baseline: rows counted, or a reason
            count_only.parse(body, "application/json")
        except PayloadError as exc:
            assert exc.reason in PAYLOAD_ERROR_REASONS
        for parser, reference in readers:
            was_read, problem = disagreement(parser, reference, body)
            if problem:
                found.append(f"{len(parser.features)} features, {body[:300]!r}: {problem}")
            read += was_read
            counted += not was_read
    assert not found, f"{len(found)} disagreements:\n" + "\n".join(found[:15])
    # the generator reaches both sides: well-formed payloads and broken ones
    total = PAYLOADS_PER_PROTOCOL * len(readers)
    assert read > total // 5, (read, counted)
    assert counted > total // 10, (read, counted)
