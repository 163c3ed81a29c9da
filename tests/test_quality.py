"""Late labels: the prediction memory's statuses and counters, and live quality figures.

Every figure is checked against a direct computation on the same pairs (by formula always,
and with scikit-learn, which the test extra brings); windows and ages run on a fake clock.
"""

from __future__ import annotations

import math
import random
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from mlwarden.middleware.decision import DecisionThreshold
from mlwarden.middleware.errors import ConfigError, PayloadError
from mlwarden.middleware.memory import LabelStatus, PredictionMemory, Remembered
from mlwarden.middleware.quality import (
    LABEL_REJECTIONS,
    QualitySnapshot,
    QualityWindow,
    parse_label,
)
from tests.doubles import FakeClock

pytestmark = pytest.mark.floor

TOL = 1e-9


# --------------------------------------------------------------------------- references


def _binary_reference(pairs: Sequence[tuple[str, str]], positive: str) -> dict[str, float]:
    tp = sum(1 for p, y in pairs if p == positive and y == positive)
    fp = sum(1 for p, y in pairs if p == positive and y != positive)
    fn = sum(1 for p, y in pairs if p != positive and y == positive)
    return {
        "accuracy": sum(1 for p, y in pairs if p == y) / len(pairs),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
    }


def _macro_reference(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    classes = sorted({p for p, _ in pairs} | {y for _, y in pairs})
    precisions, recalls, f1s = [], [], []
    for c in classes:
        tp = sum(1 for p, y in pairs if p == c and y == c)
        fp = sum(1 for p, y in pairs if p == c and y != c)
        fn = sum(1 for p, y in pairs if p != c and y == c)
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": sum(1 for p, y in pairs if p == y) / len(pairs),
        "precision": sum(precisions) / len(classes),
        "recall": sum(recalls) / len(classes),
        "f1": sum(f1s) / len(classes),
    }


