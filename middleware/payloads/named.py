"""A JSON object of named features: the common request, and the hot path.

``{"age": 41, "plan": "pro", ...}`` is one row. Every feature the baseline names is fetched in
one C call (an ``itemgetter`` over the feature names) and handed on as a
:class:`~mlwarden.middleware.payloads.rows.FeatureRow`, without building a list per feature.
An object that lacks a feature, or whose values are lists or objects (pandas column
orientation, ``{"age": [41, 35], ...}``), goes the general way of
:meth:`~mlwarden.middleware.payloads.rows.BatchBuilder.from_columns_or_row`.
"""

from __future__ import annotations

from typing import Any

from mlwarden.middleware.bodies import SCALAR_TYPES
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch, FeatureRow, column_length

__all__ = ["from_object"]


def from_object(b: BatchBuilder, obj: dict[str, Any], fmt: str) -> FeatureBatch | FeatureRow:
    """One object of named features (format ``fmt``), or pandas column orientation."""
    if b.count_only:
        return FeatureBatch(column_length(obj), {}, fmt, 0)
    try:
        values = b.getter(obj)
    except KeyError:
        return b.from_columns_or_row(obj, fmt, columns_only=False)
    if not set(map(type, values)) <= SCALAR_TYPES:
        return b.from_columns_or_row(obj, fmt, columns_only=False)
    return FeatureRow(b.features, values, fmt, len(obj) - len(values))
