"""Reading a training table into columns: CSV (with a header), Parquet and ``.npz``.

Every reader returns ``{column name: 1-D numpy array}``; numeric columns are float64 with NaN
for missing values, others object arrays. Problems (a ragged CSV, an unsupported Parquet type,
an ``.npz`` that needs pickle) are raised as one :class:`BaselineError`.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from mlwarden.middleware.errors import BaselineError

__all__ = ["read_table"]


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise BaselineError("CSV file is empty: a header row is required", source=source)
        problems = [
            f"header: column {i + 1} has no name" for i, name in enumerate(header) if not name
        ]
        repeated = sorted(n for n, k in Counter(header).items() if k > 1 and n)
        if repeated:
            problems.append(f"header: repeated column names {repeated}")
        cells: list[list[str]] = [[] for _ in header]
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                problems.append(f"line {line}: has {len(row)} fields, the header has {len(header)}")
                if len(problems) >= 20:
                    break
                continue
            for cell_list, cell in zip(cells, row, strict=True):
                cell_list.append(cell)
    if problems:
        raise BaselineError(problems, source=source)
    table: dict[str, np.ndarray] = {}
    for name, column in zip(header, cells, strict=True):
        try:
            # Empty cells are missing; every other cell must parse for the column to be numeric.
            table[name] = np.array([float(c) if c else math.nan for c in column], dtype=np.float64)
        except ValueError:
            table[name] = np.array(column, dtype=object)
    return table


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BaselineError(
            "reading Parquet needs pyarrow: pip install 'mlwarden[parquet]'", source=str(path)
        ) from exc
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ImportError) as exc:
        raise BaselineError(f"cannot read the Parquet file: {exc}", source=str(path)) from exc
    columns: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            # Through float64 so that nulls become NaN in one vectorised step.
            columns[name] = column.cast(pa.float64()).to_numpy()
        elif (
            pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
        ):
            columns[name] = np.array(column.to_pylist(), dtype=object)
        else:
            problems.append(f"columns.{name}: unsupported Parquet type {kind}")
    if problems:
        raise BaselineError(problems, source=str(path))
    return columns


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse to load
        raise BaselineError(f"cannot read the .npz file safely: {exc}", source=source) from exc
    except (OSError, EOFError) as exc:
        raise BaselineError(f"cannot read the .npz file: {exc}", source=source) from exc
    names_key = next((k for k in ("columns", "feature_names") if k in arrays), None)
    matrices = [k for k, a in arrays.items() if a.ndim == 2]
    if names_key is not None:
        names = [str(n) for n in arrays.pop(names_key).ravel()]
        if len(matrices) != 1 or len(arrays) != 1:
            raise BaselineError(
                f"with a {names_key!r} array the archive must hold exactly one 2-D array, "
                f"got {sorted(arrays)}",
                source=source,
            )
        matrix = arrays[matrices[0]]
        if matrix.shape[1] != len(names):
            raise BaselineError(
                f"{names_key}: names {len(names)} columns, the array has {matrix.shape[1]}",
                source=source,
            )
        return {name: matrix[:, i] for i, name in enumerate(names)}
    bad = [k for k, a in arrays.items() if a.ndim != 1]
    if bad:
        raise BaselineError(
            f"arrays {bad} are not one-dimensional: give each column as a 1-D array, or one "
            "2-D array plus a 'columns' array of names",
            source=source,
        )
    if not arrays:
        raise BaselineError("the archive holds no array", source=source)
    return arrays


def read_table(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a reference table by its suffix: ``.csv``, ``.parquet``/``.pq`` or ``.npz``."""
    file = Path(path)
    suffix = file.suffix.lower()
    readers = {
        ".csv": _read_csv,
        ".parquet": _read_parquet,
        ".pq": _read_parquet,
        ".npz": _read_npz,
    }
    if suffix not in readers:
        raise BaselineError(
            f"unknown table format {suffix or '(no suffix)'!r}: expected .csv, .parquet or .npz",
            source=str(path),
        )
    if not file.is_file():
        raise BaselineError(f"file not found: {path}", source=str(path))
    try:
        return readers[suffix](file)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BaselineError(f"cannot read {path}: {exc}", source=str(path)) from exc
