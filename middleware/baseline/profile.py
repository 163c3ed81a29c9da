"""The baseline profile: what the training data looked like, feature by feature.

A profile is built once from a table (:mod:`mlwarden.middleware.baseline.build`), saved as
JSON and loaded at start-up (:func:`load_baseline`, checked by
:mod:`mlwarden.middleware.baseline.schema`). It holds exactly what the drift tests need and
nothing that grows with the data: for a numeric feature the PSI bin edges and reference
shares, a fine grid of quantiles with the reference ECDF at each of them (for KS), mean, std,
min, max; for a categorical feature the top-K categories and their shares plus one "other"
share. :func:`category_key` is the one spelling of a category, shared by the builder, the
feature windows and the labels.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlwarden.middleware.baseline.schema import BASELINE_VERSION, check_profile
from mlwarden.middleware.errors import BaselineError

__all__ = [
    "BaselineProfile",
    "CategoricalProfile",
    "FeatureProfile",
    "NumericProfile",
    "category_key",
    "load_baseline",
]


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

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct grid points and the reference ECDF at each: the cells that the
        feature windows bin values into and the drift tests count (ties in the quantiles of
        discrete data collapse to one point)."""
        points, first = np.unique(np.asarray(self.quantiles, dtype=np.float64), return_index=True)
        return points, np.asarray(self.cdf, dtype=np.float64)[first]

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
_KINDS: dict[str, type[FeatureProfile]] = {p.kind: p for p in (NumericProfile, CategoricalProfile)}


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
        checked = check_profile(data, problems)
        if problems or checked is None:
            raise BaselineError(problems or ["not a baseline profile"], source=source)
        features = tuple(_KINDS[f.pop("kind")](**f) for f in checked.pop("features"))
        return cls(features=features, **checked)

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
