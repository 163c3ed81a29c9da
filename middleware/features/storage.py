"""How a feature window stores its values: fixed rings of codes, and counting them.

Every ring is preallocated at ``max_rows`` entries; what is kept never grows with traffic:

- :class:`NumericBlock`: every numeric feature in 2-D rings, one row per feature: the value's
  cell on the baseline's fine KS grid (PSI bins are unions of those cells, so one code serves
  both tests), found by a branch-free binary search over all features at once, and the value
  itself, for the mean;
- :class:`CategoricalRing`: one categorical feature's category codes (unseen values →
  "other");

and the conversions they share: payload values to float64 (NaN for anything that is not a
number) and writes that wrap round a ring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlwarden.middleware.baseline import CategoricalProfile, NumericProfile, category_key
from mlwarden.middleware.features.counts import CategoricalCounts, NumericCounts, NumericTable

__all__ = ["CategoricalRing", "NumericBlock", "one_float", "put", "to_float64"]


def _code_dtype(largest: int) -> type[np.unsignedinteger]:
    if largest <= np.iinfo(np.uint8).max:
        return np.uint8
    if largest <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.uint32


def one_float(value: object) -> float:
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
    return np.fromiter(map(one_float, column), dtype=np.float64, count=len(column))


def put(ring: np.ndarray, data: np.ndarray, start: int) -> None:
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


class NumericBlock:
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
            points, cdf = p.grid()
            self.points.append(points)
            self.reference_cdf.append(cdf)
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
        # For cell_counts: each feature's codes offset into one bincount, and its top cell.
        self.code_offsets = (np.arange(len(profiles), dtype=np.intp) * (self.null + 1))[:, None]
        self.above = np.array([len(p) for p in self.points], dtype=np.intp)

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
        put(self.codes, codes, start)
        put(self.values, values, start)

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

    def cell_counts(self, segments: list[slice], cells: int) -> np.ndarray:
        """Values per grid cell and feature, ``(features, cells)``, for the drift tests.

        ``-inf`` counts in the first cell and ``+inf`` in the one above the last point; nulls
        are left out. One ``bincount`` over every feature's codes, offset per feature.
        """
        features = len(self.names)
        stride = self.null + 1
        total = np.zeros(features * stride, dtype=np.int64)
        for segment in segments:
            block = self.codes[:, segment].astype(np.intp)
            block += self.code_offsets
            total += np.bincount(block.ravel(), minlength=features * stride)
        counts = total.reshape(features, stride)
        out = counts[:, :cells].copy()
        out[:, 0] += counts[:, self.neg_inf]
        out[np.arange(features), self.above] += counts[:, self.pos_inf]
        return out

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.codes, self.values)


class CategoricalRing:
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
        put(self.codes, np.array(self.encode(column), dtype=self.codes.dtype), start)

    def category_counts(self, segments: list[slice]) -> np.ndarray:
        """Values per category, "other" last; nulls left out (for the drift tests)."""
        return _bincount(self.codes, segments, self.null + 1)[: self.null]

    def counts(self, segments: list[slice], rows: int) -> CategoricalCounts:
        counts = _bincount(self.codes, segments, self.null + 1)
        return CategoricalCounts(
            name=self.name, rows=rows, nulls=int(counts[-1]), counts=counts[:-1]
        )
