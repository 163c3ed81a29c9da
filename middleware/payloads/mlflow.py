"""MLflow serving: ``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs``.

- ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``: rows of cells in the
  order of ``columns`` (without ``columns``: positional rows in the baseline's order);
- ``{"dataframe_records": [{...}, ...]}``: a list of objects of named features;
- ``instances`` and ``inputs`` (when not Open Inference Protocol tensors) take the shapes of
  KServe v1's ``instances`` and are read by :mod:`mlwarden.middleware.payloads.kserve_v1`
  (formats ``kserve_v1`` and ``mlflow_inputs``).
"""

from __future__ import annotations

from typing import Any

from mlwarden.middleware.bodies import payload_error
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch, clean

__all__ = ["from_dataframe_records", "from_dataframe_split"]


def from_dataframe_split(b: BatchBuilder, split: Any) -> FeatureBatch:
    """MLflow ``dataframe_split``: ``{"columns": [...], "data": [[...], ...]}``."""
    fmt = "mlflow_dataframe_split"
    if split.__class__ is not dict or split.get("data").__class__ is not list:
        raise payload_error("unsupported_format", "dataframe_split needs a 'data' list of rows")
    data: list[Any] = split["data"]
    names = split.get("columns")
    if names is None:
        return b.from_list(data, fmt, fmt)
    if names.__class__ is not list:
        raise payload_error("unsupported_format", "dataframe_split 'columns' must be a list")
    n = len(data)
    b.check_rows(n)
    width = len(names)
    if n and (set(map(type, data)) != {list} or set(map(len, data)) != {width}):
        raise payload_error(
            "shape_mismatch", f"dataframe_split rows must be lists of {width} values"
        )
    position: dict[str, int] = {}
    for i, name in enumerate(names):
        if name.__class__ is str and name in b.feature_set:
            position.setdefault(name, i)
    if not n:
        return b.empty(fmt)
    if not position:
        if b.count_only:
            return FeatureBatch(n, {}, fmt, 0)
        raise payload_error(
            "no_known_features", "no baseline feature among dataframe_split columns"
        )
    by_position = list(zip(*data, strict=True))
    columns = {
        f: clean(by_position[position[f]]) if f in position else [None] * n for f in b.features
    }
    return FeatureBatch(n, columns, fmt, (width - len(position)) * n)


def from_dataframe_records(b: BatchBuilder, records: Any) -> FeatureBatch:
    """MLflow ``dataframe_records``: a list of objects of named features."""
    if records.__class__ is not list:
        raise payload_error("unsupported_format", "dataframe_records must be a list of objects")
    return b.from_list(records, "mlflow_dataframe_records", None)
