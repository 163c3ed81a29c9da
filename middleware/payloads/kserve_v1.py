"""KServe v1 (and TF-serving's row format): ``{"instances": [...]}``.

KServe reads ``inputs`` like ``instances``; so do MLflow's ``instances`` and its ``inputs`` when
they are not Open Inference Protocol tensors (formats ``kserve_v1`` and ``mlflow_inputs``).
What an ``instances`` list holds, and how it is read:

- objects: each is a small table, as KServe's ``pd.DataFrame(instance)`` reads it — features
  with single values are one row, features with lists of one length (``{"f1": [0.5, -0.7],
  "f2": [1, 2]}``) that many rows; lists of different lengths are ``shape_mismatch``, lists
  mixed with single values ``nested_value`` (see :mod:`~mlwarden.middleware.payloads.rows`);
- lists of objects (``[[{..}, {..}], [{..}]]``, when the first instance starts with an
  object): every object is one row, instance after instance; any other item is
  ``shape_mismatch``;
- lists of values: positional rows in the order of the baseline's features (the only order
  the middleware knows); a row of another length than the baseline's features is
  ``shape_mismatch``;
- values: one per row for a one-feature model; with more features ``shape_mismatch`` (a
  scalar instance is one row of one input, not one feature of a row).

Items of different kinds are ``shape_mismatch``; a list or object where a feature's value is
expected is ``nested_value``. An object of columns in place of the list
(``{"instances": {"f1": [..], "f2": [..]}}``, TF-serving's columnar ``inputs``) is read as
columns.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from mlwarden.middleware.bodies import payload_error
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch

__all__ = ["from_instances"]


def from_instances(b: BatchBuilder, inner: Any, fmt: str = "kserve_v1") -> FeatureBatch:
    """The rows of an ``instances`` list or columns object, labelled ``fmt``."""
    if inner.__class__ is list:
        if inner and inner[0].__class__ is list and inner[0] and inner[0][0].__class__ is dict:
            return _from_lists_of_records(b, inner, fmt)
        if inner and set(map(type, inner)) == {dict}:
            b.check_rows(len(inner))
            return b.from_records(inner, fmt, tables=True)
        return b.from_list(inner, fmt, fmt)
    if inner.__class__ is dict:
        return b.from_columns_or_row(inner, fmt, columns_only=True)
    raise payload_error("unsupported_format", f"{fmt}: expected a list or an object of columns")


def _from_lists_of_records(b: BatchBuilder, instances: list[Any], fmt: str) -> FeatureBatch:
    """``[[{..}, {..}], [{..}]]``: every instance a list of records, one row each."""
    if set(map(type, instances)) != {list}:
        raise payload_error("shape_mismatch", f"{fmt}: instances mix lists of objects and others")
    b.check_rows(sum(map(len, instances)))
    records = list(chain.from_iterable(instances))
    if set(map(type, records)) != {dict}:
        raise payload_error("shape_mismatch", f"{fmt}: instances mix objects and values")
    return b.from_records(records, fmt)
