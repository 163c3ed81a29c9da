"""The payload parser: which format a request body is in, and where it is read.

:class:`PayloadParser` holds one endpoint's configuration (the baseline's features, an
optional extractor, the row limit) and keeps everything request-scoped in locals. It tells
the formats apart by content type and shape, then hands the document to the module that
reads that format:

- no envelope (an object of named features, a list of objects or of positional rows, pandas
  columns): :mod:`~mlwarden.middleware.payloads.named` and
  :mod:`~mlwarden.middleware.payloads.rows`;
- ``instances``: :mod:`~mlwarden.middleware.payloads.kserve_v1`;
- ``inputs`` of tensors: :mod:`~mlwarden.middleware.payloads.oip_v2` (other ``inputs``: as
  instances, format ``mlflow_inputs``);
- ``dataframe_split`` / ``dataframe_records``: :mod:`~mlwarden.middleware.payloads.mlflow`;
- CSV bodies: :mod:`~mlwarden.middleware.payloads.csv`;
- with an extractor, every body: :mod:`~mlwarden.middleware.payloads.extractor`.

A protocol key that is also a baseline feature is read as that feature, not as an envelope;
a body with two envelopes (``instances`` and ``inputs``) is ``unsupported_format``, as the
protocols disagree on which one counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mlwarden.middleware.bodies import (
    CSV,
    JSON,
    TEXT,
    load_json,
    media_kind,
    payload_error,
    starts_like_json,
)
from mlwarden.middleware.payloads.csv import from_csv
from mlwarden.middleware.payloads.extractor import extract
from mlwarden.middleware.payloads.kserve_v1 import from_instances
from mlwarden.middleware.payloads.mlflow import from_dataframe_records, from_dataframe_split
from mlwarden.middleware.payloads.named import from_object
from mlwarden.middleware.payloads.oip_v2 import from_inputs
from mlwarden.middleware.payloads.rows import BatchBuilder, FeatureBatch, FeatureRow
from mlwarden.middleware.tensors import is_tensor

__all__ = ["PAYLOAD_ERROR_REASONS", "PAYLOAD_FORMATS", "PayloadParser"]

#: Why a request payload yielded no features. A Prometheus label value: fixed and small, and
#: listed with what each means in the README. ``shape_mismatch``: lengths disagree (rows,
#: columns, tensors and their shapes, positional rows and the baseline's features);
#: ``nested_value``: a list or object where one feature value is expected. ``too_large`` and
#: ``body_not_read`` are assigned by the middleware, not by the parser.
PAYLOAD_ERROR_REASONS: tuple[str, ...] = (
    "empty_body",
    "not_utf8",
    "invalid_json",
    "too_deep",
    "invalid_csv",
    "unsupported_content_type",
    "unsupported_format",
    "shape_mismatch",
    "nested_value",
    "too_many_rows",
    "no_known_features",
    "extractor_error",
    "too_large",
    "body_not_read",
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


class PayloadParser(BatchBuilder):
    """Turns request bodies into :class:`FeatureBatch` es named by the baseline's features.

    One parser serves every request of an endpoint: it holds configuration only, and
    :meth:`parse` keeps everything request-scoped in locals. It is the
    :class:`~mlwarden.middleware.payloads.rows.BatchBuilder` that the format modules build
    with (a subclass rather than an attribute: no extra lookup on the request path).
    """

    __slots__ = ("_envelopes", "_extractor")

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
        super().__init__(names, max_rows)
        self._extractor = extractor
        # A protocol key that is also a baseline feature is read as that feature.
        self._envelopes = tuple(
            key
            for key in ("instances", "inputs", "dataframe_split", "dataframe_records")
            if key not in self.feature_set
        )

    def __repr__(self) -> str:
        shown = ", ".join(self.features[:3]) + (", ..." if len(self.features) > 3 else "")
        return (
            f"PayloadParser(features=[{shown}] ({len(self.features)}), "
            f"extractor={self._extractor!r}, max_rows={self.max_rows})"
        )

    def parse(self, body: bytes, content_type: str | None) -> FeatureBatch | FeatureRow:
        """The feature rows of one request body; raises :class:`PayloadError` if there are none."""
        batch = self._parse(body, content_type)
        if self.count_only:
            return FeatureBatch(batch.rows, {}, batch.format, 0)
        return batch

    def _parse(self, body: bytes, content_type: str | None) -> FeatureBatch | FeatureRow:
        if not body or body.isspace():
            raise payload_error("empty_body", "the request body is empty")
        kind = media_kind(content_type)
        if kind is JSON or (kind is TEXT and starts_like_json(body)):
            payload = load_json(body)
            if self._extractor is not None:
                return extract(self, self._extractor, payload)
            if payload.__class__ is dict:
                return self._from_dict(payload)
            if payload.__class__ is list:
                return self.from_list(payload, "records", "rows", top_level=True)
            raise payload_error(
                "unsupported_format", f"a JSON {type(payload).__name__} is not a batch"
            )
        if self._extractor is not None:
            return extract(self, self._extractor, body)
        if kind is CSV:
            return from_csv(self, body)
        raise payload_error("unsupported_content_type", f"cannot read {content_type!r}")

    def _from_dict(self, obj: dict[str, Any]) -> FeatureBatch | FeatureRow:
        for key in self._envelopes:
            if key in obj:
                return self._from_envelope(key, obj)
        return from_object(self, obj, "object")

    def _from_envelope(self, key: str, obj: dict[str, Any]) -> FeatureBatch:
        found = [k for k in self._envelopes if k in obj]
        if len(found) > 1:  # KServe would read "inputs", MLflow refuse: neither is a guess
            raise payload_error("unsupported_format", f"several envelopes: {', '.join(found)}")
        inner = obj[key]
        if key == "instances":
            return from_instances(self, inner, "kserve_v1")
        if key == "inputs":
            if inner.__class__ is list and inner and is_tensor(inner[0]):
                return from_inputs(self, inner)
            return from_instances(self, inner, "mlflow_inputs")
        if key == "dataframe_split":
            return from_dataframe_split(self, inner)
        return from_dataframe_records(self, inner)
