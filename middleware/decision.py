"""Probability outputs scored as classes: the decision threshold of a binary classifier.

A model that answers ``{"predictions": [0.83]}`` gives the probability of the positive class,
not a class. With ``quality_task="classification"`` such a prediction is remembered as the
probability, and when its label comes :class:`DecisionThreshold` turns both into classes: the
prediction is the positive class when the probability is at least ``decision_threshold``
(0.5 by default), the negative class otherwise; the label is the positive class when it
spells ``positive_class``. The probability stays the confidence (that of the predicted class:
``p`` or ``1 - p``), so that calibration is scored too.

Without a ``positive_class`` the classes are ``1`` and ``0``: labels ``1``/``0``,
``true``/``false`` (any spelling :func:`~mlwarden.middleware.baseline.category_key` gives
those keys) are understood, any other label is refused as ``label_not_binary`` (the model
did not say which class its probability is about). With one (``"churned"``), that label is
the positive class and every other class label is the negative one.
"""

from __future__ import annotations

from mlwarden.middleware.baseline import category_key
from mlwarden.middleware.errors import PayloadError

__all__ = ["DecisionThreshold"]

_POSITIVE_KEYS = frozenset({"1", "true"})
_NEGATIVE_KEYS = frozenset({"0", "false"})


class DecisionThreshold:
    """Turns a positive-class probability and a label into (predicted, true) class keys."""

    __slots__ = ("_given", "negative", "positive", "threshold")

    def __init__(self, threshold: float = 0.5, positive_class: str | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"decision_threshold: expected a number, got {threshold!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"decision_threshold: expected 0 < threshold < 1, got {threshold!r}")
        self.threshold = float(threshold)
        key = category_key(positive_class) if positive_class is not None else None
        self._given = key is not None
        #: The class key a probability at or above the threshold predicts.
        self.positive = key if key is not None else "1"
        #: The class key below it (only compared with, never a label a client needs to send).
        self.negative = {"1": "0", "true": "false"}.get(self.positive, f"not {self.positive}")

    def __repr__(self) -> str:
        return f"DecisionThreshold(threshold={self.threshold}, positive={self.positive!r})"

    def predicted(self, probability: float) -> tuple[str, float]:
        """The class a probability predicts, and the probability of that class.

        A number outside [0, 1] is not a probability: PayloadError ``prediction_invalid``.
        """
        if not 0.0 <= probability <= 1.0:  # NaN fails too
            raise PayloadError(
                "prediction_invalid", f"{probability!r} is not a probability in [0, 1]"
            )
        if probability >= self.threshold:
            return self.positive, probability
        return self.negative, 1.0 - probability

    def truth(self, label: object) -> str:
        """The class key of ``label`` (positive or negative); PayloadError when it is neither.

        ``label`` is already known to be a class (:func:`~mlwarden.middleware.quality.parse_label`).
        """
        key = category_key(label)
        if key is None:
            raise PayloadError("label_missing", f"got {label!r}")
        if key == self.positive:
            return self.positive
        if self._given or key in _NEGATIVE_KEYS:
            return self.negative
        if key in _POSITIVE_KEYS:  # "true" where the positive class is spelled "1"
            return self.positive
        raise PayloadError(
            "label_not_binary",
            f"got {label!r}; the model answers a probability: set positive_class to the class "
            f"it is the probability of, or send 1/0",
        )
