"""The Open Inference Protocol v2 (KServe v2, Triton): ``{"inputs": [tensor, ...]}``.

Each tensor is ``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested as the
shape says (checked and flattened by :mod:`mlwarden.middleware.tensors`); what sits at the
depth of the shape is a cell, so a list there (data nested deeper than its shape) is
``nested_value``. ``BYTES`` data are strings, read as they are; request and tensor
``parameters`` do not change the layout. Two layouts:

- one tensor per feature, named like the baseline's features, each of shape ``[N]`` or
  ``[N, 1]`` and all with the same ``N``; other tensors count as unknown features;
- otherwise one unnamed batch tensor of shape ``[N, F]`` whose columns are the baseline's
  features in order (``[N]`` for a one-feature model).
"""

from __future__ import annotations

from typing import Any

from mlwarden.middleware.bodies import SCALAR_TYPES, payload_error
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch, clean
from mlwarden.middleware.tensors import flatten, is_tensor, shape_of

__all__ = ["from_inputs"]


def from_inputs(b: BatchBuilder, tensors: list[Any]) -> FeatureBatch:
    """The rows of an OIP v2 ``inputs`` list: one tensor per feature, or one ``[N, F]``."""
    fmt = "oip_v2"
    feature_set = b.feature_set
    named: dict[str, list[object]] = {}
    others: list[tuple[dict[str, Any], list[int]]] = []
    n: int | None = None
    for tensor in tensors:
        if not is_tensor(tensor):
            raise payload_error("unsupported_format", "every OIP input needs 'name' and 'data'")
        shape = shape_of(tensor.get("shape"))
        if shape is None:
            raise payload_error("shape_mismatch", f"input {tensor['name']!r}: invalid shape")
        name = tensor["name"]
        if name.__class__ is not str or name not in feature_set or name in named:
            others.append((tensor, shape))
            continue
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise payload_error(
                "shape_mismatch", f"input {name!r}: shape {shape}, expected [N] or [N, 1]"
            )
        if n is None:
            n = shape[0]
            b.check_rows(n)
        elif shape[0] != n:
            raise payload_error("shape_mismatch", f"input {name!r} has {shape[0]} rows, not {n}")
        flat = flatten(tensor["data"], shape)
        if flat is None:
            raise payload_error(
                "shape_mismatch", f"input {name!r}: data does not match shape {shape}"
            )
        named[name] = flat
    if n is not None:
        columns = {f: clean(named[f]) if f in named else [None] * n for f in b.features}
        return FeatureBatch(n, columns, fmt, len(others) * n)
    return _from_batch_tensor(b, others)


def _from_batch_tensor(
    b: BatchBuilder, tensors: list[tuple[dict[str, Any], list[int]]]
) -> FeatureBatch:
    """No tensor named as a feature: the first ``[N, F]`` one holds the rows."""
    width = len(b.features)
    for tensor, shape in tensors:
        if (len(shape) == 2 and shape[1] == width) or (len(shape) == 1 and width == 1):
            n = shape[0]
            b.check_rows(n)
            flat = flatten(tensor["data"], shape)
            if flat is None:
                raise payload_error(
                    "shape_mismatch", f"input {tensor['name']!r}: data does not match {shape}"
                )
            if set(map(type, flat)) <= SCALAR_TYPES:
                columns = {f: flat[j::width] for j, f in enumerate(b.features)}
            else:
                columns = {f: clean(flat[j::width]) for j, f in enumerate(b.features)}
            return FeatureBatch(n, columns, "oip_v2", (len(tensors) - 1) * n)
    if b.count_only and tensors:
        n = tensors[0][1][0] if tensors[0][1] else 1
        b.check_rows(n)
        return FeatureBatch(n, {}, "oip_v2", 0)
    if len(tensors) == 1:  # one unnamed batch tensor of the wrong width
        shape = tensors[0][1]
        raise payload_error("shape_mismatch", f"input shape {shape}, expected [N, {width}]")
    raise payload_error("no_known_features", "no OIP input is named as a baseline feature")
