"""The baseline profile's file format: every key, type and invariant, checked at load time.

:func:`check_profile` takes parsed JSON and returns the checked fields (or None), appending
every problem it finds to a list, so that the caller raises once and an operator fixes a
broken file in one pass; it builds no profile objects (that is
:mod:`mlwarden.middleware.baseline.profile`'s part). Besides types and ranges it checks what
the drift tests rely on: shares that sum to 1, increasing PSI edges that are all KS grid
points, a non-decreasing CDF ending at 1, unique names and categories, counts within rows.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import datetime
from typing import Any

__all__ = ["BASELINE_VERSION", "check_int", "check_profile"]

#: The version of the file format written and read.
BASELINE_VERSION = 1
_SUM_TOLERANCE = 1e-6

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


def check_int(problems: list[str], key: str, value: object, minimum: int) -> int | None:
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


def _check_feature(problems: list[str], where: str, data: object) -> dict[str, Any] | None:
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
    count = check_int(problems, f"{where}.count", data["count"], 1)
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
        return {
            "kind": kind,
            "name": name,
            "count": count,
            "null_ratio": null_ratio,
            "categories": tuple(categories),
            "proportions": shares,
        }

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
    return {
        "kind": kind,
        "name": name,
        "count": count,
        "mean": mean,
        "std": std,
        "null_ratio": null_ratio,
        "min": low,
        "max": high,
        "edges": edges,
        "proportions": shares,
        "quantiles": quantiles,
        "cdf": cdf,
    }


def check_profile(data: object, problems: list[str]) -> dict[str, Any] | None:
    """The checked fields of a parsed profile (its features as dicts with their ``kind``), or
    None; every problem found is appended to ``problems``."""
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
    rows = check_int(problems, "rows", data["rows"], 1) if "rows" in data else None
    raw_features = data.get("features")
    features: list[dict[str, Any]] = []
    if "features" in data:
        if not isinstance(raw_features, list) or not raw_features:
            problems.append(
                f"features: must be a non-empty list of features, got {_show(raw_features)}"
            )
        else:
            seen: dict[str, int] = {}
            for i, item in enumerate(raw_features):
                feature = _check_feature(problems, f"features[{i}]", item)
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
        if rows is not None and feature["count"] > rows:
            problems.append(
                f"features[{i}].count: must be <= rows ({rows}), got {feature['count']}"
            )
    if problems:
        return None
    return {"features": features, "rows": rows, "created_at": created_at, "source": source}
