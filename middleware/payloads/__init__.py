"""Inference request payloads → rows of named features, one module per request format.

The parser (:mod:`~mlwarden.middleware.payloads.parser`) turns a request body into a
:class:`FeatureBatch` (columns named only by the baseline, never by the payload) or, for the
common one-object request, a :class:`FeatureRow`. It knows nothing about statistics, metrics
or ASGI; the monitor feeds it bytes and counts the
:class:`~mlwarden.middleware.errors.PayloadError` reasons. Formats understood, detected by
shape, and the module that reads each:

- a JSON object of named features (one row): ``named``; a list of such objects, a list of
  positional rows, pandas column orientation (``{"f1": [..]}``, ``{"f1": {"0": ..}}``):
  ``rows``, the shared row/column machinery;
- KServe v1 / TF-serving ``{"instances": ..}``: ``kserve_v1``;
- the Open Inference Protocol v2 ``{"inputs": [{"name", "shape", "datatype", "data"}, ..]}``:
  ``oip_v2``;
- MLflow serving ``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs``:
  ``mlflow``;
- CSV bodies (``text/csv``, ``application/csv``): ``csv``;
- anything else through a user ``extractor``: ``extractor``.

Every body is hostile until parsed: the work is bounded by the body size, never recursive over
the payload, and row counts are checked before any column is built. Reading the model's
*answers* is :mod:`mlwarden.middleware.predictions`.
"""

from mlwarden.middleware.payloads.parser import (
    PAYLOAD_ERROR_REASONS,
    PAYLOAD_FORMATS,
    PayloadParser,
)
from mlwarden.middleware.payloads.rows import FeatureBatch, FeatureRow

__all__ = [
    "PAYLOAD_ERROR_REASONS",
    "PAYLOAD_FORMATS",
    "FeatureBatch",
    "FeatureRow",
    "PayloadParser",
]
