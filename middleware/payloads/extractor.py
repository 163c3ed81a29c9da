"""A user-supplied extractor: ``feature_extractor(payload) -> rows``.

The hook gets the decoded JSON document (or the raw bytes of a body that is not JSON) and
returns a mapping (one row, or columns; 1-D numpy arrays count as columns) or a sequence of
mappings (records). Whatever it does wrong (raises, returns a bad shape, a mapping whose
methods raise) becomes the reason ``extractor_error``, never a failed request; too many rows
and no known feature keep their own reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlwarden.middleware.bodies import payload_error
from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch

__all__ = ["extract"]


def extract(b: BatchBuilder, extractor: Callable[[Any], Any], payload: Any) -> FeatureBatch:
    """Runs the user hook on ``payload`` and reads what it returned."""
    try:
        result = extractor(payload)
    except Exception as exc:
        raise payload_error("extractor_error", f"{type(exc).__name__}: {exc}") from exc
    try:
        return _from_extracted(b, result)
    except PayloadError as exc:
        if exc.reason in ("too_many_rows", "no_known_features"):
            raise
        raise payload_error("extractor_error", f"returned a bad shape: {exc.detail}") from exc
    except Exception as exc:  # a user Mapping whose methods raise
        raise payload_error("extractor_error", f"{type(exc).__name__}: {exc}") from exc


def _from_extracted(b: BatchBuilder, result: Any) -> FeatureBatch:
    if isinstance(result, Mapping):
        # 1-D numpy arrays are columns too (``{"f1": np.array([...])}``)
        obj = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in result.items()}
        return b.from_columns_or_row(obj, "extractor", columns_only=False)
    if isinstance(result, Sequence) and not isinstance(result, str | bytes | bytearray):
        b.check_rows(len(result))
        rows = [r if r.__class__ is dict else dict(r) for r in result if isinstance(r, Mapping)]
        if len(rows) != len(result):
            raise payload_error("unsupported_format", "a sequence whose items are not all mappings")
        if not rows:
            return b.empty("extractor")
        return b.from_records(rows, "extractor")
    raise payload_error("unsupported_format", f"returned {type(result).__name__}, not rows")
