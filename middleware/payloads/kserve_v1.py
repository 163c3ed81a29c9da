"""KServe v1 (and TF-serving's row format): ``{"instances": [...]}``.

``instances`` is a list of objects of named features, a list of positional rows (in the
order of the baseline's features), a list of scalars for a one-feature model, or an object of
columns (``{"instances": {"f1": [..], "f2": [..]}}``). The same shapes are MLflow's
``instances`` and its ``inputs`` when they are not Open Inference Protocol tensors.
"""

from __future__ import annotations

from typing import Any

from mlwarden.middleware.bodies import payload_error
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch

__all__ = ["from_instances"]


def from_instances(b: BatchBuilder, inner: Any, fmt: str = "kserve_v1") -> FeatureBatch:
    """The rows of an ``instances`` list or columns object, labelled ``fmt``."""
    if inner.__class__ is list:
        return b.from_list(inner, fmt, fmt)
    if inner.__class__ is dict:
        return b.from_columns_or_row(inner, fmt, columns_only=True)
    raise payload_error("unsupported_format", f"{fmt}: expected a list or an object of columns")