def _ece_reference(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Expected calibration error, bins (i/10, (i+1)/10] and 0 in the first, by loops."""
    n = len(confidences)
    total = 0.0
    for i in range(10):
        low, high = i / 10, (i + 1) / 10
        members = [
            k for k, c in enumerate(confidences) if (low < c <= high) or (i == 0 and c == 0.0)
        ]
        if members:
            accuracy = sum(correct[k] for k in members) / len(members)
            mean_confidence = sum(confidences[k] for k in members) / len(members)
            total += len(members) / n * abs(accuracy - mean_confidence)
    return total


def _stream(
    rng: random.Random,
    n: int,
    accuracy: float,
    classes: Sequence[str] = ("fraud", "ok"),
) -> list[tuple[str, str, float]]:
    """(prediction, label, confidence) with exactly round(accuracy * n) correct pairs."""
    correct = [True] * round(accuracy * n) + [False] * (n - round(accuracy * n))
    rng.shuffle(correct)
    out = []
    for hit in correct:
        label = rng.choice(classes)
        prediction = label if hit else rng.choice([c for c in classes if c != label])
        out.append((prediction, label, rng.random()))
    return out


def _assert_close(snapshot: QualitySnapshot, expected: dict[str, float]) -> None:
    for key, value in expected.items():
        got = getattr(snapshot, key)
        assert got is not None and abs(got - value) <= TOL, (key, got, value)


# --------------------------------------------------------------------------- quality


def test_two_versions_report_their_own_accuracy_precision_recall_f1() -> None:
    rng = random.Random(7)
    streams = {"v1": _stream(rng, 4_000, 0.95), "v2": _stream(rng, 4_000, 0.80)}
    windows = {
        version: QualityWindow(task="classification", positive_class="fraud", clock=FakeClock())
        for version in streams
    }
    for version, stream in streams.items():
        for prediction, label, confidence in stream:
            windows[version].add(prediction, label, confidence, delay_s=5.0)
    for version, stream in streams.items():
        snapshot = windows[version].snapshot()
        pairs = [(p, y) for p, y, _ in stream]
        assert snapshot.samples == 4_000
        _assert_close(snapshot, _binary_reference(pairs, "fraud"))
    assert windows["v1"].snapshot().accuracy == pytest.approx(0.95, abs=TOL)
    assert windows["v2"].snapshot().accuracy == pytest.approx(0.80, abs=TOL)


def test_figures_agree_with_scikit_learn() -> None:
    from sklearn import metrics  # the test extra brings scikit-learn

    rng = random.Random(11)
    for accuracy in (0.95, 0.80):
        stream = _stream(rng, 3_000, accuracy, classes=("a", "b", "c"))
        binary = QualityWindow(task="classification", positive_class="b", clock=FakeClock())
        macro = QualityWindow(task="classification", clock=FakeClock())
        for prediction, label, confidence in stream:
            binary.add(prediction, label, confidence, 1.0)
            macro.add(prediction, label, confidence, 1.0)
        y_pred = [p for p, _, _ in stream]
        y_true = [y for _, y, _ in stream]
        # One class's figures in a multi-class stream: labels=[it], no averaging.
        for window, options in (
            (binary, {"labels": ["b"], "average": None}),
            (macro, {"average": "macro"}),
        ):
            expected = {
                "precision": metrics.precision_score(y_true, y_pred, zero_division=0, **options),
                "recall": metrics.recall_score(y_true, y_pred, zero_division=0, **options),
                "f1": metrics.f1_score(y_true, y_pred, zero_division=0, **options),
            }
            expected = {key: float(np.ravel(value)[0]) for key, value in expected.items()}
            expected["accuracy"] = metrics.accuracy_score(y_true, y_pred)
            _assert_close(window.snapshot(), expected)


def test_macro_average_counts_a_class_never_predicted_as_zero_precision() -> None:
    pairs = [("a", "a"), ("a", "c"), ("b", "b"), ("b", "a"), ("a", "a"), ("b", "c")]
    window = QualityWindow(task="classification", clock=FakeClock())
    for p, y in pairs:
        window.add(p, y, None, 0.0)
    _assert_close(window.snapshot(), _macro_reference(pairs))
    assert window.snapshot().precision == pytest.approx((2 / 3 + 1 / 3 + 0) / 3, abs=TOL)


def test_samples_older_than_window_s_are_left_out() -> None:
    clock = FakeClock()
    window = QualityWindow(task="classification", positive_class="fraud", window_s=60, clock=clock)
    rng = random.Random(3)
    old, new = _stream(rng, 500, 0.5), _stream(rng, 700, 0.9)
    for p, y, c in old:
        window.add(p, y, c, 1.0)
    clock.now += 30
    for p, y, c in new:
        window.add(p, y, c, 1.0)
    assert window.snapshot().samples == 1_200
    clock.now += 30.5  # the first batch is now 60.5 s old, the second 30.5 s
    snapshot = window.snapshot()
    assert snapshot.samples == 700
    _assert_close(snapshot, _binary_reference([(p, y) for p, y, _ in new], "fraud"))
    clock.now += 31
    assert window.snapshot() == QualitySnapshot()


def test_only_the_last_max_samples_count() -> None:
    window = QualityWindow(
        task="classification", positive_class="fraud", max_samples=1_000, clock=FakeClock()
    )
    stream = _stream(random.Random(5), 2_500, 0.8)
    for p, y, c in stream:
        window.add(p, y, c, 1.0)
    snapshot = window.snapshot()
    assert snapshot.samples == len(window) == 1_000
    _assert_close(snapshot, _binary_reference([(p, y) for p, y, _ in stream[-1_000:]], "fraud"))
    confidences = [c for _, _, c in stream[-1_000:]]
    correct = [p == y for p, y, _ in stream[-1_000:]]
    assert snapshot.calibration_error == pytest.approx(
        _ece_reference(confidences, correct), abs=TOL
    )


def test_calibration_error_and_brier_match_the_formulas() -> None:
    rng = random.Random(13)
    window = QualityWindow(task="classification", clock=FakeClock())
    confidences: list[float] = []
    correct: list[bool] = []
    # Bin edges themselves (0, 0.3, 1) must land where the formula puts them.
    edges = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
    for k in range(5_000):
        confidence = edges[k % len(edges)] if k < 600 else rng.random()
        hit = rng.random() < confidence  # roughly calibrated, not exactly
        label = rng.choice(["x", "y", "z"])
        prediction = label if hit else "w"
        window.add(prediction, label, confidence, 0.0)
        confidences.append(confidence)
        correct.append(hit)
    for _ in range(100):  # no confidence: counted in accuracy, not in calibration
        window.add("x", "x", None, 0.0)
    window.add("x", "y", float("nan"), 0.0)
    window.add("x", "y", 1.5, 0.0)
    snapshot = window.snapshot()
    assert snapshot.samples == 5_102
    assert snapshot.calibration_samples == 5_000
    assert snapshot.calibration_error == pytest.approx(
        _ece_reference(confidences, correct), abs=TOL
    )
    brier = sum((c - h) ** 2 for c, h in zip(confidences, correct, strict=True)) / 5_000
    assert snapshot.brier == pytest.approx(brier, abs=TOL)


def test_a_perfectly_calibrated_bin_scores_zero() -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    for k in range(10):
        window.add("a", "a" if k < 7 else "b", 0.7, 0.0)
    assert window.snapshot().calibration_error == pytest.approx(0.0, abs=TOL)


def test_no_confidences_no_calibration() -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    window.add("a", "a", None, 0.0)
    snapshot = window.snapshot()
    assert snapshot.calibration_samples == 0
    assert snapshot.calibration_error is None and snapshot.brier is None


def test_regression_mae_and_rmse_match_numpy() -> None:
    rng = np.random.default_rng(17)
    predictions = rng.normal(10, 3, 5_000)
    labels = predictions + rng.normal(0, 1.5, 5_000)
    window = QualityWindow(task="regression", max_samples=4_000, clock=FakeClock())
    for p, y in zip(predictions.tolist(), labels.tolist(), strict=True):
        window.add(p, y, None, 2.0)
    errors = predictions[-4_000:] - labels[-4_000:]
    snapshot = window.snapshot()
    assert snapshot.samples == 4_000
    assert snapshot.mae == pytest.approx(float(np.mean(np.abs(errors))), abs=TOL)
    assert snapshot.rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))), abs=TOL)
    assert snapshot.accuracy is None and snapshot.calibration_error is None


def test_regression_accepts_ints_and_numeric_strings() -> None:
    window = QualityWindow(task="regression", clock=FakeClock())
    window.add(3, "5.5", None, 0.0)
    window.add(np.float32(1.0), np.int64(2), None, 0.0)
    snapshot = window.snapshot()
    assert snapshot.mae == pytest.approx(1.75)
    assert snapshot.rmse == pytest.approx(math.sqrt((2.5**2 + 1) / 2))


def test_label_delay_mean_and_nearest_rank_quantiles() -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    delays = [float(d) for d in range(1, 101)]
    random.Random(1).shuffle(delays)
    for d in delays:
        window.add("a", "a", None, d)
    snapshot = window.snapshot()
    assert snapshot.delay_mean_s == pytest.approx(50.5)
    assert snapshot.delay_p50_s == 50.0
    assert snapshot.delay_p90_s == 90.0


def test_empty_window_has_no_figures() -> None:
    snapshot = QualityWindow(task="classification", clock=FakeClock()).snapshot()
    assert snapshot == QualitySnapshot()
    assert snapshot.samples == 0 and snapshot.accuracy is None and snapshot.delay_p50_s is None


def test_positive_class_never_seen_leaves_precision_and_recall_undefined() -> None:
    window = QualityWindow(task="classification", positive_class="fraud", clock=FakeClock())
    window.add("ok", "ok", 0.9, 0.0)
    snapshot = window.snapshot()
    assert snapshot.accuracy == 1.0
    assert (snapshot.precision, snapshot.recall, snapshot.f1) == (None, None, None)


def test_no_positive_predicted_leaves_precision_undefined_and_recall_zero() -> None:
    window = QualityWindow(task="classification", positive_class="fraud", clock=FakeClock())
    window.add("ok", "fraud", 0.9, 0.0)
    snapshot = window.snapshot()
    assert (snapshot.precision, snapshot.recall, snapshot.f1) == (None, 0.0, 0.0)


@pytest.mark.parametrize(
    ("prediction", "label"),
    [(True, "true"), ("TRUE", True), (1, "1"), (1.0, 1), ("1", np.int64(1)), ("yes", "yes")],
)
def test_classes_compare_by_one_spelling(prediction: object, label: object) -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    window.add(prediction, label, None, 0.0)  # type: ignore[arg-type]
    assert window.snapshot().accuracy == 1.0


def test_class_case_is_kept() -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    window.add("Fraud", "fraud", None, 0.0)
    assert window.snapshot().accuracy == 0.0


@pytest.mark.parametrize(
    ("task", "label", "reason"),
    [
        ("classification", None, "label_missing"),
        ("classification", "", "label_missing"),
        ("classification", float("nan"), "label_missing"),
        ("classification", ["a"], "label_not_a_class"),
        ("regression", None, "label_missing"),
        ("regression", float("nan"), "label_missing"),
        ("regression", " ", "label_missing"),
        ("regression", "abc", "label_not_a_number"),
        ("regression", True, "label_not_a_number"),
        ("regression", [1.0], "label_not_a_number"),
        ("regression", float("inf"), "label_not_finite"),
        ("regression", "-inf", "label_not_finite"),
    ],
)
def test_invalid_labels_are_rejected_with_a_reason(task: str, label: object, reason: str) -> None:
    window = QualityWindow(task=task, clock=FakeClock())  # type: ignore[arg-type]
    prediction = "a" if task == "classification" else 1.0
    with pytest.raises(PayloadError) as caught:
        window.add(prediction, label, None, 0.0)
    assert caught.value.reason == reason
    assert reason in LABEL_REJECTIONS
    with pytest.raises(PayloadError):
        parse_label(label, task)  # type: ignore[arg-type]
    assert len(window) == 0 and window.snapshot().samples == 0


@pytest.mark.parametrize(("task", "prediction"), [("classification", None), ("regression", "abc")])
def test_an_unscorable_prediction_is_rejected_as_such(task: str, prediction: object) -> None:
    window = QualityWindow(task=task, clock=FakeClock())  # type: ignore[arg-type]
    with pytest.raises(PayloadError) as caught:
        window.add(prediction, "1", None, 0.0)  # type: ignore[arg-type]
    assert caught.value.reason == "prediction_invalid"
    assert len(window) == 0


def test_a_confidence_that_is_not_a_number_records_nothing() -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    with pytest.raises(TypeError):
        window.add("a", "a", "high", 0.0)  # type: ignore[arg-type]
    assert len(window) == 0
    window.add("a", "b", 0.75, 0.0)
    assert window.snapshot().accuracy == 0.0


def test_a_negative_delay_is_a_caller_error() -> None:
    window = QualityWindow(task="classification", clock=FakeClock())
    with pytest.raises(ValueError, match="delay_s"):
        window.add("a", "a", None, -1.0)
    assert len(window) == 0


def test_ever_new_classes_keep_the_code_table_bounded() -> None:
    window = QualityWindow(task="classification", max_samples=10, clock=FakeClock())
    pairs = [(f"p{k % 50}", f"y{k}") for k in range(1_000)] + [("a", "a"), ("b", "a")]
    for p, y in pairs:
        window.add(p, y, None, 0.0)
    assert len(window._classes) <= 3 * 10 + 16
    _assert_close(window.snapshot(), _macro_reference(pairs[-10:]))


@pytest.mark.parametrize(
    "options",
    [
        {"task": "ranking"},
        {"task": "regression", "positive_class": "a"},
        {"task": "classification", "positive_class": ""},
        {"task": "classification", "window_s": 0},
        {"task": "classification", "window_s": float("inf")},
        {"task": "classification", "max_samples": 0},
        {"task": "classification", "max_samples": True},
    ],
)
def test_invalid_window_options_are_rejected(options: dict) -> None:
    with pytest.raises(ConfigError, match=r"quality\."):
        QualityWindow(**options)


def test_window_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        QualityWindow(task="ranking", window_s=-1, max_samples=0)  # type: ignore[arg-type]
    assert len(caught.value.problems) == 3


# --------------------------------------------------------------------------- memory


def test_take_hands_over_the_prediction_with_its_time_and_delay() -> None:
    clock = FakeClock()
    memory = PredictionMemory(clock=clock)
    memory.remember("r1", "fraud", 0.93, "v2")
    clock.now += 12.5
    got = memory.take("r1")
    assert got == Remembered("r1", "fraud", 0.93, "v2", remembered_at=1000.0, delay_s=12.5)
    assert (memory.labelled, memory.pending, len(memory)) == (1, 0, 1)


def test_a_missing_or_nan_confidence_comes_back_as_none() -> None:
    memory = PredictionMemory(clock=FakeClock())
    memory.remember("a", 3.25, None, "v1")
    memory.remember("b", 1.0, float("nan"), "v1")
    a, b = memory.take("a"), memory.take("b")
    assert isinstance(a, Remembered) and isinstance(b, Remembered)
    assert (a.prediction, a.confidence, b.confidence) == (3.25, None, None)


def test_labels_out_of_order_are_all_joined() -> None:
    memory = PredictionMemory(clock=FakeClock())
    for k in range(100):
        memory.remember(f"r{k}", f"c{k % 3}", None, "v1")
    order = list(range(100))
    random.Random(2).shuffle(order)
    for k in order:
        got = memory.take(f"r{k}")
        assert isinstance(got, Remembered) and got.prediction == f"c{k % 3}"
    assert (memory.labelled, memory.pending, len(memory)) == (100, 0, 100)


def test_a_second_label_is_a_duplicate_and_an_unseen_id_is_unknown() -> None:
    memory = PredictionMemory(clock=FakeClock())
    memory.remember("r1", "ok", None, "v1")
    assert isinstance(memory.take("r1"), Remembered)
    assert memory.take("r1") is LabelStatus.DUPLICATE
    assert memory.take("nope") is LabelStatus.UNKNOWN
    assert memory.labelled == 1
    assert LabelStatus.DUPLICATE == "duplicate"  # usable as a metric label value


def test_predictions_older_than_max_age_expire() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_age_s=100, clock=clock)
    memory.remember("old", "a", None, "v1")
    memory.remember("old-labelled", "a", None, "v1")
    assert isinstance(memory.take("old-labelled"), Remembered)
    clock.now += 60
    memory.remember("young", "b", None, "v1")
    clock.now += 40.5  # "old…" are 100.5 s old, "young" 40.5 s
    assert memory.take("old") is LabelStatus.EXPIRED
    assert memory.take("old-labelled") is LabelStatus.DUPLICATE
    assert isinstance(memory.take("young"), Remembered)
    assert memory.take("never") is LabelStatus.UNKNOWN
    assert (memory.remembered, memory.evicted_unlabelled, memory.evicted_labelled) == (3, 1, 1)
    assert (len(memory), memory.pending, memory.replaced) == (1, 0, 0)


def test_a_prediction_remembered_late_counts_its_age_and_delay_from_its_own_time() -> None:
    """The middleware remembers in batches, after the answers: ``at`` is when each was
    answered, so a record may sit behind a younger one; it still expires by its own age."""
    clock = FakeClock()
    memory = PredictionMemory(max_age_s=10, clock=clock)
    memory.remember("young", "a", None, "v1", at=clock.now - 1)
    memory.remember("answered-first", "a", None, "v1", at=clock.now - 8)  # remembered after
    memory.remember("fresh", "a", None, "v1", at=clock.now - 8)
    clock.now += 3  # "answered-first" and "fresh" are 11 s old, "young" 4 s
    assert memory.take("answered-first") is LabelStatus.EXPIRED
    got = memory.take("young")
    assert isinstance(got, Remembered) and got.delay_s == 4 and got.remembered_at == 999.0
    assert memory.take("fresh") is LabelStatus.EXPIRED  # asked twice: still expired
    assert memory.take("fresh") is LabelStatus.EXPIRED
    assert memory.labelled == 1


def test_untake_puts_a_prediction_back_for_a_label_that_can_be_scored() -> None:
    memory = PredictionMemory(clock=FakeClock())
    memory.remember("r1", 0.8, None, "v1")
    assert isinstance(memory.take("r1"), Remembered)
    memory.untake("r1")
    memory.untake("never-seen")  # nothing to undo: nothing happens
    assert (memory.labelled, memory.pending) == (0, 1)
    assert isinstance(memory.take("r1"), Remembered)


def test_expire_evicts_old_predictions_without_traffic() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_age_s=10, clock=clock)
    for k in range(5):
        memory.remember(f"r{k}", "a", None, "v1")
        clock.now += 1
    clock.now += 6  # r0 is 11 s old, r4 7 s
    memory.expire()
    assert (len(memory), memory.evicted_unlabelled, memory.pending) == (4, 1, 4)
    clock.now += 100
    memory.expire()
    assert (len(memory), memory.evicted_unlabelled, memory.pending) == (0, 5, 0)


def test_the_oldest_predictions_are_evicted_beyond_max_items() -> None:
    memory = PredictionMemory(max_items=100, clock=FakeClock())
    for k in range(250):
        memory.remember(f"r{k}", "a", None, "v1")
        if k in (10, 120):
            assert isinstance(memory.take(f"r{k}"), Remembered)
        assert len(memory) <= 100
    assert len(memory) == 100
    assert memory.take("r149") is LabelStatus.EXPIRED
    assert memory.take("r120") is LabelStatus.DUPLICATE  # labelled, then evicted
    assert isinstance(memory.take("r150"), Remembered)
    assert isinstance(memory.take("r249"), Remembered)
    assert (memory.remembered, memory.evicted_unlabelled, memory.evicted_labelled) == (250, 148, 2)
    assert (memory.labelled, memory.pending) == (4, 98)


def test_a_second_prediction_for_an_id_replaces_the_first() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_items=3, clock=clock)
    memory.remember("r1", "a", 0.5, "v1")
    clock.now += 1
    memory.remember("r1", "b", 0.6, "v2")
    assert (memory.replaced, len(memory), memory.pending) == (1, 1, 1)
    got = memory.take("r1")
    assert isinstance(got, Remembered)
    assert (got.prediction, got.confidence, got.version, got.remembered_at) == (
        "b",
        0.6,
        "v2",
        1001.0,
    )
    memory.remember("r1", "c", None, "v1")  # a labelled prediction replaced: new, unlabelled
    assert (memory.replaced, memory.pending) == (2, 1)
    assert isinstance(memory.take("r1"), Remembered)
    # The replaced slots are emptied, not evicted: nothing counts as evicted.
    for k in range(3):
        memory.remember(f"x{k}", "a", None, "v1")
    assert (memory.evicted_unlabelled, memory.evicted_labelled) == (0, 1)
    assert memory.take("r1") is LabelStatus.DUPLICATE
    assert len(memory) == 3


def test_a_bad_confidence_is_refused_before_anything_is_written() -> None:
    memory = PredictionMemory(max_items=2, clock=FakeClock())
    memory.remember("r0", "a", "0.25", "v1")  # type: ignore[arg-type]  # float() takes it
    with pytest.raises(ValueError):
        memory.remember("r1", "a", "high", "v1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        memory.remember("r1", "a", [0.5], "v1")  # type: ignore[arg-type]
    assert (len(memory), memory.remembered) == (1, 1)
    for k in range(2, 6):  # the ring stays consistent through evictions
        memory.remember(f"r{k}", "a", None, "v1")
    assert memory.take("r1") is LabelStatus.UNKNOWN
    assert memory.take("r0") is LabelStatus.EXPIRED
    assert (len(memory), memory.evicted_unlabelled) == (2, 3)


def test_expired_ids_are_remembered_within_their_bound() -> None:
    memory = PredictionMemory(max_items=1, max_expired_ids=4, clock=FakeClock())
    for k in range(11):
        memory.remember(f"r{k}", "a", None, "v1")
    # r0…r9 were evicted; two generations of two ids each keep the last 2 to 4 of them.
    statuses = {f"r{k}": memory.take(f"r{k}") for k in range(10)}
    assert statuses["r9"] is LabelStatus.EXPIRED and statuses["r8"] is LabelStatus.EXPIRED
    assert all(statuses[f"r{k}"] is LabelStatus.UNKNOWN for k in range(6))
    assert memory.evicted_unlabelled == 10


def test_expired_ids_can_be_switched_off() -> None:
    memory = PredictionMemory(max_items=1, max_expired_ids=0, clock=FakeClock())
    memory.remember("r0", "a", None, "v1")
    memory.remember("r1", "a", None, "v1")
    assert memory.take("r0") is LabelStatus.UNKNOWN
    assert memory.evicted_unlabelled == 1


def test_a_batch_of_10000_labels() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_items=15_000, max_age_s=3600, clock=clock)
    for k in range(20_000):  # r0…r4999 are evicted by count
        memory.remember(f"r{k}", "fraud" if k % 7 == 0 else "ok", k / 20_000, "v1")
        clock.now += 0.01
    clock.now += 3600 - 50.005  # r0…r14999 are now older than max_age_s: r15000… remain
    ids = [f"r{k}" for k in range(0, 20_000, 2)]
    random.Random(9).shuffle(ids)
    results = [memory.take(request_id) for request_id in ids]
    joined = [r for r in results if isinstance(r, Remembered)]
    assert len(joined) == 2_500
    assert all(
        r.prediction == ("fraud" if int(r.request_id[1:]) % 7 == 0 else "ok") for r in joined
    )
    assert all(
        isinstance(r, Remembered) == (int(i[1:]) >= 15_000)
        for i, r in zip(ids, results, strict=True)
    )
    # Expired ids older than the last 5,000 to 10,000 evicted are forgotten: unknown.
    expired = sum(1 for r in results if r is LabelStatus.EXPIRED)
    unknown = sum(1 for r in results if r is LabelStatus.UNKNOWN)
    assert expired + unknown == 7_500 and 2_500 <= expired <= 5_000
    assert (memory.remembered, memory.evicted_unlabelled, memory.evicted_labelled) == (
        20_000,
        15_000,
        0,
    )
    assert (len(memory), memory.labelled, memory.pending) == (5_000, 2_500, 2_500)


def test_memory_per_prediction_stays_small() -> None:
    n = 50_000
    memory = PredictionMemory(max_items=n, clock=FakeClock())
    head = "fr"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(n):
            # A fresh 36-character id and a fresh class string per request, as from a server.
            memory.remember(f"{k:08d}-0000-4000-8000-000000000000", head + "aud", 0.5, "v1")
        per_item = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_item < 400, per_item
    for k in range(n, 2 * n):  # full: slots are reused, nothing grows
        memory.remember(f"r{k}", "ok", None, "v1")
        assert len(memory) <= n
    assert len(memory) == n


@pytest.mark.parametrize(
    "options",
    [
        {"max_items": 0},
        {"max_items": 1.5},
        {"max_age_s": 0},
        {"max_age_s": float("nan")},
        {"max_expired_ids": -1},
    ],
)
def test_invalid_memory_options_are_rejected(options: dict) -> None:
    with pytest.raises(ConfigError, match=r"labels\."):
        PredictionMemory(**options)


def test_the_oldest_id_remembered_again_on_a_full_memory_replaces_itself_in_place() -> None:
    memory = PredictionMemory(max_items=3)
    for rid in "abc":
        memory.remember(rid, "x", None, "1")
    memory.remember("a", "y", 0.5, "1")  # "a" sits in the slot that would be evicted
    assert len(memory) == 3 and memory.replaced == 1
    taken = memory.take("a")
    assert isinstance(taken, Remembered) and taken.prediction == "y"
    assert all(isinstance(memory.take(rid), Remembered) for rid in "bc")
    memory.remember("d", "x", None, "1")  # evicts "b" now: "a" was rewritten after it
    assert memory.take("b") == LabelStatus.DUPLICATE


# --------------------------------------------------------------------------- staging


def test_a_staged_prediction_is_taken_with_its_own_time_and_delay() -> None:
    clock = FakeClock()
    memory = PredictionMemory(clock=clock)
    memory.remember(b"r1", "fraud", 0.75, "v1")  # staged: nothing has read the memory yet
    clock.now += 5.25
    memory.remember(b"r2", "ok", None, "v1")
    clock.now += 2.0
    got = memory.take(b"r1")
    assert got == Remembered(b"r1", "fraud", 0.75, "v1", remembered_at=1000.0, delay_s=7.25)
    assert isinstance(memory.take(b"r2"), Remembered)
    assert (memory.remembered, memory.labelled, memory.pending, len(memory)) == (2, 2, 0, 2)


def test_an_id_remembered_twice_in_one_staged_batch_is_a_replacement() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_items=10, clock=clock)
    memory.remember("a", "x", 0.5, "v1")
    memory.remember("b", "x", None, "v1")
    clock.now += 1
    memory.remember("a", "y", 0.6, "v2")  # same batch as the first "a"
    assert (memory.remembered, memory.replaced, len(memory), memory.pending) == (3, 1, 2, 2)
    got = memory.take("a")
    assert isinstance(got, Remembered)
    assert (got.prediction, got.confidence, got.version, got.remembered_at) == (
        "y",
        0.6,
        "v2",
        1001.0,
    )
    for k in range(10):  # the emptied slot comes round: nothing counts as evicted for it
        memory.remember(f"x{k}", "x", None, "v1")
    assert (len(memory), memory.evicted_unlabelled, memory.evicted_labelled) == (10, 1, 1)
    assert memory.take("a") is LabelStatus.DUPLICATE and memory.take("b") is LabelStatus.EXPIRED


def test_max_age_applies_to_predictions_staged_together() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_age_s=10, clock=clock)
    memory.remember("old", "a", None, "v1")
    clock.now += 10.5  # staged with "old", but "old" expires at this one's time
    memory.remember("new", "a", None, "v1")
    assert memory.take("old") is LabelStatus.EXPIRED
    assert isinstance(memory.take("new"), Remembered)
    assert (memory.remembered, memory.evicted_unlabelled, len(memory)) == (2, 1, 1)


def test_max_age_evicts_ring_records_when_a_staged_batch_goes_in() -> None:
    clock = FakeClock()
    memory = PredictionMemory(max_age_s=100, clock=clock)
    for k in range(3):
        memory.remember(f"r{k}", "a", None, "v1")
    assert len(memory) == 3  # in the ring now
    clock.now += 150
    for k in range(3, 6):  # staged; the flush finds r0…r2 older than max_age_s
        memory.remember(f"r{k}", "a", None, "v1")
    assert (len(memory), memory.evicted_unlabelled) == (3, 3)
    assert [memory.take(f"r{k}") for k in range(3)] == [LabelStatus.EXPIRED] * 3
    assert all(isinstance(memory.take(f"r{k}"), Remembered) for k in range(3, 6))


def test_staged_batches_wrap_round_the_ring_and_evict_the_oldest() -> None:
    memory = PredictionMemory(max_items=300, max_expired_ids=1000, clock=FakeClock())
    for k in range(1000):  # batches of 256 into 300 slots: writes round the ring's end
        memory.remember(f"r{k}", f"c{k % 3}", k / 1000, "v1")
        if k == 650:
            assert isinstance(memory.take("r640"), Remembered)  # labelled, then evicted
    assert len(memory) == 300
    assert all(memory.take(f"r{k}") is LabelStatus.EXPIRED for k in range(200, 640))
    assert memory.take("r640") is LabelStatus.DUPLICATE
    taken = [memory.take(f"r{k}") for k in range(700, 1000)]
    assert all(
        isinstance(t, Remembered) and t.prediction == f"c{k % 3}" and t.confidence == k / 1000
        for k, t in zip(range(700, 1000), taken, strict=True)
    )
    assert (memory.remembered, memory.evicted_unlabelled, memory.evicted_labelled) == (1000, 699, 1)


def test_an_unhashable_id_is_refused_before_anything_is_staged() -> None:
    memory = PredictionMemory(clock=FakeClock())
    memory.remember("r0", "a", None, "v1")
    with pytest.raises(TypeError):
        memory.remember(["r1"], "a", None, "v1")  # type: ignore[arg-type]
    assert (memory.remembered, len(memory)) == (1, 1)
    assert isinstance(memory.take("r0"), Remembered)


def test_str_and_bytes_ids_are_distinct() -> None:
    memory = PredictionMemory(clock=FakeClock())
    memory.remember(b"r1", "a", None, "v1")
    assert memory.take("r1") is LabelStatus.UNKNOWN
    assert isinstance(memory.take(b"r1"), Remembered)


def _replay(
    memory: PredictionMemory, clock: FakeClock, steps: list[tuple], read_each_time: bool
) -> list[object]:
    """Run ``steps`` on ``memory``; what every read returned (counters included)."""
    seen: list[object] = []
    for step in steps:
        kind = step[0]
        if kind == "remember":
            clock.now = step[1]
            memory.remember(*step[2:])
            if read_each_time:
                len(memory)  # flushes: each prediction goes in alone
        else:
            clock.now = step[1]
            if kind == "take":
                seen.append(memory.take(step[2]))
            else:
                memory.expire()
            seen.append(
                (
                    len(memory),
                    memory.pending,
                    memory.remembered,
                    memory.replaced,
                    memory.labelled,
                    memory.evicted_labelled,
                    memory.evicted_unlabelled,
                )
            )
    return seen


@pytest.mark.parametrize(("seed", "max_items"), [(0, 3), (1, 7), (2, 50), (3, 300), (4, 300)])
def test_staged_batches_end_exactly_where_one_by_one_would(seed: int, max_items: int) -> None:
    """Replacements (held or in the batch), ids back from eviction, age and count bounds."""
    rng = random.Random(seed)
    steps: list[tuple] = []
    now = 0.0
    for _ in range(3000):
        now += rng.choice([0.0, 0.01, 0.5, 3.0]) if rng.random() < 0.98 else 40.0
        roll = rng.random()
        rid = f"r{rng.randrange(400)}"  # a small pool: replacements and returning ids
        if roll < 0.85:
            steps.append(
                (
                    "remember",
                    now,
                    rid,
                    rng.choice(["a", "b", 2.5]),
                    rng.choice([None, 0.7]),
                    rng.choice(["v1", "v2"]),
                )
            )
        elif roll < 0.99:  # often a recent id: joined, then labelled twice
            recent = [s[2] for s in steps[-20:] if s[0] == "remember"]
            steps.append(("take", now, rng.choice(recent) if recent and roll < 0.95 else rid))
        else:
            steps.append(("expire", now))
    results = []
    for read_each_time in (True, False):
        clock = FakeClock(0.0)
        memory = PredictionMemory(
            max_items=max_items, max_age_s=30, max_expired_ids=60, clock=clock
        )
        results.append(_replay(memory, clock, steps, read_each_time))
    assert results[0] == results[1]
    statuses = {
        type(r).__name__ if isinstance(r, Remembered) else r
        for r in results[0]
        if type(r) is not tuple
    }  # counters are plain tuples
    assert statuses == {"Remembered", *LabelStatus}  # every outcome was exercised
    assert results[0][-1][3] > 10  # type: ignore[index]  # replacements


def test_a_staged_batch_spanning_max_age_evicts_as_one_by_one_would() -> None:
    clock = FakeClock(0.0)
    memory = PredictionMemory(max_items=3, max_age_s=10, clock=clock)
    memory.remember("x", "a", None, "v1")
    memory.remember("y", "a", None, "v1")
    assert len(memory) == 2
    clock.now = 1.0
    memory.remember("o", "a", None, "v1")  # fills the memory
    clock.now = 12.0  # x, y and o (staged with these two) are older than max_age_s now
    memory.remember("p", "a", None, "v1")
    memory.remember("q", "a", None, "v1")  # the batch of three goes in
    assert (len(memory), memory.evicted_unlabelled) == (2, 3)
    assert memory.take("o") is LabelStatus.EXPIRED


def test_an_id_back_after_its_record_aged_out_is_new_not_a_replacement() -> None:
    clock = FakeClock(0.0)
    memory = PredictionMemory(max_items=3, max_age_s=10, clock=clock)
    for rid in "abc":
        memory.remember(rid, "x", None, "v1")
    assert len(memory) == 3  # "a" sits in the slot the next prediction is written to
    clock.now = 20.0
    memory.remember("a", "y", None, "v1")
    assert (len(memory), memory.replaced, memory.evicted_unlabelled, memory.remembered) == (
        1,
        0,
        3,
        4,
    )
    taken = memory.take("a")
    assert isinstance(taken, Remembered) and (taken.prediction, taken.delay_s) == ("y", 0.0)


# --------------------------------------------------------------------------- decision threshold


def test_a_probability_at_the_threshold_predicts_the_positive_class() -> None:
    decision = DecisionThreshold(0.6, "churned")
    assert decision.predicted(0.6) == ("churned", 0.6)
    assert decision.predicted(0.25) == ("not churned", 0.75)
    assert [decision.truth(x) for x in ("churned", "stayed", 0)] == ["churned"] + [
        "not churned"
    ] * 2


def test_without_a_positive_class_labels_are_1_and_0() -> None:
    decision = DecisionThreshold()
    assert decision.predicted(0.5)[0] == "1" and decision.predicted(0.49)[0] == "0"
    assert [decision.truth(x) for x in (1, "1", True, "true", 1.0, 0, "false")] == [
        *["1"] * 5,
        "0",
        "0",
    ]
    with pytest.raises(PayloadError) as caught:
        decision.truth("churned")
    assert caught.value.reason == "label_not_binary" and "positive_class" in str(caught.value)


@pytest.mark.parametrize("probability", [-0.1, 1.5, float("nan")])
def test_a_number_outside_0_1_is_not_a_probability(probability: float) -> None:
    with pytest.raises(PayloadError) as caught:
        DecisionThreshold().predicted(probability)
    assert caught.value.reason == "prediction_invalid"


@pytest.mark.parametrize("threshold", [0, 1, 1.5, True, "0.5"])
def test_a_threshold_outside_0_1_is_refused(threshold: Any) -> None:
    with pytest.raises(ValueError, match="decision_threshold"):
        DecisionThreshold(threshold)
