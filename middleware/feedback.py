"""Ground truth arriving late: remembered predictions, labels, and ``POST /-/feedback``.

Every scored request gets a request id (:mod:`mlwarden.middleware.request_ids`: the client's
when safe, else 96 random bits); the response carries it. After the response, its predictions
are remembered under it with the time the response ended (bounded by count and age:
:class:`~mlwarden.middleware.memory.PredictionMemory`). A batch answer of N predictions is
remembered as ``<id>#0`` … ``<id>#N-1`` (N is at most ``max_rows``: the answer's reader reads
no more).

Labels come later, through ``POST /-/feedback`` (one ``{"request_id": ..., "label": ...}``,
a list of them, or ``{"labels": [...]}``) or :meth:`Feedback.record`. Each label is joined with
its prediction and added to the live quality window; unknown, expired, duplicate and invalid
ids are counted and reported back, never an error that loses the rest of a batch.

The endpoint wants ``Authorization: Bearer <token>`` (compared in constant time): a wrong or
missing one is a 401. Without a token configured it refuses every label (403), unless
anonymous labels were asked for. Body size and batch length are capped.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from mlwarden.middleware.decision import DecisionThreshold
from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.health_report import LiveQuality
from mlwarden.middleware.memory import LabelStatus, PredictionMemory
from mlwarden.middleware.quality import QualitySnapshot, QualityWindow, parse_label

__all__ = ["Feedback", "FeedbackRefusal", "FeedbackResult"]

_RESULTS = ("accepted", "unknown", "expired", "duplicate", "invalid")


class FeedbackRefusal(Exception):
    """Why a feedback call is refused before its body is read: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FeedbackResult(dict[str, int]):
    """Counts of one feedback call: accepted, unknown, expired, duplicate, invalid."""


_QUALITY_FIGURES = ("accuracy", "precision", "recall", "f1", "calibration_error", "mae", "rmse")
_NO_FIGURES = QualitySnapshot()  # every figure None: no window yet


