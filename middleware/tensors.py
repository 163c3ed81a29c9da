"""Open Inference Protocol v2 tensors: ``{"name", "shape", "datatype", "data"}``.

The checks and the row-major flattening of a tensor, shared by the request inputs
(:mod:`mlwarden.middleware.payloads.oip_v2`) and the response outputs
(:mod:`mlwarden.middleware.predictions`). ``data`` may be flat or nested as the shape says;
both work without recursion over the payload, bounded by the rank.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

__all__ = ["MAX_RANK", "flatten", "is_tensor", "shape_of"]

#: numpy's own limit; a deeper ``shape`` is hostile, not a tensor.
MAX_RANK = 32


def is_tensor(item: object) -> bool:
    """Whether ``item`` is a tensor object: a dict with a ``name`` and ``data``."""
    return item.__class__ is dict and "name" in item and "data" in item  # type: ignore[operator]


def shape_of(value: object) -> list[int] | None:
    """``value`` if it is a valid shape (a list of at most MAX_RANK sizes >= 0), else None."""
    if value.__class__ is not list or len(value) > MAX_RANK:  # type: ignore[arg-type]
        return None
    shape: list[Any] = value  # type: ignore[assignment]
    for dim in shape:
        if dim.__class__ is not int or dim < 0:
            return None
    return shape


def flatten(data: object, shape: list[int]) -> list[object] | None:
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
