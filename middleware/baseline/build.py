"""Building a baseline profile from training data given by column.

:func:`build_baseline` infers each column's kind (numeric or categorical) and profiles it:
PSI edges picked from a grid of quantiles (so that every PSI bin is a union of KS grid
cells), the reference ECDF at each grid point, and the top categories with one "other"
share. :func:`build_baseline_file` reads a table (:mod:`mlwarden.middleware.baseline.tables`)
and saves the profile: ``mlwarden baseline build DATA --out baseline.json``.

The label and columns such as ids and timestamps are left out (``target``, ``exclude``):
requests never carry them, so as features they would report as missing for ever.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlwarden.middleware.baseline.profile import (
    BaselineProfile,
    CategoricalProfile,
    FeatureProfile,
    NumericProfile,
    category_key,
)
from mlwarden.middleware.baseline.schema import check_int
from mlwarden.middleware.baseline.tables import read_table
from mlwarden.middleware.errors import BaselineError

__all__ = ["build_baseline", "build_baseline_file"]


def _is_null_object(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    return isinstance(value, str) and not value


def _numeric_object(array: np.ndarray) -> bool:
    """An object column whose values are all real numbers (or missing) is numeric."""
    seen = False
    for value in array:
        if _is_null_object(value):
            continue
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            return False
        seen = True
    return seen


def _numeric_profile(
    name: str, values: np.ndarray, bins: int, quantiles: int, problems: list[str]
) -> NumericProfile | None:
    rows = len(values)
    nulls = int(np.isnan(values).sum())
    present = values[~np.isnan(values)]
    finite = np.sort(present[np.isfinite(present)])
    if finite.size == 0:
        problems.append(f"columns.{name}: has no finite value to profile")
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(finite.mean())
        std = float(finite.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        problems.append(f"columns.{name}: values too large for a finite mean and std")
        return None
    low, high = float(finite[0]), float(finite[-1])
    # The KS grid holds reference values (inverted CDF), so the ECDF at each is exact.
    grid = np.quantile(finite, np.linspace(0.0, 1.0, quantiles), method="inverted_cdf")
    cdf = np.searchsorted(finite, grid, side="right") / finite.size
    # PSI edges are picked from that grid, so that each PSI bin is a union of grid cells and
    # the windows keep one code per value. Deduplicated, and none at the maximum: every bin
    # then holds reference mass, and discrete data get one bin per value when they have few.
    picks = np.rint(np.arange(1, bins) * (quantiles - 1) / bins).astype(np.intp)
    edges = np.unique(grid[picks])
    edges = edges[edges < high]
    codes = np.searchsorted(edges, present, side="left")
    shares = np.bincount(codes, minlength=edges.size + 1) / present.size
    return NumericProfile(
        name=name,
        count=int(finite.size),
        mean=mean,
        std=std,
        null_ratio=nulls / rows,
        min=low,
        max=high,
        edges=tuple(float(e) for e in edges),
        proportions=tuple(float(s) for s in shares),
        quantiles=tuple(float(q) for q in grid),
        cdf=tuple(float(c) for c in cdf),
    )


def _categorical_profile(
    name: str, values: Iterable[object], rows: int, max_categories: int, problems: list[str]
) -> CategoricalProfile | None:
    counts: Counter[str] = Counter()
    nulls = 0
    for value in values:
        key = category_key(value)
        if key is None:
            nulls += 1
        else:
            counts[key] += 1
    total = rows - nulls
    if total == 0:
        problems.append(f"columns.{name}: has no non-missing value to profile")
        return None
    # Ties broken by name so that the same data always give the same profile.
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
    kept = sum(n for _, n in top)
    return CategoricalProfile(
        name=name,
        count=total,
        null_ratio=nulls / rows,
        categories=tuple(k for k, _ in top),
        proportions=tuple([n / total for _, n in top] + [(total - kept) / total]),
    )


def _left_out(
    columns: Mapping[str, Any],
    forced: set[str],
    exclude: Collection[str],
    target: str | None,
    problems: list[str],
) -> set[str]:
    """The columns not to profile; names that match no column are problems, not no-ops."""
    left_out: set[str] = set()
    if isinstance(exclude, str):
        # A bare string would be read as its letters.
        problems.append(f"exclude: must be a collection of column names, got {exclude!r}")
    else:
        excluded = set(exclude)
        unknown = sorted(excluded - set(columns), key=str)
        if unknown:
            problems.append(f"exclude: names columns that do not exist: {unknown}")
        both = sorted(excluded & forced, key=str)
        if both:
            problems.append(f"exclude: names columns that categorical also names: {both}")
        left_out |= excluded
    if target is not None:
        if not isinstance(target, str) or not target:
            problems.append(f"target: must be a non-empty column name, got {target!r}")
        else:
            if target not in columns:
                problems.append(f"target: names a column that does not exist: {target!r}")
            if target in forced:
                problems.append(f"target: names a column that categorical also names: {target!r}")
            left_out.add(target)
    if columns and not set(columns) - left_out:
        problems.append("columns: no column left to profile once exclude and target are left out")
    return left_out


def build_baseline(
    columns: Mapping[str, Any],
    *,
    bins: int = 10,
    quantiles: int = 101,
    max_categories: int = 50,
    categorical: Collection[str] | None = None,
    exclude: Collection[str] = (),
    target: str | None = None,
    source: str | None = None,
) -> BaselineProfile:
    """Profile reference data given by column.

    The kind of each column is inferred: numeric dtypes (and object columns holding only
    numbers) are numeric, even with few distinct integer values, because PSI bins and KS
    handle those; strings, booleans and mixed objects are categorical. Name a column in
    ``categorical`` to profile numeric codes as categories. NaN, None and ``""`` are missing;
    ±inf count in the PSI end bins but not in mean, std or quantiles.

    ``target`` (the label) and the columns in ``exclude`` are not profiled and not checked:
    requests never carry them, so the live windows would see them missing on every request.
    """
    problems: list[str] = []
    for key, value, minimum in (
        ("bins", bins, 2),
        ("quantiles", quantiles, 2),
        ("max_categories", max_categories, 1),
    ):
        check_int(problems, key, value, minimum)
    if problems:
        raise BaselineError(problems, source=source)
    forced = set(categorical or ())
    unknown = sorted(forced - set(columns))
    if unknown:
        problems.append(f"categorical: names columns that do not exist: {unknown}")
    if not columns:
        problems.append("columns: no column to profile")
    left_out = _left_out(columns, forced, exclude, target, problems)
    arrays: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        if name in left_out:
            continue
        if not isinstance(name, str) or not name:
            problems.append(f"columns: a column name must be a non-empty string, got {name!r}")
            continue
        array = np.asarray(column)
        if array.ndim != 1:
            problems.append(f"columns.{name}: must be one-dimensional, got shape {array.shape}")
            continue
        if array.dtype.kind not in "biufOUS":
            problems.append(f"columns.{name}: unsupported dtype {array.dtype}")
            continue
        arrays[name] = array
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        sizes = {n: len(a) for n, a in arrays.items()}
        problems.append(f"columns: must all have the same length, got {sizes}")
    elif lengths == {0}:
        problems.append("columns: no rows to profile")
    if problems:
        raise BaselineError(problems, source=source)
    rows = lengths.pop()

    features: list[FeatureProfile] = []
    for name, array in arrays.items():
        kind = array.dtype.kind
        numeric = name not in forced and (kind in "iuf" or (kind == "O" and _numeric_object(array)))
        profile: FeatureProfile | None
        if numeric:
            try:
                values = array.astype(np.float64)
            except (OverflowError, TypeError, ValueError) as exc:
                problems.append(f"columns.{name}: cannot be read as numbers: {exc}")
                continue
            profile = _numeric_profile(name, values, bins, quantiles, problems)
        else:
            items = array.tolist() if kind != "O" else array
            profile = _categorical_profile(name, items, rows, max_categories, problems)
        if profile is not None:
            features.append(profile)
    if problems:
        raise BaselineError(problems, source=source)
    return BaselineProfile(
        features=tuple(features),
        rows=rows,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source,
    )


def build_baseline_file(
    data_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    exclude: Collection[str] = (),
    target: str | None = None,
    **options: Any,
) -> BaselineProfile:
    """Read a table, profile it and save the profile (``mlwarden baseline build``).

    ``exclude``, ``target`` and ``options`` are :func:`build_baseline`'s.
    """
    options.setdefault("source", Path(data_path).name)
    profile = build_baseline(read_table(data_path), exclude=exclude, target=target, **options)
    profile.save(out_path)
    return profile
