"""Live model quality from late labels: remember predictions, join labels, score a window.

Teams learn the truth later (a fraud confirmed days after) and send labels by request id.
:class:`PredictionMemory` holds what was predicted for each request id, bounded by count and
by age, until a label comes; :meth:`PredictionMemory.take` hands the prediction over once and
tells an unknown id from an expired one and from a duplicate label. :class:`QualityWindow`
(one per model version) keeps the recent (prediction, label) pairs and turns them into
accuracy, precision/recall/F1, calibration error, MAE/RMSE and label delay when asked.

Both are built for the request path: ``remember`` stages a prediction and puts staged ones
into preallocated columns in batches (1 to 1.7 µs a prediction amortised, measured on a
small shared VM), ``add`` appends to bounded deques (1 to 2 µs); the arithmetic happens in
``snapshot`` (1 to 2 ms for 10,000 samples). Neither class is thread-safe: call them from
the event loop.
"""

from __future__ import annotations

import math
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from sys import intern as _intern
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from mlwarden.middleware.baseline import category_key
from mlwarden.middleware.errors import ConfigError, PayloadError

__all__ = [
    "LABEL_REJECTIONS",
    "LabelStatus",
    "PredictionMemory",
    "QualitySnapshot",
    "QualityWindow",
    "Remembered",
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
    "prediction_invalid",  # the remembered prediction itself cannot be scored
)

_NAN = math.nan
_INF = math.inf
# Calibration bins (edges[i], edges[i + 1]], a confidence of 0 in the first; i / 10 rather than
# linspace so that a confidence written 0.3 lands in the bin that ends at 0.3.
_BIN_EDGES = np.array([i / 10 for i in range(11)])
# Predictions staged by ``PredictionMemory.remember`` before they go into the ring together.
_STAGE_SIZE = 256
_STAGED_FIELDS = 5  # id, prediction, confidence, version, time


# --------------------------------------------------------------------------- memory


class LabelStatus(StrEnum):
    """Why :meth:`PredictionMemory.take` has no prediction to give (a metric label value)."""

    UNKNOWN = "unknown"  # never remembered, or evicted so long ago that the id is forgotten
    EXPIRED = "expired"  # remembered, then evicted (age or count) before a label came
    DUPLICATE = "duplicate"  # a label for this id was already taken


class Remembered(NamedTuple):
    """A remembered prediction, handed over with the label that has just arrived.

    A named tuple rather than a frozen dataclass: ``take`` builds one per label, and a frozen
    dataclass takes twice as long to build (measured).
    """

    request_id: str | bytes
    prediction: str | float
    confidence: float | None
    version: str
    remembered_at: float  # the memory's clock when ``remember`` was called
    delay_s: float  # from ``remember`` to ``take``: the label's delay


class _EvictedIds:
    """A generation of evicted ids and their labelled flags, indexed when first looked up.

    Evicting only appends to a list (no hashing on the request path); a lookup indexes what
    was appended since the last one, so each id is hashed into a dict at most once, and only
    if labels come that miss the live records.
    """

    __slots__ = ("_index", "_indexed", "flags", "ids")

    def __init__(self) -> None:
        self.ids: list[str | bytes] = []
        self.flags = bytearray()
        self._index: dict[str | bytes, int] = {}
        self._indexed = 0

    def get(self, request_id: str | bytes) -> int | None:
        """1 if ``request_id`` was labelled when evicted, 0 if not, None if not here."""
        if self._indexed < len(self.ids):
            done = self._indexed
            self._index.update(zip(self.ids[done:], self.flags[done:], strict=True))  # later win
            self._indexed = len(self.ids)
        return self._index.get(request_id)


