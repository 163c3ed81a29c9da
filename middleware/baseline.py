"""The baseline profile: what the training data looked like, feature by feature.

A profile is built once from a table (``mlwarden baseline build DATA --out baseline.json``),
saved as JSON and loaded at start-up. It holds exactly what the drift tests need and nothing
that grows with the data: for a numeric feature the PSI bin edges and reference shares, a fine
grid of quantiles with the reference ECDF at each of them (for KS), mean, std, min, max; for a
categorical feature the top-K categories and their shares plus one "other" share.

Every problem with a profile file is collected and raised once as a :class:`BaselineError`
that names each key, so that an operator fixes a broken file in one pass.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import numbers
import os
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlwarden.middleware.errors import BaselineError

__all__ = [
    "BASELINE_VERSION",
    "BaselineProfile",
    "CategoricalProfile",
    "FeatureProfile",
    "NumericProfile",
    "build_baseline",
    "build_baseline_file",
    "category_key",
    "load_baseline",
    "read_table",
]

BASELINE_VERSION = 1
_SUM_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- the profile


@dataclass(frozen=True, slots=True)
class NumericProfile:
    """A numeric feature of the reference data.

    ``count`` is the number of finite reference values: mean, std, min, max, ``quantiles`` and
    ``cdf`` describe those (±inf are left out, they have no quantile). ``cdf[j]`` is the
    reference ECDF at ``quantiles[j]``: it equals the grid probability for continuous data but
    not under ties, which is why it is stored rather than assumed.

    ``proportions`` are the shares of the non-null values (infinities included, in the end
    bins) in the PSI bins that the interior ``edges`` delimit: bin ``i`` holds
    ``edges[i-1] < x <= edges[i]``. Every edge is one of the ``quantiles``, so that a PSI bin
    is a union of KS grid cells.
    """

    kind: ClassVar[str] = "numeric"

    name: str
    count: int
    mean: float
    std: float
    null_ratio: float
    min: float
    max: float
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    quantiles: tuple[float, ...]
    cdf: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "count": self.count,
            "null_ratio": self.null_ratio,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "quantiles": list(self.quantiles),
            "cdf": list(self.cdf),
        }


@dataclass(frozen=True, slots=True)
class CategoricalProfile:
    """A categorical feature of the reference data.

    ``categories`` are the most frequent values (as :func:`category_key` spells them);
    ``proportions`` has one more entry than ``categories``: the trailing share of every other
    value, so that values never seen in training still land somewhere. ``count`` is the number
    of non-null reference values the shares are taken over.
    """

    kind: ClassVar[str] = "categorical"

    name: str
    count: int
    null_ratio: float
    categories: tuple[str, ...]
    proportions: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "count": self.count,
            "null_ratio": self.null_ratio,
            "categories": list(self.categories),
            "proportions": list(self.proportions),
        }


FeatureProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True, slots=True)
class BaselineProfile:
    """Every feature of the reference data, in order, plus where it came from."""

    features: tuple[FeatureProfile, ...]
    rows: int
    created_at: str
    source: str | None = None
    version: int = BASELINE_VERSION
    _index: dict[str, FeatureProfile] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {f.name: f for f in self.features})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeatureProfile:
        """The profile of ``name``; ``KeyError`` when the baseline does not know it."""
        return self._index[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "source": self.source,
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str | None = None) -> BaselineProfile:
        """Validate ``data`` (parsed JSON) and build the profile; every problem is reported."""
        problems: list[str] = []
        profile = _parse_profile(data, problems)
        if problems or profile is None:
            raise BaselineError(problems or ["not a baseline profile"], source=source)
        return profile

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile as JSON, atomically: a reader never sees half a file."""
        target = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_baseline(path: str | os.PathLike[str]) -> BaselineProfile:
    """Read and validate a baseline JSON file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        # The path is in the problem too: callers that collect problems drop ``source``.
        raise BaselineError(f"file not found: {source}", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"cannot read {source}: {exc}", source=source) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{source} is not valid JSON: {exc}", source=source) from exc
    return BaselineProfile.from_dict(data, source=source)


# --------------------------------------------------------------------------- validation

_TOP_KEYS = ("version", "created_at", "source", "rows", "features")
_NUMERIC_KEYS = (
    "name",
    "kind",
    "count",
    "null_ratio",
    "mean",
    "std",
    "min",
    "max",
    "edges",
    "proportions",
    "quantiles",
    "cdf",
)
_CATEGORICAL_KEYS = ("name", "kind", "count", "null_ratio", "categories", "proportions")


def _show(value: object) -> str:
    """A short repr for messages: long lists are cut, not dumped."""
    if isinstance(value, list) and len(value) > 8:
        return "[" + ", ".join(repr(v) for v in value[:8]) + f", ... ({len(value)} items)]"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_keys(
    problems: list[str], where: str, data: dict[str, Any], allowed: tuple[str, ...]
) -> bool:
    """Report missing and unknown keys; False when a key is missing (values can't be read)."""
    for key in data:
        if key not in allowed:
            problems.append(f"{where}{key}: unknown key (allowed: {', '.join(allowed)})")
    missing = [key for key in allowed if key not in data]
    problems.extend(f"{where}{key}: missing" for key in missing)
    return not missing


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(problems: list[str], key: str, value: object, minimum: int) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.append(f"{key}: must be an integer >= {minimum}, got {_show(value)}")
        return None
    return value


def _float(
    problems: list[str],
    key: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        problems.append(f"{key}: must be a finite number, got {_show(value)}")
        return None
    number = float(value)  # type: ignore[arg-type]
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        problems.append(f"{key}: must be {bounds}, got {_show(value)}")
        return None
    return number


def _floats(
    problems: list[str], key: str, value: object, *, min_len: int = 0
) -> tuple[float, ...] | None:
    if not isinstance(value, list):
        problems.append(f"{key}: must be a list of numbers, got {_show(value)}")
        return None
    bad = [i for i, v in enumerate(value) if not _is_number(v) or not math.isfinite(v)]
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        problems.append(f"{key}[{i}]: must be a finite number, got {_show(value[i])}{more}")
        return None
    if len(value) < min_len:
        problems.append(f"{key}: must have at least {min_len} values, got {_show(value)}")
        return None
    return tuple(float(v) for v in value)


def _shares(
    problems: list[str], key: str, value: object, expected_len: int | None
) -> tuple[float, ...] | None:
    shares = _floats(problems, key, value, min_len=1)
    if shares is None:
        return None
    ok = True
    if expected_len is not None and len(shares) != expected_len:
        problems.append(f"{key}: must have {expected_len} values, got {len(shares)}")
        ok = False
    if any(s < 0 for s in shares):
        problems.append(f"{key}: must not be negative, got {_show(list(shares))}")
        ok = False
    elif abs(math.fsum(shares) - 1.0) > _SUM_TOLERANCE:
        problems.append(
            f"{key}: must sum to 1 (±{_SUM_TOLERANCE:g}), got sum {math.fsum(shares)!r}"
        )
        ok = False
    return shares if ok else None


def _parse_feature(problems: list[str], where: str, data: object) -> FeatureProfile | None:
    if not isinstance(data, dict):
        problems.append(f"{where}: must be an object, got {_show(data)}")
        return None
    kind = data.get("kind")
    if kind not in ("numeric", "categorical"):
        problems.append(f"{where}.kind: must be 'numeric' or 'categorical', got {_show(kind)}")
        return None
    start = len(problems)
    keys_ok = _check_keys(
        problems, f"{where}.", data, _NUMERIC_KEYS if kind == "numeric" else _CATEGORICAL_KEYS
    )
    if not keys_ok:
        return None
    name = data["name"]
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.name: must be a non-empty string, got {_show(name)}")
    count = _int(problems, f"{where}.count", data["count"], 1)
    null_ratio = _float(problems, f"{where}.null_ratio", data["null_ratio"], low=0.0, high=1.0)

    if kind == "categorical":
        categories = data["categories"]
        cats_ok = isinstance(categories, list) and all(isinstance(c, str) and c for c in categories)
        if not cats_ok:
            problems.append(
                f"{where}.categories: must be a list of non-empty strings, got {_show(categories)}"
            )
        elif len(set(categories)) != len(categories):
            dupes = sorted(c for c, k in Counter(categories).items() if k > 1)
            problems.append(f"{where}.categories: must be unique, repeated {_show(dupes)}")
        expected = len(categories) + 1 if cats_ok else None
        shares = _shares(problems, f"{where}.proportions", data["proportions"], expected)
        if len(problems) > start:
            return None
        return CategoricalProfile(
            name=name,
            count=count,
            null_ratio=null_ratio,  # type: ignore[arg-type]
            categories=tuple(categories),
            proportions=shares,  # type: ignore[arg-type]
        )

    mean = _float(problems, f"{where}.mean", data["mean"])
    std = _float(problems, f"{where}.std", data["std"], low=0.0)
    low = _float(problems, f"{where}.min", data["min"])
    high = _float(problems, f"{where}.max", data["max"])
    if low is not None and high is not None and low > high:
        problems.append(f"{where}.max: must be >= min ({low!r}), got {high!r}")
    edges = _floats(problems, f"{where}.edges", data["edges"])
    if edges is not None and any(b <= a for a, b in itertools.pairwise(edges)):
        problems.append(f"{where}.edges: must be strictly increasing, got {_show(list(edges))}")
        edges = None
    shares = _shares(
        problems,
        f"{where}.proportions",
        data["proportions"],
        len(edges) + 1 if edges is not None else None,
    )
    quantiles = _floats(problems, f"{where}.quantiles", data["quantiles"], min_len=2)
    if quantiles is not None:
        if any(b < a for a, b in itertools.pairwise(quantiles)):
            problems.append(
                f"{where}.quantiles: must be non-decreasing, got {_show(list(quantiles))}"
            )
        elif edges is not None:
            grid = set(quantiles)
            strays = [e for e in edges if e not in grid]
            if strays:
                problems.append(
                    f"{where}.edges: every edge must be one of the quantiles (PSI bins are "
                    f"unions of KS grid cells), not {_show(strays)}"
                )
    cdf = _floats(problems, f"{where}.cdf", data["cdf"], min_len=2)
    if cdf is not None:
        if quantiles is not None and len(cdf) != len(quantiles):
            problems.append(
                f"{where}.cdf: must have one value per quantile ({len(quantiles)}), got {len(cdf)}"
            )
        if any(b < a for a, b in itertools.pairwise(cdf)) or cdf[0] < 0:
            problems.append(
                f"{where}.cdf: must be non-decreasing from >= 0, got {_show(list(cdf))}"
            )
        elif abs(cdf[-1] - 1.0) > _SUM_TOLERANCE:
            problems.append(f"{where}.cdf: must end at 1, got {cdf[-1]!r}")
    if len(problems) > start:
        return None
    return NumericProfile(
        name=name,
        count=count,
        mean=mean,
        std=std,  # type: ignore[arg-type]
        null_ratio=null_ratio,
        min=low,
        max=high,  # type: ignore[arg-type]
        edges=edges,
        proportions=shares,
        quantiles=quantiles,
        cdf=cdf,  # type: ignore[arg-type]
    )


def _parse_profile(data: object, problems: list[str]) -> BaselineProfile | None:
    if not isinstance(data, dict):
        problems.append(f"the profile must be a JSON object, got {_show(data)}")
        return None
    _check_keys(problems, "", data, _TOP_KEYS)
    version = data.get("version")
    if "version" in data and (version != BASELINE_VERSION or isinstance(version, bool)):
        problems.append(f"version: must be {BASELINE_VERSION}, got {_show(version)}")
    created_at = data.get("created_at")
    if "created_at" in data:
        try:
            if not isinstance(created_at, str):
                raise TypeError
            datetime.fromisoformat(created_at)
        except (TypeError, ValueError):
            problems.append(
                f"created_at: must be an ISO 8601 date-time string, got {_show(created_at)}"
            )
    source = data.get("source")
    if source is not None and not isinstance(source, str):
        problems.append(f"source: must be a string or null, got {_show(source)}")
    rows = _int(problems, "rows", data["rows"], 1) if "rows" in data else None
    raw_features = data.get("features")
    features: list[FeatureProfile] = []
    if "features" in data:
        if not isinstance(raw_features, list) or not raw_features:
            problems.append(
                f"features: must be a non-empty list of features, got {_show(raw_features)}"
            )
        else:
            seen: dict[str, int] = {}
            for i, item in enumerate(raw_features):
                feature = _parse_feature(problems, f"features[{i}]", item)
                name = item.get("name") if isinstance(item, dict) else None
                if isinstance(name, str):
                    if name in seen:
                        problems.append(
                            f"features[{i}].name: duplicate feature name {name!r} "
                            f"(also features[{seen[name]}])"
                        )
                    else:
                        seen[name] = i
                if feature is not None:
                    features.append(feature)
    for i, feature in enumerate(features):
        if rows is not None and feature.count > rows:
            problems.append(f"features[{i}].count: must be <= rows ({rows}), got {feature.count}")
    if problems:
        return None
    return BaselineProfile(
        features=tuple(features),
        rows=rows,  # type: ignore[arg-type]
        created_at=created_at,
        source=source,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- building


def category_key(value: object) -> str | None:
    """The one spelling of a categorical value, shared by the builder and the windows.

    ``None``, ``""`` and NaN are missing. Booleans (and the strings true/false in any case,
    as CSV writers spell them) become ``"true"``/``"false"`` as JSON does; integral numbers
    lose their ``.0`` so that ``1``, ``1.0`` and ``"1"`` are one category.
    """
    if isinstance(value, str):
        if not value:
            return None
        lowered = value.lower()
        return lowered if lowered in ("true", "false") else value
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return None
        if number.is_integer():
            return str(int(number))
        return repr(number)
    if isinstance(value, bytes):
        return category_key(value.decode("utf-8", "replace"))
    return str(value)


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


def build_baseline(
    columns: Mapping[str, Any],
    *,
    bins: int = 10,
    quantiles: int = 101,
    max_categories: int = 50,
    categorical: Collection[str] | None = None,
    source: str | None = None,
) -> BaselineProfile:
    """Profile reference data given by column.

    The kind of each column is inferred: numeric dtypes (and object columns holding only
    numbers) are numeric, even with few distinct integer values, because PSI bins and KS
    handle those; strings, booleans and mixed objects are categorical. Name a column in
    ``categorical`` to profile numeric codes as categories. NaN, None and ``""`` are missing;
    ±inf count in the PSI end bins but not in mean, std or quantiles.
    """
    problems: list[str] = []
    for key, value, minimum in (
        ("bins", bins, 2),
        ("quantiles", quantiles, 2),
        ("max_categories", max_categories, 1),
    ):
        _int(problems, key, value, minimum)
    if problems:
        raise BaselineError(problems, source=source)
    forced = set(categorical or ())
    unknown = sorted(forced - set(columns))
    if unknown:
        problems.append(f"categorical: names columns that do not exist: {unknown}")
    if not columns:
        problems.append("columns: no column to profile")
    arrays: dict[str, np.ndarray] = {}
    for name, column in columns.items():
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


# --------------------------------------------------------------------------- tables


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise BaselineError("CSV file is empty: a header row is required", source=source)
        problems = [
            f"header: column {i + 1} has no name" for i, name in enumerate(header) if not name
        ]
        repeated = sorted(n for n, k in Counter(header).items() if k > 1 and n)
        if repeated:
            problems.append(f"header: repeated column names {repeated}")
        cells: list[list[str]] = [[] for _ in header]
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                problems.append(f"line {line}: has {len(row)} fields, the header has {len(header)}")
                if len(problems) >= 20:
                    break
                continue
            for cell_list, cell in zip(cells, row, strict=True):
                cell_list.append(cell)
    if problems:
        raise BaselineError(problems, source=source)
    table: dict[str, np.ndarray] = {}
    for name, column in zip(header, cells, strict=True):
        try:
            # Empty cells are missing; every other cell must parse for the column to be numeric.
            table[name] = np.array([float(c) if c else math.nan for c in column], dtype=np.float64)
        except ValueError:
            table[name] = np.array(column, dtype=object)
    return table


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BaselineError(
            "reading Parquet needs pyarrow: pip install 'mlwarden[parquet]'", source=str(path)
        ) from exc
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ImportError) as exc:
        raise BaselineError(f"cannot read the Parquet file: {exc}", source=str(path)) from exc
    columns: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            # Through float64 so that nulls become NaN in one vectorised step.
            columns[name] = column.cast(pa.float64()).to_numpy()
        elif (
            pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
        ):
            columns[name] = np.array(column.to_pylist(), dtype=object)
        else:
            problems.append(f"columns.{name}: unsupported Parquet type {kind}")
    if problems:
        raise BaselineError(problems, source=str(path))
    return columns


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse to load
        raise BaselineError(f"cannot read the .npz file safely: {exc}", source=source) from exc
    except (OSError, EOFError) as exc:
        raise BaselineError(f"cannot read the .npz file: {exc}", source=source) from exc
    names_key = next((k for k in ("columns", "feature_names") if k in arrays), None)
    matrices = [k for k, a in arrays.items() if a.ndim == 2]
    if names_key is not None:
        names = [str(n) for n in arrays.pop(names_key).ravel()]
        if len(matrices) != 1 or len(arrays) != 1:
            raise BaselineError(
                f"with a {names_key!r} array the archive must hold exactly one 2-D array, "
                f"got {sorted(arrays)}",
                source=source,
            )
        matrix = arrays[matrices[0]]
        if matrix.shape[1] != len(names):
            raise BaselineError(
                f"{names_key}: names {len(names)} columns, the array has {matrix.shape[1]}",
                source=source,
            )
        return {name: matrix[:, i] for i, name in enumerate(names)}
    bad = [k for k, a in arrays.items() if a.ndim != 1]
    if bad:
        raise BaselineError(
            f"arrays {bad} are not one-dimensional: give each column as a 1-D array, or one "
            "2-D array plus a 'columns' array of names",
            source=source,
        )
    if not arrays:
        raise BaselineError("the archive holds no array", source=source)
    return arrays


def read_table(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a reference table by its suffix: ``.csv``, ``.parquet``/``.pq`` or ``.npz``."""
    file = Path(path)
    suffix = file.suffix.lower()
    readers = {
        ".csv": _read_csv,
        ".parquet": _read_parquet,
        ".pq": _read_parquet,
        ".npz": _read_npz,
    }
    if suffix not in readers:
        raise BaselineError(
            f"unknown table format {suffix or '(no suffix)'!r}: expected .csv, .parquet or .npz",
            source=str(path),
        )
    if not file.is_file():
        raise BaselineError(f"file not found: {path}", source=str(path))
    try:
        return readers[suffix](file)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BaselineError(f"cannot read {path}: {exc}", source=str(path)) from exc


def build_baseline_file(
    data_path: str | os.PathLike[str], out_path: str | os.PathLike[str], **options: Any
) -> BaselineProfile:
    """Read a table, profile it and save the profile (``mlwarden baseline build``)."""
    options.setdefault("source", Path(data_path).name)
    profile = build_baseline(read_table(data_path), **options)
    profile.save(out_path)
    return profile