class Feedback:
    """Remembered predictions, the quality window of this model version, and the labels.

    The window's task (classification or regression) is ``task``, or else what the first
    remembered prediction is (a class or a number). With ``task="classification"`` a numeric
    prediction is a probability, scored as a class by ``decision_threshold``
    (:class:`~mlwarden.middleware.decision.DecisionThreshold`). ``metrics`` (the
    middleware's :class:`~mlwarden.middleware.metrics.MonitorMetrics`) receives the label
    counts, the delays, and at :meth:`publish` the quality gauges. ``clock`` is the memory's
    (monotonic seconds).

    ``token`` guards the endpoint; without one it refuses labels unless ``anonymous``.
    """

    def __init__(
        self,
        *,
        model: str,
        version: str,
        memory: PredictionMemory,
        task: str | None = None,
        positive_class: str | None = None,
        decision_threshold: float = 0.5,
        window_s: float = 3600.0,
        max_samples: int = 10_000,
        token: str | None = None,
        anonymous: bool = False,
        max_body_bytes: int = 16 * 2**20,
        max_batch: int = 10_000,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token and anonymous:
            raise ValueError("anonymous: not with a token (choose one)")
        self.model = model
        self.version = version
        self.memory = memory
        self.window: QualityWindow | None = None
        self._positive_class = positive_class
        self._window_options = {"window_s": window_s, "max_samples": max_samples, "clock": clock}
        if task is not None:
            self.window = self._make_window(task)
        #: Numeric predictions of a classifier are probabilities: how they become classes.
        self.decision: DecisionThreshold | None = (
            DecisionThreshold(decision_threshold, positive_class)
            if task == "classification"
            else None
        )
        self._token = token.encode() if token else None
        self.anonymous = anonymous
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self._clock = clock
        self.totals = {name: 0 for name in _RESULTS}
        self._metrics = metrics
        self._unlabelled_published = 0
        if metrics is not None:
            mv = (model, version)
            self._m_results = {r: metrics.feedback_labels.labels(*mv, r) for r in _RESULTS}
            self._m_delay = metrics.label_delay.labels(*mv)

    @classmethod
    def from_options(cls, o: Any, *, metrics: Any = None) -> Feedback:
        """From the middleware's options (the token already read from the environment)."""
        return cls(
            model=o.model_name,
            version=o.model_version,
            memory=PredictionMemory(
                max_items=o.remember_max_predictions, max_age_s=o.remember_max_age_s
            ),
            task=o.quality_task,
            positive_class=o.positive_class,
            decision_threshold=o.decision_threshold,
            window_s=o.quality_window_s,
            max_samples=o.quality_max_samples,
            token=o.feedback_token,
            anonymous=o.feedback_anonymous,
            max_body_bytes=o.feedback_max_body_bytes,
            max_batch=o.feedback_max_batch,
            metrics=metrics,
        )

    # -- remembering (after the response, off the request path) -------------------------------

    def remember(
        self,
        request_id: bytes,
        classes: list[str],
        values: list[float],
        confidences: list[float],
        *,
        ended: float | None = None,
    ) -> int:
        """Remember an answer's predictions; how many were remembered.

        ``ended`` is when the response ended, a :func:`time.perf_counter` reading (None: now):
        the predictions' age and their labels' delay count from it, however late they are
        remembered. Classes are remembered when the answer has them, else numbers; a
        classifier's answer of confidences only (``{"probability": 0.83}``) is remembered as
        those probabilities. Ids are kept as the header's bytes (a label's id is encoded to
        look one up): no decoding per request.
        """
        predictions: list[str] | list[float]
        if classes:
            predictions = classes
        elif values:
            predictions = values
        elif confidences and self.decision is not None:
            predictions, confidences = confidences, []
        else:
            return 0
        if self.window is None:
            self.window = self._make_window("classification" if classes else "regression")
        at = None if ended is None else self._clock() - (time.perf_counter() - ended)
        remember, version = self.memory.remember, self.version
        n = len(predictions)
        with_conf = len(confidences) == n
        if n == 1:
            remember(request_id, predictions[0], confidences[0] if with_conf else None, version, at)
            return 1
        for i, prediction in enumerate(predictions):
            remember(
                b"%s#%d" % (request_id, i), prediction, confidences[i] if with_conf else None,
                version, at,
            )  # fmt: skip
        return n

    def _make_window(self, task: str) -> QualityWindow:
        # A positive class means nothing to a regression: it is ignored there.
        positive = self._positive_class if task == "classification" else None
        return QualityWindow(
            task=task,
            positive_class=positive,  # type: ignore[arg-type]
            **self._window_options,
        )

    # -- labels ---------------------------------------------------------------------------

    @property
    def has_token(self) -> bool:
        """A token guards the endpoint."""
        return self._token is not None

    def refusal(self, authorization: str | None) -> FeedbackRefusal | None:
        """Why a call with this ``Authorization`` header is refused (None: it is not).

        403 without a token configured (and anonymous labels not asked for), 401 for a
        missing or wrong bearer token (compared in constant time).
        """
        if self._token is None:
            if self.anonymous:
                return None
            return FeedbackRefusal(
                403,
                "labels refused: no feedback token configured (set feedback_token or "
                "MLWARDEN_FEEDBACK_TOKEN)",
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return None
        return FeedbackRefusal(401, "missing or wrong bearer token")

    def parse(self, body: bytes) -> list[Any]:
        """The label entries of a feedback body; ValueError with a message for the client."""
        if len(body) > self.max_body_bytes:
            raise ValueError(f"body above {self.max_body_bytes} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        if isinstance(data, Mapping) and "labels" in data:
            data = data["labels"]
        entries = data if isinstance(data, list) else [data]
        if len(entries) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} labels per call, got {len(entries)}")
        return entries

    def record(self, entries: Iterable[Any]) -> FeedbackResult:
        """Join each ``{"request_id": ..., "label": ...}`` with its prediction."""
        result = FeedbackResult((name, 0) for name in _RESULTS)
        now = self._clock()
        for entry in entries:
            outcome = self._one(entry, now)
            result[outcome] += 1
        for name, count in result.items():
            self.totals[name] += count
            if count and self._metrics is not None:
                self._m_results[name].inc(count)
        self.publish()
        return result

    def _one(self, entry: Any, now: float) -> str:
        if not isinstance(entry, Mapping):
            return "invalid"
        rid, label = entry.get("request_id"), entry.get("label")
        if not isinstance(rid, str) or not rid or len(rid) > 140 or label is None:
            return "invalid"
        window = self.window
        if window is not None:
            # Checked before take(): a label refused after it would use the prediction up.
            try:
                parse_label(label, window.task)
            except PayloadError:
                return "invalid"
        try:  # remembered as the header's bytes: any id sent in them is latin-1
            key = rid.encode("latin-1")
        except UnicodeEncodeError:
            return "unknown"
        taken = self.memory.take(key)
        if isinstance(taken, LabelStatus):
            return taken.value  # unknown, expired, duplicate
        assert window is not None  # made with the first remembered prediction
        prediction, confidence = taken.prediction, taken.confidence
        decision = self.decision
        try:
            if decision is not None and prediction.__class__ is float:
                prediction, confidence = decision.predicted(prediction)  # type: ignore[arg-type]
                label = decision.truth(label)
                if window.positive_class is None:  # F1 of a probability is the positive's
                    window.positive_class = decision.positive
            window.add(prediction, label, confidence, taken.delay_s)
        except (PayloadError, ValueError):
            self.memory.untake(key)  # the prediction waits for a label that can be scored
            return "invalid"
        if self._metrics is not None:
            self._m_delay.observe(taken.delay_s)
        return "accepted"

    # -- reporting ----------------------------------------------------------------------------

    def report(self) -> LiveQuality:
        """The health report's ``quality`` block (also refreshes the gauges)."""
        snap = self.publish()
        memory = self.memory
        decided = memory.labelled + memory.evicted_unlabelled
        figures = snap if snap is not None else _NO_FIGURES
        return LiveQuality(
            task=self.window.task if self.window is not None else None,
            labelled_samples=snap.samples if snap is not None else 0,
            remembered=len(memory),
            unlabelled_ratio=(memory.evicted_unlabelled / decided) if decided else None,
            labels=dict(self.totals),
            accuracy=figures.accuracy,
            precision=figures.precision,
            recall=figures.recall,
            f1=figures.f1,
            calibration_error=figures.calibration_error,
            mae=figures.mae,
            rmse=figures.rmse,
            delay_p50_s=figures.delay_p50_s,
            delay_p90_s=figures.delay_p90_s,
        )

    def publish(self) -> QualitySnapshot | None:
        """Set the quality gauges from a fresh snapshot; the snapshot (None: no window yet)."""
        memory = self.memory
        metrics = self._metrics
        snap = self.window.snapshot() if self.window is not None else None
        if metrics is None:
            return snap
        mv = (self.model, self.version)
        metrics.predictions_remembered.labels(*mv).set(len(memory))
        unlabelled = memory.evicted_unlabelled
        if unlabelled > self._unlabelled_published:
            metrics.predictions_unlabelled.labels(*mv).inc(unlabelled - self._unlabelled_published)
            self._unlabelled_published = unlabelled
        decided = memory.labelled + unlabelled
        if decided:
            metrics.predictions_unlabelled_ratio.labels(*mv).set(unlabelled / decided)
        if snap is not None:
            metrics.model_quality_samples.labels(*mv).set(snap.samples)
            for name in _QUALITY_FIGURES:
                value = getattr(snap, name)
                if value is not None:
                    metrics.model_quality.labels(*mv, name).set(value)
        return snap