class PredictionMemory:
    """Predictions by request id, waiting for their labels; bounded by count and by age.

    Request ids are ``str`` or ``bytes`` (the middleware keeps the header's bytes), compared
    as given: ``b"a"`` and ``"a"`` are two ids.

    The records live column by column in a ring of ``max_items`` slots (ids, predictions and
    versions in lists, times and confidences in float arrays, a labelled flag in a bytearray)
    plus one dict from id to slot. The ring is filled in arrival order, so the oldest record
    is always at its head: count eviction reuses the head's slots and age eviction advances
    the head while it is older than ``max_age_s``, each record at most once (amortised O(1)).

    ``remember`` only checks its arguments, reads the clock and appends to a staging list of at
    most 256 predictions (never more than ``max_items``); the staged predictions go into the
    ring together, when the list is full and before anything reads the memory (``take``,
    ``expire``, ``len``, the counters), with C-level bulk operations: one ``setdefault`` a
    prediction into the index (mapped), slice writes into the columns, the slots they reuse
    evicted together. Every reader therefore sees what remembering them one by one would have
    left (same records, times, statuses and counters, for a clock that never goes back): a
    staged batch that replaces an id (held, or twice in the batch) or spans more than
    ``max_age_s`` goes in one by one. What is left per prediction is mostly two cache-missing
    dict operations (insert the new id, delete the evicted one). ``benchmarks/ground_truth.py``
    measures it: on a full 100,000-item memory, 0.9 to 1.7 µs a ``remember`` amortised,
    flushes and evictions included, on a shared 2-core VM where the earlier one-by-one ring
    took 1.4 to 2.7 µs (side by side, one process); about 195 bytes a record with a 36-byte
    ``bytes`` id (tracemalloc), about 250 once the memory has turned over (the index's dict at
    its steady size, evicted ids kept included).

    A labelled record stays (flagged) until it is evicted, so that a second label for it is a
    ``duplicate``. A second ``remember`` of an id replaces its record (``replaced``); the old
    slot stays in the ring, empty, until the head comes round to it, so right after
    replacements up to that many fewer than ``max_items`` records may be held. ``max_items``
    always bounds the records held.

    Evicted ids are kept in two generations of ``max_expired_ids // 2`` ids each, so that a
    late label is told ``expired`` (or ``duplicate`` if it had been labelled) rather than
    ``unknown`` for at least the last ``max_expired_ids // 2`` and at most the last
    ``max_expired_ids`` evicted ids; an id evicted before those is ``unknown``. 0 (or 1)
    switches that off. Evicting only appends an id to a list (about 80 bytes each with a
    36-byte id, the id included); the first label that misses the held records indexes the
    ids appended since (about 30 bytes more each).

    Counters: ``remembered``, ``replaced``, ``labelled`` (labels joined), ``evicted_labelled``
    and ``evicted_unlabelled`` (predictions that never got a label: divide by
    ``evicted_unlabelled + evicted_labelled`` for the share).
    """

    __slots__ = (
        "_clock",
        "_confidences",
        "_deadline",
        "_evicted_labelled",
        "_expired_generation",
        "_expired_new",
        "_expired_old",
        "_head",
        "_holes",
        "_ids",
        "_index",
        "_labelled",
        "_labelled_gone",
        "_predictions",
        "_remembered",
        "_replaced",
        "_stage_size",
        "_staged",
        "_tail",
        "_times",
        "_used",
        "_versions",
        "labelled",
        "max_age_s",
        "max_expired_ids",
        "max_items",
    )

    def __init__(
        self,
        *,
        max_items: int = 100_000,
        max_age_s: float = 7 * 86400,
        max_expired_ids: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems = []
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            problems.append(f"labels.max_items: expected a whole number >= 1, got {max_items!r}")
        if (
            isinstance(max_age_s, bool)
            or not isinstance(max_age_s, int | float)
            or not 0 < max_age_s < math.inf
        ):
            problems.append(f"labels.max_age_s: expected a number > 0, got {max_age_s!r}")
        if (
            isinstance(max_expired_ids, bool)
            or not isinstance(max_expired_ids, int)
            or max_expired_ids < 0
        ):
            problems.append(
                f"labels.max_expired_ids: expected a whole number >= 0, got {max_expired_ids!r}"
            )
        if problems:
            raise ConfigError(problems)
        self.max_items = max_items
        self.max_age_s = float(max_age_s)
        self.max_expired_ids = max_expired_ids
        self._clock = clock
        # id, prediction, confidence, version, time, id, … of the predictions not yet in the
        # ring, flat (slices take the columns out); never more than max_items of them, so
        # that a flush never evicts a prediction staged with it.
        self._staged: list[Any] = []
        self._stage_size = _STAGED_FIELDS * min(_STAGE_SIZE, max_items)
        # The columns grow (doubling) up to max_items slots, then slots are reused.
        self._index: dict[str | bytes, int] = {}
        self._ids: list[str | bytes | None] = []
        self._predictions: list[str | float | None] = []
        self._versions: list[str | None] = []
        self._times = array("d")
        self._confidences = array("d")  # NaN: no confidence
        self._labelled = bytearray()  # 1: labelled; always 0 in an empty slot
        self._head = 0  # the oldest slot in use
        self._tail = 0  # the next slot to write
        self._used = 0  # slots in use from the head on, emptied (replaced) ones included
        self._holes = 0  # emptied (replaced) slots among those: ids of None
        # When to look for records older than max_age_s: the head's time + max_age_s, or
        # earlier once count eviction has moved the head on (a look then finds nothing and
        # sets it again), so that a flush compares one number.
        self._deadline = math.inf
        # Evicted ids, max_expired_ids // 2 a generation (see _EvictedIds).
        self._expired_new = _EvictedIds()
        self._expired_old = _EvictedIds()
        self._expired_generation = max_expired_ids // 2
        self._labelled_gone = 0  # labelled records evicted or replaced
        self._remembered = 0  # in the ring (staged ones are added by the property)
        self._replaced = 0
        self._evicted_labelled = 0
        self.labelled = 0

    # The hot path only stages; counters that staged predictions change flush them first.
    @property
    def remembered(self) -> int:
        """Predictions remembered (replacements included)."""
        return self._remembered + len(self._staged) // _STAGED_FIELDS

    @property
    def replaced(self) -> int:
        """Predictions that replaced an earlier one for the same id."""
        if self._staged:
            self._flush()
        return self._replaced

    @property
    def evicted_labelled(self) -> int:
        """Labelled predictions evicted (by age or count)."""
        if self._staged:
            self._flush()
        return self._evicted_labelled

    @property
    def evicted_unlabelled(self) -> int:
        """Predictions evicted (by age or count) before any label came for them."""
        if self._staged:
            self._flush()
        return self._remembered - self._replaced - len(self._index) - self._evicted_labelled

    @property
    def pending(self) -> int:
        """Records held that have no label yet."""
        if self._staged:
            self._flush()
        return len(self._index) - (self.labelled - self._labelled_gone)

    def __len__(self) -> int:
        """Records held, labelled or not (call :meth:`expire` first for an exact age bound)."""
        if self._staged:
            self._flush()
        return len(self._index)

    def __repr__(self) -> str:
        return (
            f"PredictionMemory(max_items={self.max_items}, max_age_s={self.max_age_s}, "
            f"held={len(self)}, pending={self.pending})"
        )

    def remember(
        self,
        request_id: str | bytes,
        prediction: str | float,
        confidence: float | None,
        version: str,
    ) -> None:
        """Hold ``prediction`` until a label for ``request_id`` comes (or it is evicted).

        ``confidence`` is the model's probability of ``prediction``; None or NaN when unknown.
        A bad id (unhashable) or confidence raises here, and nothing is remembered.
        """
        if confidence is None:
            confidence = _NAN
        elif type(confidence) is not float:
            confidence = float(confidence)
        hash(request_id)  # raises now rather than in a later flush; cached by str and bytes
        staged = self._staged
        staged += (request_id, prediction, confidence, version, self._clock())
        if len(staged) >= self._stage_size:
            self._flush()

    def take(self, request_id: str | bytes) -> Remembered | LabelStatus:
        """The prediction for ``request_id``, marked labelled; or why there is none."""
        if self._staged:
            self._flush()
        now = self._clock()
        if now >= self._deadline:
            self._expire(now)
        slot = self._index.get(request_id)
        if slot is None:
            labelled = self._expired_new.get(request_id)
            if labelled is None:
                labelled = self._expired_old.get(request_id)
                if labelled is None:
                    return LabelStatus.UNKNOWN
            return LabelStatus.DUPLICATE if labelled else LabelStatus.EXPIRED
        if self._labelled[slot]:
            return LabelStatus.DUPLICATE
        self._labelled[slot] = 1
        self.labelled += 1
        at = self._times[slot]
        confidence = self._confidences[slot]
        return Remembered(
            request_id,
            self._predictions[slot],  # type: ignore[arg-type]  # a live slot: not None
            None if confidence != confidence else confidence,
            self._versions[slot],  # type: ignore[arg-type]
            at,
            now - at,
        )

    def expire(self) -> None:
        """Evict every record older than ``max_age_s`` now (else done on a flush or take)."""
        if self._staged:
            self._flush()
        self._expire(self._clock())

    # -- into the ring ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Put the staged predictions into the ring, as one by one ``_put`` calls would."""
        staged = self._staged
        self._staged = []
        ids, predictions, confidences, versions, times = (
            staged[0::5],
            staged[1::5],
            staged[2::5],
            staged[3::5],
            staged[4::5],
        )
        # The batch goes in at once when that ends exactly where one by one would: no staged
        # prediction old enough to expire at another's time (so age eviction only takes
        # records already in the ring, the same ones at the latest time as step by step) and
        # no replacement (the only step whose outcome depends on what was evicted before it).
        lo, latest = min(times), max(times)
        if lo >= latest - self.max_age_s:
            index = self._index
            held = len(index)
            k, tail, size = len(ids), self._tail, self.max_items
            end = tail + k
            slots = (
                list(range(tail, end)) if end <= size else [*range(tail, size), *range(end - size)]
            )
            # One probe an id, the index's only one: an id already held keeps its slot.
            previous = list(map(index.setdefault, ids, slots))
            if len(index) == held + k:
                self._put_batch(ids, predictions, confidences, versions, times, latest)
                return
            column = self._ids
            for request_id, old, slot in zip(ids, previous, slots, strict=True):
                if old == slot and (slot >= len(column) or column[slot] != request_id):
                    # Inserted above (an id held in place keeps its own slot): undo.
                    del index[request_id]
        for item in zip(ids, predictions, confidences, versions, times, strict=True):
            self._put(*item)

    def _put_batch(
        self,
        ids: list[Any],
        predictions: list[Any],
        confidences: list[float],
        versions: list[Any],
        times: list[float],
        latest: float,
    ) -> None:
        """Write new, distinct ids (already in the index) at the tail, evicting what they need."""
        k, size = len(ids), self.max_items
        if latest >= self._deadline:
            self._expire(latest)
        if not self._used:
            self._deadline = times[0] + self.max_age_s
        over = self._used + k - size
        if over > 0:  # full: the oldest slots are the ones to write (k <= max_items)
            self._drop(self._head, over, clear=False)
            head = self._head + over
            self._head = head if head < size else head - size
            self._used -= over
        if type(predictions[0]) is str:
            try:  # class labels parsed from each response are new strings: share one per class
                predictions = list(map(_intern, predictions))
            except TypeError:
                predictions = [_intern(p) if type(p) is str else p for p in predictions]
        tail = self._tail
        end = tail + k
        if end > len(self._ids) and len(self._ids) < size:
            self._grow(min(size, end) - len(self._ids))
        if end <= size:
            self._write(tail, ids, predictions, confidences, versions, times)
        else:  # round the ring's end
            split = size - tail
            self._write(
                tail,
                ids[:split],
                predictions[:split],
                confidences[:split],
                versions[:split],
                times[:split],
            )
            self._write(
                0,
                ids[split:],
                predictions[split:],
                confidences[split:],
                versions[split:],
                times[split:],
            )
            end -= size
        self._tail = end if end < size else 0
        self._used += k
        self._remembered += k

    def _write(
        self,
        start: int,
        ids: list[Any],
        predictions: list[Any],
        confidences: list[float],
        versions: list[Any],
        times: list[float],
    ) -> None:
        end = start + len(ids)
        self._ids[start:end] = ids
        self._predictions[start:end] = predictions
        self._versions[start:end] = versions
        # struct.pack converts a list of floats about twice as fast as array("d", …) does.
        pack = f"{end - start}d"
        with memoryview(self._times) as view, view.cast("B") as raw:
            raw[8 * start : 8 * end] = struct.pack(pack, *times)
        with memoryview(self._confidences) as view, view.cast("B") as raw:
            raw[8 * start : 8 * end] = struct.pack(pack, *confidences)
        # Empty slots (and count-evicted ones, zeroed by _drop) are unlabelled already.

    def _put(
        self,
        request_id: str | bytes,
        prediction: str | float,
        confidence: float,
        version: str,
        now: float,
    ) -> None:
        """One staged prediction into the ring (the batch path's reference)."""
        if now >= self._deadline:
            self._expire(now)
        index = self._index
        slot = self._tail
        old = index.setdefault(request_id, slot)
        if old != slot:
            self._replaced += 1
            self._ids[old] = None
            self._predictions[old] = None
            self._holes += 1
            if self._labelled[old]:
                self._labelled_gone += 1
                self._labelled[old] = 0
            index[request_id] = slot
        if self._used == self.max_items:
            # Full: the head's slot is the one to write. Evict its record (if not replaced).
            gone = self._ids[slot]
            if gone == request_id:  # the oldest id remembered again: a replacement in place
                self._replaced += 1
                if self._labelled[slot]:
                    self._labelled_gone += 1
                self._labelled[slot] = 0
            elif gone is None:
                self._holes -= 1
            else:
                self._drop(slot, 1, clear=False)
            self._head = self._tail = slot + 1 if slot + 1 < self.max_items else 0
        else:
            if slot == len(self._ids):
                self._grow(1)
            if not self._used:
                self._deadline = now + self.max_age_s
            self._tail = slot + 1 if slot + 1 < self.max_items else 0
            self._used += 1
        if type(prediction) is str:
            prediction = _intern(prediction)
        self._ids[slot] = request_id
        self._predictions[slot] = prediction
        self._versions[slot] = version
        self._times[slot] = now
        self._confidences[slot] = confidence
        self._remembered += 1

    # -- out of the ring ----------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        horizon = now - self.max_age_s
        times, size = self._times, self.max_items
        head, used = self._head, self._used
        start, n = head, 0
        while n < used and times[head] < horizon:
            head = head + 1 if head + 1 < size else 0
            n += 1
        if n:
            self._drop(start, n, clear=True)
            self._head, self._used = head, used - n
        self._deadline = times[head] + self.max_age_s if used - n else math.inf

    def _drop(self, start: int, n: int, *, clear: bool) -> None:
        """Evict the records of ring slots ``start`` … ``start + n - 1`` (it may wrap)."""
        end = start + n
        if end > self.max_items:
            split = self.max_items - start
            self._drop(start, split, clear=clear)
            self._drop(0, n - split, clear=clear)
            return
        gone = self._ids[start:end]
        flags = self._labelled[start:end]
        if self._holes and None in gone:  # emptied by a replacement: nothing to evict there
            kept = [i for i, request_id in enumerate(gone) if request_id is not None]
            self._holes -= n - len(kept)
            gone = [gone[i] for i in kept]
            flags = bytearray(flags[i] for i in kept)
        labelled = flags.count(1)
        if labelled:
            self._evicted_labelled += labelled
            self._labelled_gone += labelled
            self._labelled[start:end] = bytes(n)
        deque(map(self._index.pop, gone), 0)  # pop: a faster call than __delitem__
        if self._expired_generation:
            self._note_expired(gone, flags)
        if clear:
            nones = [None] * n
            self._ids[start:end] = nones
            self._predictions[start:end] = nones
            self._versions[start:end] = nones

    def _note_expired(self, ids: list[Any], flags: bytearray) -> None:
        """Keep evicted ids (with their labelled flags), generation by generation."""
        size = self._expired_generation
        while ids:
            generation = self._expired_new
            room = size - len(generation.ids)
            if len(ids) < room:
                generation.ids += ids
                generation.flags += flags
                return
            generation.ids += ids[:room]
            generation.flags += flags[:room]
            if len(generation.ids) == size:
                self._expired_old = generation
                self._expired_new = _EvictedIds()
            ids, flags = ids[room:], flags[room:]

    def _grow(self, extra: int) -> None:
        extra = max(extra, min(max(len(self._ids), 1024), self.max_items - len(self._ids)))
        self._ids.extend([None] * extra)
        self._predictions.extend([None] * extra)
        self._versions.extend([None] * extra)
        self._times.extend(array("d", bytes(8 * extra)))
        self._confidences.extend(array("d", bytes(8 * extra)))
        self._labelled.extend(bytes(extra))


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
