"""Bounded per-feature windows of recent traffic, binned in batches.

The middleware sees every request; this module makes that affordable. ``add`` only queues the
request's columns; every ``batch_rows`` rows the queue is converted and binned with numpy in
one go (numpy called per value costs ~30x more, measured). What is kept is fixed at
construction and independent of traffic, all preallocated rings of ``max_rows`` entries:

- numeric features, one row per feature in 2-D rings: the value's cell on the baseline's fine
  KS grid (PSI bins are unions of those cells, so one code serves both tests) and the value
  itself, for the mean;
- categorical features: the category code (unseen values → "other");
- one ring of timestamps for the age bound.

Drift statistics only need counts per cell, so a window is read out as a
:class:`WindowSnapshot` of counts; :mod:`mlwarden.middleware.drift` turns those into scores.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from mlwarden.middleware.baseline import (
    BaselineProfile,
    CategoricalProfile,
    NumericProfile,
    category_key,
)
from mlwarden.middleware.payloads import FeatureBatch, FeatureRow

__all__ = [
    "CategoricalCounts",
    "FeatureWindows",
    "NumericCounts",
    "NumericTable",
    "WindowSnapshot",
    "to_float64",
]


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class NumericCounts:
    """A numeric feature over the window, as counts on the baseline's bins.

    ``grid[j]``: finite values ``x`` with ``points[j-1] < x <= points[j]`` on the deduplicated
    KS grid ``points`` (``grid[-1]``: finite values above the last point), and
    ``reference_cdf[j]`` the baseline ECDF at ``points[j]``. ``bins[i]``: non-null values in
    PSI bin ``i``, ±inf included in the end bins.
    """

    name: str
    rows: int
    nulls: int
    finite: int
    total: float
    total_squares: float
    bins: np.ndarray
    grid: np.ndarray
    points: np.ndarray
    reference_cdf: np.ndarray

    @property
    def mean(self) -> float | None:
        return self.total / self.finite if self.finite else None

    @property
    def std(self) -> float | None:
        if not self.finite:
            return None
        mean = self.total / self.finite
        return math.sqrt(max(self.total_squares / self.finite - mean * mean, 0.0))


@dataclass(frozen=True, slots=True)
class CategoricalCounts:
    """A categorical feature over the window: ``counts`` per baseline category, then other."""

    name: str
    rows: int
    nulls: int
    counts: np.ndarray


@dataclass(frozen=True, slots=True)
class NumericTable:
    """The numeric features' counts side by side, padded to one width, to score all at once.

    Row ``i`` is feature ``names[i]``. ``bins`` holds PSI bin counts and
    ``reference_proportions`` the baseline shares, both padded with zeros (a bin empty on both
    sides scores 0). ``grid`` holds the KS cells, each row padded with zeros after its "above"
    cell, and ``reference_cdf`` is padded with 1.0, so that padding never changes D. Scoring 20
    features with a dozen numpy calls instead of a dozen per feature halves an evaluation.
    """

    names: tuple[str, ...]
    bins: np.ndarray
    reference_proportions: np.ndarray
    grid: np.ndarray
    reference_cdf: np.ndarray
    finite: np.ndarray
    nulls: np.ndarray
    totals: np.ndarray


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """Counts of every baseline feature, in baseline order, over the rows in the window.

    ``numeric`` holds the numeric features' counts again, as one padded table.
    """

    rows: int
    features: tuple[NumericCounts | CategoricalCounts, ...]
    numeric: NumericTable


# --------------------------------------------------------------------------- conversion


def _code_dtype(largest: int) -> type[np.unsignedinteger]:
    if largest <= np.iinfo(np.uint8).max:
        return np.uint8
    if largest <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.uint32


def _one_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]  # bool → 0/1, "1.5" → 1.5
    except (TypeError, ValueError, OverflowError):
        return math.nan


def to_float64(column: Sequence[object]) -> np.ndarray:
    """Raw payload values → float64, NaN for anything that is not a number.

    One vectorised conversion handles numbers, bools, None (NaN) and numeric strings; only a
    column holding something else (``"abc"``, containers) is converted value by value.
    """
    try:
        values = np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        if values.shape == (len(column),):
            return values
    return np.fromiter(map(_one_float, column), dtype=np.float64, count=len(column))


def _put(ring: np.ndarray, data: np.ndarray, start: int) -> None:
    """Write ``data`` into ``ring`` along its last axis from ``start``, wrapping around."""
    size = ring.shape[-1]
    end = start + data.shape[-1]
    if end <= size:
        ring[..., start:end] = data
    else:
        split = size - start
        ring[..., start:] = data[..., :split]
        ring[..., : end - size] = data[..., split:]


def _bincount(ring: np.ndarray, segments: list[slice], length: int) -> np.ndarray:
    counts = np.zeros(length, dtype=np.int64)
    for segment in segments:
        counts += np.bincount(ring[segment], minlength=length)
    return counts


# --------------------------------------------------------------------------- numeric block


class _NumericBlock:
    """Every numeric feature, binned together.

    ``np.searchsorted`` on fresh data costs ~55 ns a value here (a mispredicted branch per
    step of its binary search); a branch-free binary search over all features at once, on a
    table of grid points padded with +inf to a power of two, costs about a third less.
    """

    def __init__(self, profiles: list[NumericProfile], size: int) -> None:
        self.names = tuple(p.name for p in profiles)
        self.points: list[np.ndarray] = []
        self.reference_cdf: list[np.ndarray] = []
        self.luts: list[np.ndarray] = []
        for p in profiles:
            points, first = np.unique(np.asarray(p.quantiles, dtype=np.float64), return_index=True)
            self.points.append(points)
            self.reference_cdf.append(np.asarray(p.cdf, dtype=np.float64)[first])
            edges = np.asarray(p.edges, dtype=np.float64)
            # Cell j (points[j-1] < x <= points[j]) lies in PSI bin #{edges < points[j]};
            # the cell above the last point in the last bin.
            self.luts.append(np.append(np.searchsorted(edges, points, side="left"), len(edges)))
        longest = max((len(p) for p in self.points), default=1)
        self.width = 1 << longest.bit_length()  # > every grid's length: one +inf pad at least
        table = np.full((len(profiles), self.width), np.inf)
        for i, points in enumerate(self.points):
            table[i, : len(points)] = points
        self.table = table.ravel()
        self.row_offsets = (np.arange(len(profiles), dtype=np.int32) * self.width)[:, None]
        # Codes 0..len(points) are cells of finite values; then -inf, +inf, missing.
        self.neg_inf = self.width
        self.pos_inf = self.width + 1
        self.null = self.width + 2
        self.codes = np.zeros((len(profiles), size), dtype=_code_dtype(self.null))
        self.values = np.zeros((len(profiles), size), dtype=np.float64)
        # The padded reference side of NumericTable, and where each cell's count goes in it.
        self.last_bins = np.array([lut[-1] for lut in self.luts], dtype=np.intp)
        self.bin_width = int(self.last_bins.max()) + 1 if profiles else 1
        self.reference_proportions = np.zeros((len(profiles), self.bin_width))
        self.reference_cdf_table = np.ones((len(profiles), self.width))
        table_lut = np.empty((len(profiles), self.width), dtype=np.intp)
        for i, p in enumerate(profiles):
            self.reference_proportions[i, : len(p.proportions)] = p.proportions
            self.reference_cdf_table[i, : len(self.points[i])] = self.reference_cdf[i]
            lut = self.luts[i]
            table_lut[i, : lut.size] = lut
            table_lut[i, lut.size :] = lut[-1]  # padding cells: always empty
            table_lut[i] += i * self.bin_width
        self.table_lut = table_lut.ravel()

    def cells(self, values: np.ndarray) -> np.ndarray:
        """Per value, the number of grid points below it (``searchsorted(side="left")``)."""
        # Positions in the flat table, row by row; ``table[step - 1:]`` is a view, so each
        # step probes position + step - 1 without an extra addition.
        position = np.repeat(self.row_offsets, values.shape[1], axis=1)
        step = self.width // 2
        while step:
            probe = self.table[step - 1 :].take(position)
            position += np.less(probe, values).view(np.int8) * np.int32(step)
            step //= 2
        position -= self.row_offsets
        return position

    def write(self, values: np.ndarray, start: int) -> None:
        codes = self.cells(values)
        finite = np.isfinite(values)
        if not finite.all():
            codes[values == -np.inf] = self.neg_inf
            codes[values == np.inf] = self.pos_inf
            codes[np.isnan(values)] = self.null
            values = np.where(finite, values, 0.0)
        _put(self.codes, codes, start)
        _put(self.values, values, start)

    def counts(self, segments: list[slice], rows: int) -> tuple[NumericTable, list[NumericCounts]]:
        features = len(self.names)
        totals = np.zeros(features)
        squares = np.zeros(features)
        for segment in segments:
            chunk = self.values[:, segment]
            totals += chunk.sum(axis=1)
            squares += np.einsum("ij,ij->i", chunk, chunk)
        codes = np.empty((features, self.null + 1), dtype=np.int64)
        for i in range(features):
            codes[i] = _bincount(self.codes[i], segments, self.null + 1)
        grid = codes[:, : self.width]
        bins = np.bincount(
            self.table_lut, weights=grid.ravel(), minlength=features * self.bin_width
        )
        bins = bins.reshape(features, self.bin_width).astype(np.int64)
        bins[:, 0] += codes[:, self.neg_inf]
        bins[np.arange(features), self.last_bins] += codes[:, self.pos_inf]
        finite = grid.sum(axis=1)
        nulls = codes[:, self.null]
        table = NumericTable(
            names=self.names,
            bins=bins,
            reference_proportions=self.reference_proportions,
            grid=grid,
            reference_cdf=self.reference_cdf_table,
            finite=finite,
            nulls=nulls,
            totals=totals,
        )
        per_feature = [
            NumericCounts(
                name=name,
                rows=rows,
                nulls=int(nulls[i]),
                finite=int(finite[i]),
                total=float(totals[i]),
                total_squares=float(squares[i]),
                bins=bins[i, : self.last_bins[i] + 1],
                grid=grid[i, : len(self.points[i]) + 1],
                points=self.points[i],
                reference_cdf=self.reference_cdf[i],
            )
            for i, name in enumerate(self.names)
        ]
        return table, per_feature

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.codes, self.values)


class _CategoricalRing:
    """Category codes of one categorical feature; raw values queue in ``pending`` until binned."""

    __slots__ = ("codes", "lookup", "name", "null", "other", "pending")

    def __init__(self, profile: CategoricalProfile, size: int) -> None:
        self.name = profile.name
        self.other = len(profile.categories)
        self.null = self.other + 1
        self.lookup: dict[object, int] = {c: i for i, c in enumerate(profile.categories)}
        self.lookup[None] = self.null
        self.lookup[""] = self.null
        self.codes = np.zeros(size, dtype=_code_dtype(self.null))
        self.pending: list[object] = []

    def encode(self, column: Sequence[object]) -> list[int]:
        get = self.lookup.get
        try:
            codes = [get(value, -1) for value in column]
        except TypeError:  # an unhashable value (a list, a dict): take every value slowly
            codes = [-1] * len(column)
        if -1 in codes:
            # Misses are non-strings (1, 1.0, True) and unseen strings: spell them the way
            # the baseline builder did, then look again.
            for i, code in enumerate(codes):
                if code == -1:
                    key = category_key(column[i])
                    codes[i] = self.null if key is None else get(key, self.other)
        return codes

    def write(self, column: Sequence[object], start: int) -> None:
        _put(self.codes, np.array(self.encode(column), dtype=self.codes.dtype), start)

    def counts(self, segments: list[slice], rows: int) -> CategoricalCounts:
        counts = _bincount(self.codes, segments, self.null + 1)
        return CategoricalCounts(
            name=self.name, rows=rows, nulls=int(counts[-1]), counts=counts[:-1]
        )


# --------------------------------------------------------------------------- windows


_FIRST = itemgetter(0)
_BAD_VALUES = (KeyError, IndexError, TypeError, ValueError, OverflowError)


class FeatureWindows:
    """The most recent rows of every baseline feature, bounded by count and by age.

    Rows older than ``max_age_s`` (by ``clock``, which must not run backwards) are left out
    when the window is read; at most ``max_rows`` rows are kept. Safe to share between the
    event loop that adds rows and a thread that evaluates drift.

    ``add`` never keeps a request's lists: holding ~20 small lists per request until the next
    flush costs more than everything else (allocator and garbage-collector work, measured
    +9 µs a one-row request). A one-row request leaves a list of its numeric values, converted
    with the others in one call; a larger one is converted into a preallocated staging array
    at once. Categorical values are queued as they are, encoded in one pass per feature.
    """

    def __init__(
        self,
        baseline: BaselineProfile,
        *,
        max_rows: int = 10_000,
        max_age_s: float | None = 600.0,
        batch_rows: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems = []
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            problems.append(f"max_rows: must be an integer >= 1, got {max_rows!r}")
        if max_age_s is not None and not (
            isinstance(max_age_s, int | float)
            and not isinstance(max_age_s, bool)
            and 0 < max_age_s < math.inf
        ):
            problems.append(f"max_age_s: must be a number > 0 or None, got {max_age_s!r}")
        if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
            problems.append(f"batch_rows: must be an integer >= 1, got {batch_rows!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self._baseline = baseline
        self._max_rows = max_rows
        self._max_age_s = max_age_s
        self._batch_rows = batch_rows
        self._clock = clock
        numeric = [f for f in baseline.features if isinstance(f, NumericProfile)]
        self._numeric = _NumericBlock(numeric, max_rows)
        names = self._numeric.names
        self._numeric_names = names
        # One C call fetches every numeric column of a request, always as a tuple.
        self._getter: Callable[[dict[str, list[object]]], tuple[list[object], ...]] = (
            itemgetter(*names) if len(names) > 1 else (lambda c, n=names: tuple(c[k] for k in n))
        )
        self._categorical = tuple(
            _CategoricalRing(f, max_rows)
            for f in baseline.features
            if isinstance(f, CategoricalProfile)
        )
        self._times = np.zeros(max_rows, dtype=np.float64)
        self._head = 0  # next ring position to write
        self._filled = 0  # rows in the ring (before the age bound)
        self._stage = np.empty((len(names), batch_rows), dtype=np.float64)
        self._stage_times: list[float] = []
        self._singles: list[object] = []  # values of one-row requests not yet staged, flat
        self._placed = 0  # stage columns filled
        self._staged = 0  # rows staged: placed + singles
        self._lock = threading.Lock()
        self._row_names: tuple[str, ...] | None = None
        self._row_take: Any = False

    def __repr__(self) -> str:
        return (
            f"FeatureWindows(features={len(self._baseline.features)}, "
            f"max_rows={self._max_rows}, max_age_s={self._max_age_s}, "
            f"batch_rows={self._batch_rows})"
        )

    @property
    def baseline(self) -> BaselineProfile:
        return self._baseline

    @property
    def max_rows(self) -> int:
        return self._max_rows

    @property
    def max_age_s(self) -> float | None:
        return self._max_age_s

    @property
    def nbytes(self) -> int:
        """Bytes held by the rings and the staging array: fixed at construction."""
        arrays = [
            *self._numeric.arrays,
            *(r.codes for r in self._categorical),
            self._times,
            self._stage,
        ]
        return sum(a.nbytes for a in arrays)

    @property
    def rows(self) -> int:
        """Rows in the window now (queued rows are binned first)."""
        with self._lock:
            self._flush_locked()
            return self._window(self._clock())[1]

    def add(self, batch: FeatureBatch | FeatureRow) -> None:
        """Stage a request's rows; they are binned once ``batch_rows`` rows are staged."""
        if batch.__class__ is FeatureRow:
            names = batch.names  # type: ignore[union-attr]
            # the parser's layout is checked once, then recognised by identity
            take = self._row_take if names is self._row_names else self._row_taker(names)
            if take is not False:
                self._add_row(batch.values, take)  # type: ignore[union-attr]
                return
        rows = batch.rows
        if rows <= 0:
            return
        columns = batch.columns
        now = self._clock()
        with self._lock:
            if self._staged + rows > self._batch_rows:
                self._flush_locked()
                if rows > self._batch_rows:
                    self._write_large(columns, rows, now)
                    return
            if self._numeric_names:
                if rows == 1:
                    # Most requests: keep the row's values (not the request's lists), to be
                    # converted with the other single rows in one call.
                    singles = self._singles
                    start = len(singles)
                    try:
                        singles.extend(map(_FIRST, self._getter(columns)))
                    except (KeyError, IndexError, TypeError):
                        del singles[start:]  # what a failing request left half-way
                        singles.extend(self._convert(columns, 1)[:, 0].tolist())
                else:
                    pos = self._place_singles()
                    self._stage[:, pos : pos + rows] = self._numeric_block(columns, rows)
                    self._placed = pos + rows
            for ring in self._categorical:
                column = columns.get(ring.name)
                if column is None or len(column) != rows:
                    column = _fit(column, rows)
                ring.pending.extend(column)
            if rows == 1:
                self._stage_times.append(now)
            else:
                self._stage_times.extend([now] * rows)
            self._staged += rows
            if self._staged >= self._batch_rows:
                self._flush_locked()

    def _row_taker(
        self, names: tuple[str, ...]
    ) -> Callable[[tuple[object, ...]], Any] | bool | None:
        """How to pick this window's features out of rows laid out as ``names``: ``None``
        when the layout is the numeric features themselves, ``False`` when a feature is
        missing (then the row goes the general way). Remembered for the last layout seen."""
        position = {name: i for i, name in enumerate(names)}
        wanted = (*self._numeric_names, *(ring.name for ring in self._categorical))
        take: Callable[[tuple[object, ...]], Any] | bool | None = False
        if wanted and all(name in position for name in wanted):
            if names == wanted and not self._categorical:
                take = None
            else:
                picker = itemgetter(*(position[name] for name in wanted))
                take = picker if len(wanted) > 1 else (lambda values: (picker(values),))
        self._row_names, self._row_take = names, take
        return take

    def _add_row(
        self, values: tuple[object, ...], take: Callable[[tuple[object, ...]], Any] | None
    ) -> None:
        """One row (the usual request): its values go straight to the staging lists."""
        now = self._clock()
        with self._lock:
            if take is None:
                self._singles.extend(values)
            else:
                picked = take(values)
                numeric = len(self._numeric_names)
                if numeric:
                    self._singles.extend(picked[:numeric])
                for ring, value in zip(self._categorical, picked[numeric:], strict=True):
                    ring.pending.append(value)
            self._stage_times.append(now)
            self._staged += 1
            if self._staged >= self._batch_rows:
                self._flush_locked()

    def flush(self) -> None:
        """Bin every staged row into the rings now."""
        with self._lock:
            self._flush_locked()

    def snapshot(self, now: float | None = None) -> WindowSnapshot:
        """Counts of every feature over the window at ``now`` (the windows' clock)."""
        with self._lock:
            self._flush_locked()
            segments, rows = self._window(self._clock() if now is None else now)
            table, numeric = self._numeric.counts(segments, rows)
            counts: dict[str, NumericCounts | CategoricalCounts] = {c.name: c for c in numeric}
            counts.update((r.name, r.counts(segments, rows)) for r in self._categorical)
            return WindowSnapshot(
                rows=rows,
                features=tuple(counts[name] for name in self._baseline.names),
                numeric=table,
            )

    # -- internals (called with the lock held)

    def _convert(self, columns: dict[str, list[object]], rows: int) -> np.ndarray:
        """The slow, forgiving path: missing columns, wrong lengths, values like "abc"."""
        values = np.empty((len(self._numeric_names), rows), dtype=np.float64)
        for i, name in enumerate(self._numeric_names):
            column = columns.get(name)
            if column is None or len(column) != rows:
                column = _fit(column, rows)
            values[i] = to_float64(column)
        return values

    def _numeric_block(self, columns: dict[str, list[object]], rows: int) -> np.ndarray:
        """A multi-row request's numeric values as a (features, rows) array.

        ``np.fromiter`` over the chained columns converts about twice as fast as numpy's
        nested-sequence conversion (measured: 8 against 18 µs for 10 rows of 20 features).
        """
        try:
            parts = self._getter(columns)
            if len(set(map(len, parts))) > 1 or len(parts[0]) != rows:
                raise ValueError
            flat = np.fromiter(
                chain.from_iterable(parts), dtype=np.float64, count=len(parts) * rows
            )
        except _BAD_VALUES:
            return self._convert(columns, rows)
        return flat.reshape(len(parts), rows)

    def _write_large(self, columns: dict[str, list[object]], rows: int, now: float) -> None:
        """A request larger than a batch goes straight to the rings (staging is empty)."""
        values = self._numeric_block(columns, rows)  # (0, rows) without numeric features
        for ring in self._categorical:
            column = columns.get(ring.name)
            ring.pending = (
                list(column) if column is not None and len(column) == rows else _fit(column, rows)
            )
        self._write(values, np.full(rows, now))

    def _place_singles(self) -> int:
        """Convert the queued one-row requests into the stage; the next free column."""
        singles = self._singles
        pos = self._placed
        if singles:
            self._singles = []
            count = len(singles) // len(self._numeric_names)
            try:
                # None becomes NaN; "abc" or a list raises, and then values go one by one.
                block = np.fromiter(singles, dtype=np.float64, count=len(singles))
            except _BAD_VALUES:
                block = np.fromiter(map(_one_float, singles), dtype=np.float64, count=len(singles))
            self._stage[:, pos : pos + count] = block.reshape(count, -1).T
            pos += count
            self._placed = pos
        return pos

    def _flush_locked(self) -> None:
        staged = self._staged
        if not staged:
            return
        if self._numeric_names:
            self._place_singles()
        stamps = np.asarray(self._stage_times, dtype=np.float64)
        self._stage_times = []
        self._staged = 0
        self._placed = 0
        self._write(self._stage[:, :staged], stamps)

    def _write(self, values: np.ndarray, stamps: np.ndarray) -> None:
        total = len(stamps)
        keep = min(total, self._max_rows)
        skip = total - keep  # a flood larger than the ring: only its newest rows matter
        start = self._head
        if self._numeric_names:
            self._numeric.write(values[:, skip:], start)
        for ring in self._categorical:
            column, ring.pending = ring.pending, []
            ring.write(column[skip:] if skip else column, start)
        _put(self._times, stamps[skip:], start)
        self._head = (start + keep) % self._max_rows
        self._filled = min(self._filled + keep, self._max_rows)

    def _window(self, now: float) -> tuple[list[slice], int]:
        """The ring slices that hold the window, oldest first, and their row count."""
        if self._filled < self._max_rows:
            segments = [slice(0, self._head)]
        else:
            segments = [slice(self._head, self._max_rows), slice(0, self._head)]
        segments = [s for s in segments if s.stop > s.start]
        if self._max_age_s is not None:
            # Timestamps are non-decreasing in write order, so expired rows form a prefix.
            cutoff = now - self._max_age_s
            expired = 0
            for segment in segments:
                first = int(np.searchsorted(self._times[segment], cutoff, side="left"))
                expired += first
                if first < segment.stop - segment.start:
                    break
            kept = []
            for segment in segments:
                length = segment.stop - segment.start
                if expired >= length:
                    expired -= length
                    continue
                kept.append(slice(segment.start + expired, segment.stop))
                expired = 0
            segments = kept
        return segments, sum(s.stop - s.start for s in segments)


def _fit(column: Sequence[object] | None, rows: int) -> list[object]:
    """A missing column is all missing; a short one is padded, a long one cut."""
    if column is None:
        return [None] * rows
    fitted = list(column[:rows])
    return fitted + [None] * (rows - len(fitted))
