"""Remembered predictions: what was predicted for each request id, until its label comes.

Teams learn the truth later (a fraud confirmed days after) and send labels by request id.
:class:`PredictionMemory` holds what was predicted for each request id, bounded by count and
by age; :meth:`PredictionMemory.take` hands the prediction over once (a :class:`Remembered`)
and tells an unknown id from an expired one and from a duplicate label (a
:class:`LabelStatus`). The live quality windows the labelled predictions go into are
:mod:`mlwarden.middleware.quality`.

Built for the request path: ``remember`` stages a prediction and puts staged ones into
preallocated columns in batches (1 to 1.7 µs a prediction amortised, measured on a small
shared VM). Not thread-safe: call it from the event loop.
"""

from __future__ import annotations

import math
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from sys import intern as _intern
from typing import Any, NamedTuple

from mlwarden.middleware.errors import ConfigError

__all__ = ["LabelStatus", "PredictionMemory", "Remembered"]

_NAN = math.nan
# Predictions staged by ``PredictionMemory.remember`` before they go into the ring together.
_STAGE_SIZE = 256
_STAGED_FIELDS = 5  # id, prediction, confidence, version, time


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
    plus one dict from id to slot. The ring is filled in the order predictions are remembered,
    so the first remembered is always at its head: count eviction reuses the head's slots and
    age eviction advances the head while it is older than ``max_age_s``, each record at most
    once (amortised O(1)). A prediction's time is its ``at`` (when it was answered: the
    middleware remembers it later, in batches), so times in the ring may be a little out of
    order; one remembered after a younger one waits for it to be evicted, and :meth:`take`
    checks its own age, so that a label is ``expired`` exactly when its prediction is older
    than ``max_age_s``.

    ``remember`` only checks its arguments, reads the clock and appends to a staging list of at
    most 256 predictions (never more than ``max_items``); the staged predictions go into the
    ring together, when the list is full and before anything reads the memory (``take``,
    ``expire``, ``len``, the counters), with C-level bulk operations: one ``setdefault`` a
    prediction into the index (mapped), slice writes into the columns, the slots they reuse
    evicted together. Every reader therefore sees what remembering them one by one would have
    left (same records, times, statuses and counters, for times in the order remembered): a
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
        at: float | None = None,
    ) -> None:
        """Hold ``prediction`` until a label for ``request_id`` comes (or it is evicted).

        ``confidence`` is the model's probability of ``prediction``; None or NaN when unknown.
        ``at`` is when it was predicted, on the memory's clock (None: now); its age and a
        label's delay are counted from it. A bad id (unhashable) or confidence raises here,
        and nothing is remembered.
        """
        if confidence is None:
            confidence = _NAN
        elif type(confidence) is not float:
            confidence = float(confidence)
        hash(request_id)  # raises now rather than in a later flush; cached by str and bytes
        staged = self._staged
        staged += (request_id, prediction, confidence, version, self._clock() if at is None else at)
        if len(staged) >= self._stage_size:
            self._flush()

    def knows(self, request_id: str | bytes) -> bool:
        """Whether ``request_id`` is held, or was and has been evicted (a label for it is this
        memory's to answer, even if only as expired or duplicate)."""
        if self._staged:
            self._flush()
        return (
            request_id in self._index
            or self._expired_new.get(request_id) is not None
            or self._expired_old.get(request_id) is not None
        )

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
        at = self._times[slot]
        if now - at > self.max_age_s:  # remembered after a younger one: not evicted yet
            return LabelStatus.EXPIRED
        self._labelled[slot] = 1
        self.labelled += 1
        confidence = self._confidences[slot]
        return Remembered(
            request_id,
            self._predictions[slot],  # type: ignore[arg-type]  # a live slot: not None
            None if confidence != confidence else confidence,
            self._versions[slot],  # type: ignore[arg-type]
            at,
            now - at if now > at else 0.0,
        )

    def untake(self, request_id: str | bytes) -> None:
        """Undo :meth:`take` for a label refused after it: the prediction waits again."""
        slot = self._index.get(request_id)
        if slot is not None and self._labelled[slot]:
            self._labelled[slot] = 0
            self.labelled -= 1

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
