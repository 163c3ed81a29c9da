"""Live model quality from late labels: the labels as compared, and the scoring windows.

:func:`parse_label` spells a label the way it is compared (a class key or a finite number);
:class:`QualityWindow` (one per model version) keeps the recent (prediction, label) pairs and
turns them into accuracy, precision/recall/F1, calibration error, MAE/RMSE and label delay
when asked (a :class:`QualitySnapshot`). The predictions waiting for their labels are kept
by :mod:`mlwarden.middleware.memory`.

Built for the request path: ``add`` appends to bounded deques (1 to 2 µs); the arithmetic
happens in ``snapshot`` (1 to 2 ms for 10,000 samples). Not thread-safe: call it from the
event loop.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from mlwarden.middleware.baseline import category_key
from mlwarden.middleware.errors import ConfigError, PayloadError

__all__ = [
    "LABEL_REJECTIONS",
    "QualitySnapshot",
    "QualityWindow",
    "Task",
    "parse_label",
]

Task = Literal["classification", "regression"]

#: Every ``PayloadError.reason`` that :func:`parse_label` and :meth:`QualityWindow.add` raise,
#: known up front so that a metric can be labelled with them.
LABEL_REJECTIONS = (
    "label_missing",  # None, "" or NaN
    "label_not_a_class",  # a list, dict, … given as a class label
    "label_not_a_number",  # regression: a bool, a non-numeric string or another object
    "label_not_finite",  # regression: ±inf (NaN is missing)
    "label_not_binary",  # a probability output's label that is neither 1/0 nor positive_class
    "prediction_invalid",  # the remembered prediction itself cannot be scored
)

_NAN = math.nan
_INF = math.inf
# Calibration bins (edges[i], edges[i + 1]], a confidence of 0 in the first; i / 10 rather than
# linspace so that a confidence written 0.3 lands in the bin that ends at 0.3.
_BIN_EDGES = np.array([i / 10 for i in range(11)])


# --------------------------------------------------------------------------- labels


def parse_label(label: object, task: Task) -> str | float:
    """``label`` as it is compared: a class key (classification) or a finite float.

    Classification labels go through :func:`~mlwarden.middleware.baseline.category_key`, the
    spelling the feature windows use: ``True``/``"true"`` → ``"true"``, ``1``/``1.0``/``"1"``
    → ``"1"``, other strings unchanged (case kept). Regression labels are ints, floats or
    numeric strings; booleans are refused as ambiguous. Raises :class:`PayloadError` with a
    reason from :data:`LABEL_REJECTIONS`. Check a label with it *before*
    :meth:`PredictionMemory.take`, which consumes the prediction.
    """
    if task == "classification":
        return _class_key(label)
    if task == "regression":
        return _number(label)
    raise ValueError(f"task: expected one of {', '.join(get_args(Task))}, got {task!r}")


_CONTAINERS = (list, dict, tuple, set)
_NUMBERS = (int, float, str, np.integer, np.floating)
_BOOLEANS = (bool, np.bool_)


def _class_key(value: object) -> str:
    if type(value) is not str and isinstance(value, _CONTAINERS):
        raise PayloadError("label_not_a_class", f"got a {type(value).__name__}")
    key = category_key(value)
    if key is None:
        raise PayloadError("label_missing", f"got {value!r}")
    return key


def _number(value: object) -> float:
    if type(value) is float and value - value == 0.0:  # finite (inf - inf and NaN are NaN)
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PayloadError("label_missing", f"got {value!r}")
    if isinstance(value, _BOOLEANS) or not isinstance(value, _NUMBERS):
        raise PayloadError("label_not_a_number", f"got a {type(value).__name__}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise PayloadError("label_not_a_number", f"got {value!r}") from None
    if number != number:
        raise PayloadError("label_missing", f"got {value!r}")
    if not math.isfinite(number):
        raise PayloadError("label_not_finite", f"got {value!r}")
    return number


# --------------------------------------------------------------------------- window


@dataclass(frozen=True, slots=True, kw_only=True)
class QualitySnapshot:
    """A model version's quality over its window; a figure is None when it is undefined.

    Classification fills ``accuracy`` … ``brier``, regression ``mae`` and ``rmse``; the label
    delay (seconds from prediction to label, nearest-rank quantiles) is filled for both.
    """

    samples: int = 0
    accuracy: float | None = None
    # For ``positive_class``; without one, macro averages over the classes seen.
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    # Over the samples that carried a confidence (``calibration_samples`` of them).
    calibration_samples: int = 0
    calibration_error: float | None = None
    brier: float | None = None
    mae: float | None = None
    rmse: float | None = None
    delay_mean_s: float | None = None
    delay_p50_s: float | None = None
    delay_p90_s: float | None = None


class QualityWindow:
    """One model version's recent (prediction, label) pairs, bounded by count and by age.

    A sample's time is when its label was added, so the window is "the last ``window_s`` of
    labels", at most ``max_samples`` of them (bounded deques: ``add`` only appends).

    Classification compares class keys (see :func:`parse_label`). Precision, recall and F1
    are those of ``positive_class`` (None while undefined: no positive predicted, or none
    true); without a ``positive_class`` they are macro averages over every class seen as a
    prediction or a label in the window, a class's undefined precision or recall counting 0
    (scikit-learn's ``average="macro", zero_division=0``). The calibration error is the
    expected calibration error over 10 equal-width bins of confidence, (0, 0.1] … (0.9, 1]
    with 0 in the first, the confidence taken as the probability of the predicted class and
    the outcome as prediction == label; the Brier score is the top-label one,
    mean((confidence - correct)²), which for two classes is the usual binary Brier score.
    Confidences outside [0, 1] or NaN count as absent. Regression gives MAE and RMSE of
    prediction - label; confidences are ignored.

    Classes are stored as small integer codes (a dict lookup in ``add``) so that ``snapshot``
    counts them with numpy; the code table is compacted to the classes still in the window
    once it holds ``3 * max_samples + 16`` classes, which only a stream of ever-new labels
    reaches.
    """

    __slots__ = (
        "_classes",
        "_classification",
        "_clock",
        "_codes",
        "_confidences",
        "_delays",
        "_errors",
        "_predicted",
        "_times",
        "_true",
        "max_samples",
        "positive_class",
        "task",
        "window_s",
    )

    def __init__(
        self,
        *,
        task: Task,
        positive_class: str | None = None,
        window_s: float = 3600,
        max_samples: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems = []
        if task not in get_args(Task):
            problems.append(
                f"quality.task: expected one of {', '.join(get_args(Task))}, got {task!r}"
            )
        positive = None
        if positive_class is not None:
            if task != "classification":
                problems.append(
                    f"quality.positive_class: only for classification, got {positive_class!r} "
                    f"with task {task!r}"
                )
            positive = category_key(positive_class)
            if positive is None:
                problems.append(f"quality.positive_class: expected a class, got {positive_class!r}")
        if (
            isinstance(window_s, bool)
            or not isinstance(window_s, int | float)
            or not 0 < window_s < math.inf
        ):
            problems.append(f"quality.window_s: expected a number > 0, got {window_s!r}")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            problems.append(
                f"quality.max_samples: expected a whole number >= 1, got {max_samples!r}"
            )
        if problems:
            raise ConfigError(problems)
        self.task: Task = task
        self._classification = task == "classification"
        self.positive_class = positive
        self.window_s = float(window_s)
        self.max_samples = max_samples
        self._clock = clock
        self._times: deque[float] = deque(maxlen=max_samples)
        self._delays: deque[float] = deque(maxlen=max_samples)
        # Classification: class codes and confidences (NaN: none). Regression: the errors.
        self._predicted: deque[int] = deque(maxlen=max_samples)
        self._true: deque[int] = deque(maxlen=max_samples)
        self._confidences: deque[float] = deque(maxlen=max_samples)
        self._errors: deque[float] = deque(maxlen=max_samples)
        self._codes: dict[str, int] = {}
        self._classes: list[str] = []

    def __len__(self) -> int:
        """Samples held (the age bound is applied by :meth:`snapshot`)."""
        return len(self._times)

    def __repr__(self) -> str:
        positive = f", positive_class={self.positive_class!r}" if self.positive_class else ""
        return (
            f"QualityWindow(task={self.task!r}{positive}, window_s={self.window_s}, "
            f"max_samples={self.max_samples}, held={len(self._times)})"
        )

    def add(
        self,
        prediction: str | float,
        label: object,
        confidence: float | None,
        delay_s: float,
    ) -> None:
        """Score one labelled prediction; raises :class:`PayloadError` for an unusable label.

        Nothing is recorded when it raises. A prediction that cannot be scored raises with
        reason ``prediction_invalid``. ``delay_s`` must be a number >= 0 (else ValueError).
        """
        if not 0.0 <= delay_s < _INF:
            raise ValueError(f"delay_s: expected a number >= 0, got {delay_s!r}")
        if self._classification:
            if confidence is None or not 0.0 <= confidence <= 1.0:
                confidence = _NAN
            truth = _class_key(label)
            try:
                predicted = _class_key(prediction)
            except PayloadError as exc:
                raise PayloadError("prediction_invalid", str(exc)) from None
            codes = self._codes
            p = codes.get(predicted)
            y = codes.get(truth)
            if p is None or y is None:
                p, y = self._code_pair(predicted, truth)
            self._predicted.append(p)
            self._true.append(y)
            self._confidences.append(confidence)
        else:
            truth_value = _number(label)
            try:
                predicted_value = _number(prediction)
            except PayloadError as exc:
                raise PayloadError("prediction_invalid", str(exc)) from None
            self._errors.append(predicted_value - truth_value)
        self._delays.append(delay_s)
        self._times.append(self._clock())

    def _code_pair(self, predicted: str, truth: str) -> tuple[int, int]:
        if len(self._classes) + 2 > 3 * self.max_samples + 16:
            self._compact()
        pair = []
        for key in (predicted, truth):
            code = self._codes.get(key)
            if code is None:
                code = self._codes[key] = len(self._classes)
                self._classes.append(key)
            pair.append(code)
        return pair[0], pair[1]

    def _compact(self) -> None:
        """Drop the classes no held sample refers to; recode the samples (amortised O(1))."""
        kept = sorted(set(self._predicted) | set(self._true))
        recode = {old: new for new, old in enumerate(kept)}
        self._classes = [self._classes[old] for old in kept]
        self._codes = {key: code for code, key in enumerate(self._classes)}
        self._predicted = deque(map(recode.__getitem__, self._predicted), self.max_samples)
        self._true = deque(map(recode.__getitem__, self._true), self.max_samples)

    def snapshot(self) -> QualitySnapshot:
        """The figures over the samples of the last ``window_s`` (older ones are dropped)."""
        times = self._times
        horizon = self._clock() - self.window_s
        if times and times[0] < horizon:
            stale = int(np.searchsorted(np.fromiter(times, float, len(times)), horizon))
            columns = (
                times,
                self._delays,
                self._predicted,
                self._true,
                self._confidences,
                self._errors,
            )
            for column in columns:
                if column:
                    for _ in range(stale):
                        column.popleft()
        n = len(times)
        if not n:
            return QualitySnapshot()
        delays = np.sort(np.fromiter(self._delays, float, n))
        delay = {
            "delay_mean_s": float(delays.mean()),
            "delay_p50_s": _nearest_rank(delays, 0.50),
            "delay_p90_s": _nearest_rank(delays, 0.90),
        }
        if not self._classification:
            errors = np.fromiter(self._errors, float, n)
            return QualitySnapshot(
                samples=n,
                mae=float(np.abs(errors).mean()),
                rmse=math.sqrt(float(np.dot(errors, errors)) / n),
                **delay,
            )
        return QualitySnapshot(samples=n, **self._classification_figures(n), **delay)

    def _classification_figures(self, n: int) -> dict[str, Any]:
        k = len(self._classes)
        predicted = np.fromiter(self._predicted, np.intp, n)
        true = np.fromiter(self._true, np.intp, n)
        correct = predicted == true
        n_predicted = np.bincount(predicted, minlength=k)
        n_true = np.bincount(true, minlength=k)
        hits = np.bincount(predicted[correct], minlength=k)
        figures: dict[str, Any] = {"accuracy": int(hits.sum()) / n}
        if self.positive_class is not None:
            code = self._codes.get(self.positive_class)
            tp, p, t = (
                (0, 0, 0)
                if code is None
                else (int(hits[code]), int(n_predicted[code]), int(n_true[code]))
            )
            figures["precision"] = tp / p if p else None
            figures["recall"] = tp / t if t else None
            figures["f1"] = 2 * tp / (p + t) if p + t else None
        else:
            seen = (n_predicted + n_true) > 0
            classes = int(seen.sum())
            figures["precision"] = _share(hits, n_predicted).sum() / classes
            figures["recall"] = _share(hits, n_true).sum() / classes
            figures["f1"] = _share(2 * hits[seen], (n_predicted + n_true)[seen]).sum() / classes
        confidences = np.fromiter(self._confidences, float, n)
        present = ~np.isnan(confidences)
        m = int(present.sum())
        figures["calibration_samples"] = m
        if m:
            confidences = confidences[present]
            outcome = correct[present].astype(float)
            bins = np.clip(np.searchsorted(_BIN_EDGES, confidences, side="left") - 1, 0, 9)
            gap = np.bincount(bins, weights=outcome, minlength=10) - np.bincount(
                bins, weights=confidences, minlength=10
            )
            figures["calibration_error"] = float(np.abs(gap).sum()) / m
            miss = confidences - outcome
            figures["brier"] = float(np.dot(miss, miss)) / m
        for key in ("precision", "recall", "f1"):
            if figures[key] is not None:
                figures[key] = float(figures[key])
        return figures


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole per class, 0 where whole is 0."""
    return np.divide(part, whole, out=np.zeros(len(whole)), where=whole > 0)


def _nearest_rank(ordered: np.ndarray, q: float) -> float:
    """The nearest-rank quantile of a sorted array (a reported p90 is a delay that occurred)."""
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])
