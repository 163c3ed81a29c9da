"""Model responses → predictions: numeric values, class labels and confidences.

:class:`PredictionReader` reads what a model answered, for the prediction and confidence
metrics, the health window's mean confidence and the remembered predictions. Out of the box
it understands ``{"predictions": [...]}`` (KServe v1, MLflow, TF-serving), ``{"outputs":
[...]}`` (the Open Inference Protocol v2: the first output predicts, one named like
"probabilities" gives confidences), a top-level list and a bare number or string; items may be
numbers, labels, probability vectors (max → confidence, argmax → class) or objects with keys
such as ``label``, ``prediction``, ``score``; confidences may also sit next to
``predictions`` (``confidences``, ``probabilities``, ``scores``, ...). ``prediction_path`` /
``confidence_path`` (dotted paths or callables: :mod:`mlwarden.middleware.answer_paths`)
point elsewhere. A response body is as hostile as a request's: bounded by ``max_items``,
never recursive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlwarden.middleware.answer_paths import compile_source, describe, resolve
from mlwarden.middleware.bodies import (
    JSON,
    MISSING,
    NUMBER_TYPES,
    SCALAR_TYPES,
    TEXT,
    load_json,
    media_kind,
    payload_error,
    starts_like_json,
)
from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.tensors import flatten, is_tensor, shape_of

__all__ = ["PREDICTION_SKIP_REASONS", "PredictionReader", "Predictions"]

#: Why a response yielded no predictions. A Prometheus label value: fixed and small.
#: ``encoded``, ``too_large``, ``streaming`` and ``error_status`` are assigned by the middleware.
PREDICTION_SKIP_REASONS: tuple[str, ...] = (
    "not_json",
    "invalid_json",
    "encoded",
    "too_large",
    "streaming",
    "error_status",
    "no_predictions",
    "reader_error",
)

_MAX_LABEL = 256  # a class label longer than this is text, not a class; keep memory bounded
_CONFIDENCE_OUTPUTS = frozenset(
    {
        "probabilities",
        "probability",
        "proba",
        "probas",
        "scores",
        "score",
        "confidence",
        "confidences",
    }
)
_CLASS_KEYS = ("label", "class", "predicted_class", "predicted_label", "class_name")
_VALUE_KEYS = ("prediction", "predicted_value", "value")
_CONFIDENCE_KEYS = ("score", "confidence", "probability", "proba")
_VECTOR_KEYS = ("probabilities", "probas", "scores")

# Read as the confidences of the predictions when next to "predictions" (the first found).
_SIBLING_CONFIDENCE_KEYS = (
    "confidences",
    "confidence",
    "probabilities",
    "probability",
    "probas",
    "proba",
    "scores",
    "score",
)


@dataclass(frozen=True, slots=True)
class Predictions:
    """What a model response said: numeric values, class labels and confidences in [0, 1]."""

    values: list[float]
    classes: list[str]
    confidences: list[float]

    @property
    def count(self) -> int:
        return max(len(self.values), len(self.classes))


class _Collector:
    """Accumulates one response's predictions; lives for one :meth:`PredictionReader.read`."""

    __slots__ = ("classes", "confidences", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.classes: list[str] = []
        self.confidences: list[float] = []

    def add_items(self, items: list[Any]) -> None:
        kinds = set(map(type, items))
        if kinds <= NUMBER_TYPES:  # the common regression / score list: no per-item dispatch
            try:
                self.values.extend(map(float, filter(math.isfinite, items)))
                return
            except OverflowError:  # an int too large for a float: take the slow path
                pass
        elif kinds == {str}:
            self.classes.extend(s if len(s) <= _MAX_LABEL else s[:_MAX_LABEL] for s in items)
            return
        for item in items:
            self.add_item(item)

    def add_item(self, item: Any) -> None:
        cls = item.__class__
        if cls is list and len(item) == 1:  # [[0.7], [0.2]]: a column vector of scalars
            item = item[0]
            cls = item.__class__
        if cls is int or cls is float:
            self._add_value(item)
        elif cls is str or cls is bool:
            self.classes.append(_label(item))
        elif cls is list:
            self._add_vector(item, with_class=True)
        elif cls is dict:
            self._add_mapping(item)

    def add_confidence(self, item: Any) -> None:
        cls = item.__class__
        if cls is list and len(item) == 1:
            item = item[0]
            cls = item.__class__
        if cls is int or cls is float:
            self._add_confidence(item)
        elif cls is list or cls is dict:
            self._add_vector(item, with_class=False)

    def _add_value(self, value: float) -> None:
        try:
            if math.isfinite(value):
                self.values.append(float(value))
        except OverflowError:
            pass

    def _add_confidence(self, value: float) -> bool:
        if value.__class__ in NUMBER_TYPES and 0.0 <= value <= 1.0:  # NaN fails both
            self.confidences.append(float(value))
            return True
        return False

    def _add_vector(self, vector: list[Any] | dict[str, Any], *, with_class: bool) -> bool:
        """A probability vector (list, or ``{class: prob}``): max → confidence, argmax → class."""
        if vector.__class__ is dict:
            labels: list[Any] = list(vector)
            probs: list[Any] = list(vector.values())
        else:
            labels, probs = [], vector  # type: ignore[assignment]
        if not probs or not set(map(type, probs)) <= NUMBER_TYPES:
            return False
        try:
            if not all(map(math.isfinite, probs)):
                return False
        except OverflowError:
            return False
        best = max(probs)
        self._add_confidence(best)
        if with_class:
            at = probs.index(best)
            self.classes.append(_label(labels[at]) if labels else str(at))
        return True

    def _add_mapping(self, item: dict[str, Any]) -> None:
        has_class = False
        for key in _CLASS_KEYS:
            label = item.get(key)
            if label.__class__ in SCALAR_TYPES and label is not None:
                self.classes.append(_label(label))
                has_class = True
                break
        for key in _VALUE_KEYS:
            value = item.get(key)
            if value is None:
                continue
            if value.__class__ is int or value.__class__ is float:
                self._add_value(value)
            elif value.__class__ is str or value.__class__ is bool:
                if not has_class:
                    self.classes.append(_label(value))
                    has_class = True
            elif value.__class__ is list and self._add_vector(value, with_class=not has_class):
                return  # a probability vector under "prediction" already gave the confidence
            break
        for key in _CONFIDENCE_KEYS:
            score = item.get(key)
            if score.__class__ in NUMBER_TYPES:
                self._add_confidence(score)  # type: ignore[arg-type]
                return
            if score.__class__ is list or score.__class__ is dict:
                self._add_vector(score, with_class=not has_class)  # type: ignore[arg-type]
                return
        for key in _VECTOR_KEYS:
            vector = item.get(key)
            if (vector.__class__ is list or vector.__class__ is dict) and self._add_vector(
                vector,  # type: ignore[arg-type]
                with_class=not has_class,
            ):
                return


def _label(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    text = value if value.__class__ is str else str(value)
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL]  # type: ignore[return-value]


class PredictionReader:
    """Reads what a model answered from its response body, for prediction and confidence metrics.

    Out of the box it understands ``{"predictions": [...]}`` (KServe v1, MLflow, TF-serving;
    confidences next to it under ``confidences``, ``probabilities``, ``scores``, ...),
    ``{"outputs": [...]}`` (OIP v2), a top-level list and a bare number or string;
    ``prediction_path`` / ``confidence_path`` point elsewhere (each a dotted path, or a
    callable given the parsed document). A dedicated confidence source replaces confidences
    found in the predictions.
    """

    __slots__ = ("_confidence_path", "_max_items", "_prediction_path")

    def __init__(
        self,
        *,
        prediction_path: str | Callable[[Any], Any] | None = None,
        confidence_path: str | Callable[[Any], Any] | None = None,
        max_items: int = 10_000,
    ) -> None:
        self._prediction_path = compile_source(prediction_path, "prediction_path")
        self._confidence_path = compile_source(confidence_path, "confidence_path")
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items must be a positive int, got {max_items!r}")
        self._max_items = max_items

    def __repr__(self) -> str:
        return (
            f"PredictionReader(prediction_path={describe(self._prediction_path)}, "
            f"confidence_path={describe(self._confidence_path)}, max_items={self._max_items})"
        )

    def read(self, body: bytes, content_type: str | None) -> Predictions:
        """The predictions in one response body; raises :class:`PayloadError` when there are none.

        ``PayloadError.reason`` is one of :data:`PREDICTION_SKIP_REASONS`.
        """
        if not body or body.isspace():
            raise payload_error("no_predictions", "the response body is empty")
        kind = media_kind(content_type)
        if not (kind is JSON or (kind is TEXT and starts_like_json(body))):
            raise payload_error("not_json", f"cannot read {content_type!r}")
        try:
            document = load_json(body)
        except PayloadError as exc:  # not_utf8 / too_deep are all "invalid JSON" to a response
            raise payload_error("invalid_json", exc.detail) from exc
        found = _Collector()
        if self._prediction_path is None:
            self._read_default(document, found)
        else:
            node = resolve(document, self._prediction_path, missing="prediction_path")
            self._read_items(node, found)
        if self._confidence_path is not None:
            found.confidences = []
            node = resolve(document, self._confidence_path)
            if node is not MISSING:
                self._read_confidences(node, found)
        if not (found.values or found.classes or found.confidences):
            raise payload_error("no_predictions", "nothing readable as a prediction")
        return Predictions(found.values, found.classes, found.confidences)

    def _read_default(self, document: Any, found: _Collector) -> None:
        if document.__class__ is dict:
            if "predictions" in document:
                self._read_items(document["predictions"], found)
                # {"predictions": [...], "probabilities": [...]}: a confidence source of its
                # own, next to the predictions, replaces what their items carried.
                for key in _SIBLING_CONFIDENCE_KEYS:
                    node = document.get(key)
                    if node is not None:
                        found.confidences = []
                        self._read_confidences(node, found)
                        break
                return
            outputs = document.get("outputs")
            if outputs.__class__ is list and outputs and all(map(is_tensor, outputs)):
                self._read_oip(outputs, found)
                return
        self._read_items(document, found)

    def _read_oip(self, outputs: list[dict[str, Any]], found: _Collector) -> None:
        """The first output predicts; an output named like "probabilities" gives confidences."""
        predicted = confidence = None
        for tensor in outputs:
            name = tensor["name"]
            is_confidence = name.__class__ is str and name.lower() in _CONFIDENCE_OUTPUTS
            if is_confidence and confidence is None:
                confidence = tensor
            elif not is_confidence and predicted is None:
                predicted = tensor
        if predicted is None:  # only probabilities: they give both classes and confidences
            self._read_items(confidence, found)
            return
        self._read_items(predicted, found)
        if confidence is not None:
            found.confidences = []
            self._read_confidences(confidence, found)

    def _rows(self, node: Any) -> list[Any] | None:
        """The items of a predictions node, capped at ``max_items``; a tensor yields its rows."""
        if node.__class__ is dict and is_tensor(node):
            shape = shape_of(node.get("shape"))
            if shape is None or not shape:
                return None
            width = math.prod(shape[1:])
            flat = flatten(node["data"], shape)
            if flat is None:
                return None
            if width == 0:
                return []
            if width == 1:
                return flat[: self._max_items]
            flat = flat[: self._max_items * width]
            return [flat[i : i + width] for i in range(0, len(flat), width)]
        if node.__class__ is list:
            return node[: self._max_items]
        if node is None or node is MISSING:
            return []
        return [node]

    def _read_items(self, node: Any, found: _Collector) -> None:
        items = self._rows(node)
        if items is None:
            raise payload_error(
                "no_predictions", "an output tensor whose data does not fit its shape"
            )
        found.add_items(items)

    def _read_confidences(self, node: Any, found: _Collector) -> None:
        items = self._rows(node)
        for item in items or ():
            found.add_confidence(item)
