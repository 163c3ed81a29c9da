"""Feature windows: bounds by count and age, fixed memory, value handling, binning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlwarden.middleware.baseline import BaselineProfile, build_baseline
from mlwarden.middleware.features import (
    CategoricalCounts,
    FeatureWindows,
    NumericCounts,
    to_float64,
)
from mlwarden.middleware.payloads import FeatureBatch, FeatureRow
from tests.doubles import FakeClock

pytestmark = pytest.mark.floor


def _batch(**columns: list[object]) -> FeatureBatch:
    rows = len(next(iter(columns.values())))
    return FeatureBatch(rows=rows, columns=dict(columns), format="json")


@pytest.fixture(scope="module")
def baseline() -> BaselineProfile:
    rng = np.random.default_rng(0)
    return build_baseline(
        {
            "x": rng.normal(size=5_000),
            "n": rng.poisson(2, 5_000),
            "c": np.array(["red", "green", "blue"])[rng.integers(0, 3, 5_000)],
            "flag": rng.integers(0, 2, 5_000).astype(bool),
        }
    )


def _numeric(windows: FeatureWindows, name: str, now: float | None = None) -> NumericCounts:
    counts = next(f for f in windows.snapshot(now).features if f.name == name)
    assert isinstance(counts, NumericCounts)
    return counts


def _categorical(windows: FeatureWindows, name: str) -> CategoricalCounts:
    counts = next(f for f in windows.snapshot().features if f.name == name)
    assert isinstance(counts, CategoricalCounts)
    return counts


# --------------------------------------------------------------------------- bounds


def test_window_keeps_only_the_newest_max_rows(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_rows=1_000, max_age_s=None, batch_rows=64)
    values = np.arange(2_500, dtype=np.float64)
    for start in range(0, 2_500, 10):
        windows.add(_batch(x=values[start : start + 10].tolist()))
    assert windows.rows == 1_000
    assert _numeric(windows, "x").mean == pytest.approx(values[-1_000:].mean())


def test_rows_older_than_max_age_are_left_out(baseline: BaselineProfile) -> None:
    clock = FakeClock()
    windows = FeatureWindows(baseline, max_rows=1_000, max_age_s=60.0, clock=clock)
    windows.add(_batch(x=[1.0] * 30))
    clock.now += 45
    windows.add(_batch(x=[3.0] * 10))
    assert windows.rows == 40
    clock.now += 20  # the first 30 rows are now 65 s old
    assert windows.rows == 10
    assert _numeric(windows, "x").mean == pytest.approx(3.0)
    clock.now += 41
    assert windows.rows == 0


def test_age_bound_holds_across_the_ring_wrapping(baseline: BaselineProfile) -> None:
    clock = FakeClock()
    windows = FeatureWindows(baseline, max_rows=100, max_age_s=10.0, batch_rows=7, clock=clock)
    for second in range(30):
        clock.now = 1000.0 + second
        windows.add(_batch(x=[float(second)] * 6))
    # 180 rows went through a 100-row ring; the last 11 seconds (19..29) hold 66 rows.
    counts = _numeric(windows, "x")
    assert counts.rows == 66
    assert counts.mean == pytest.approx(np.mean(np.repeat(np.arange(19, 30), 6)))


def test_snapshot_at_an_explicit_time_uses_it(baseline: BaselineProfile) -> None:
    clock = FakeClock()
    windows = FeatureWindows(baseline, max_age_s=10.0, clock=clock)
    windows.add(_batch(x=[1.0, 2.0]))
    assert windows.snapshot(now=clock.now + 5).rows == 2
    assert windows.snapshot(now=clock.now + 11).rows == 0


def test_rows_are_staged_until_a_batch_fills_or_a_read(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, batch_rows=100, max_age_s=None)
    for _ in range(99):
        windows.add(_batch(x=[1.0]))
    assert windows._filled == 0
    windows.add(_batch(x=[1.0]))
    assert windows._filled == 100
    windows.add(_batch(x=[2.0]))
    assert windows.rows == 101  # reading flushes the staged row


def test_memory_stays_fixed_after_100k_rows(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_rows=5_000, max_age_s=None)
    arrays = [
        windows._numeric.codes,
        windows._numeric.values,
        windows._times,
        windows._stage,
        *(ring.codes for ring in windows._categorical),
    ]
    shapes = [(a.shape, a.dtype) for a in arrays]
    nbytes = windows.nbytes
    rng = np.random.default_rng(1)
    for _ in range(1_000):
        windows.add(
            _batch(x=rng.normal(size=100).tolist(), n=[1] * 100, c=["red"] * 100, flag=[True] * 100)
        )
    assert windows.rows == 5_000
    assert windows.nbytes == nbytes
    after = [
        windows._numeric.codes,
        windows._numeric.values,
        windows._times,
        windows._stage,
        *(ring.codes for ring in windows._categorical),
    ]
    assert all(a is b for a, b in zip(arrays, after, strict=True))
    assert [(a.shape, a.dtype) for a in after] == shapes
    assert all(len(ring.pending) == 0 for ring in windows._categorical)
    assert windows._stage_times == [] and windows._singles == []


def test_a_request_larger_than_the_ring_keeps_its_newest_rows(
    baseline: BaselineProfile,
) -> None:
    windows = FeatureWindows(baseline, max_rows=100, max_age_s=None, batch_rows=32)
    windows.add(_batch(x=[5.0]))
    windows.add(_batch(x=list(range(250)), c=["red"] * 250))
    counts = _numeric(windows, "x")
    assert counts.rows == 100
    assert counts.mean == pytest.approx(np.arange(150, 250).mean())
    assert _categorical(windows, "c").counts[0] == 100


def test_single_and_multi_row_requests_keep_arrival_order(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_rows=10, max_age_s=None, batch_rows=8)
    sequence: list[float] = []
    for i in range(20):
        values = [float(i)] if i % 3 else [float(i), float(i) + 0.5]
        sequence.extend(values)
        windows.add(_batch(x=values))
    assert _numeric(windows, "x").mean == pytest.approx(np.mean(sequence[-10:]))


def test_single_row_values_stay_with_their_timestamps(baseline: BaselineProfile) -> None:
    clock = FakeClock(0.0)
    windows = FeatureWindows(baseline, max_age_s=10.0, batch_rows=50, clock=clock)
    for second in range(40):
        clock.now = float(second)
        windows.add(_batch(x=[float(second)], n=[1]))  # every numeric feature: fast path
    counts = _numeric(windows, "x")  # rows of seconds 29..39
    assert counts.rows == 11
    assert counts.mean == pytest.approx(34.0)


@pytest.mark.parametrize(
    "options",
    [
        {"max_rows": 0},
        {"max_age_s": 0},
        {"max_age_s": math.inf},
        {"batch_rows": 0},
        {"max_rows": True},
    ],
)
def test_invalid_options_are_rejected(baseline: BaselineProfile, options: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        FeatureWindows(baseline, **options)


# --------------------------------------------------------------------------- values


def test_numeric_values_of_every_raw_kind(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    windows.add(_batch(x=[1.0, None, math.nan, "abc", "1.5", True, 2, math.inf, [1], {}]))
    counts = _numeric(windows, "x")
    assert counts.rows == 10
    assert counts.nulls == 5  # None, nan, "abc", [1], {}
    assert counts.finite == 4  # 1.0, "1.5", True, 2
    assert counts.mean == pytest.approx((1.0 + 1.5 + 1.0 + 2.0) / 4)
    assert counts.bins.sum() == 5  # inf is present: in the last PSI bin
    assert counts.bins[-1] >= 1
    assert counts.grid.sum() == 4  # but not in the KS grid


def test_infinities_land_in_each_feature_s_own_end_bins(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    windows.add(_batch(x=[math.inf, -math.inf], n=[math.inf, -math.inf]))
    for name in ("x", "n"):  # "n" has fewer PSI bins than "x"
        counts = _numeric(windows, name)
        assert counts.bins[0] == 1 and counts.bins[-1] == 1 and counts.bins.sum() == 2
    assert len(_numeric(windows, "n").bins) < len(_numeric(windows, "x").bins)
    table = windows.snapshot().numeric
    assert table.bins.sum() == 4


def test_single_row_requests_with_odd_values_are_converted_one_by_one(
    baseline: BaselineProfile,
) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    for value in (1.0, "abc", None, "2", [3]):
        windows.add(_batch(x=[value], n=[1]))
    counts = _numeric(windows, "x")
    assert (counts.rows, counts.nulls, counts.finite) == (5, 3, 2)
    assert counts.mean == pytest.approx(1.5)


@pytest.mark.parametrize("rows", [1, 3])
def test_fast_and_forgiving_conversions_agree(baseline: BaselineProfile, rows: int) -> None:
    rng = np.random.default_rng(7)
    x, n = rng.normal(size=600), rng.poisson(2, 600).astype(float)
    fast = FeatureWindows(baseline, max_age_s=None)
    slow = FeatureWindows(baseline, max_age_s=None)
    for start in range(0, 600, rows):
        part = slice(start, start + rows)
        fast.add(_batch(x=x[part].tolist(), n=n[part].tolist()))
        # "abc" in a column that is then overwritten makes nothing change but the path
        slow.add(_batch(x=x[part].tolist(), n=[*n[part].tolist()[:-1], "abc"]))
    f, s = _numeric(fast, "x"), _numeric(slow, "x")
    np.testing.assert_array_equal(f.grid, s.grid)
    assert f.mean == pytest.approx(s.mean)
    assert _numeric(slow, "n").nulls == 600 // rows


def test_list_values_in_single_row_requests_are_missing(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    for _ in range(3):
        windows.add(_batch(x=[[1.0, 2.0]], n=[[3.0, 4.0]]))
    assert _numeric(windows, "x").nulls == 3


def test_a_feature_missing_from_a_request_counts_as_missing(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    windows.add(_batch(x=[1.0, 2.0]))
    windows.add(_batch(n=[3]))
    windows.add(FeatureBatch(rows=2, columns={"x": [4.0]}, format="json"))  # short column
    x = _numeric(windows, "x")
    assert (x.rows, x.nulls) == (5, 2)
    assert _numeric(windows, "n").nulls == 4
    assert _categorical(windows, "c").nulls == 5


def test_columns_of_the_wrong_length_are_cut_or_padded(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    # 8 values in all, as 4 + 4 would be: the lengths are checked, not just the total.
    windows.add(
        FeatureBatch(
            rows=4, columns={"x": [1.0, 2.0, 3.0, 4.0, 5.0], "n": [1, 2, 3]}, format="json"
        )
    )
    x, n = _numeric(windows, "x"), _numeric(windows, "n")
    assert (x.finite, x.mean) == (4, pytest.approx(2.5))
    assert (n.finite, n.nulls) == (3, 1)


def test_to_float64_converts_in_one_go_or_value_by_value() -> None:
    np.testing.assert_array_equal(
        to_float64([1, 2.5, None, True, "3"]), [1.0, 2.5, np.nan, 1.0, 3.0]
    )
    np.testing.assert_array_equal(
        to_float64(["x", 1, [1, 2], 10**400]), [np.nan, 1.0, np.nan, np.nan]
    )
    np.testing.assert_array_equal(to_float64([[1], [2]]), [np.nan, np.nan])


def test_categories_map_with_unseen_values_to_other(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    windows.add(_batch(c=["red", "blue", "purple", None, "", "red", 7]))
    counts = _categorical(windows, "c")
    profile = baseline.feature("c")
    expected = dict.fromkeys((*profile.categories, "<other>"), 0)
    expected.update(red=2, blue=1, **{"<other>": 2})
    assert counts.counts.tolist() == list(expected.values())
    assert counts.nulls == 2


def test_booleans_match_how_the_baseline_spelled_them(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    windows.add(_batch(flag=[True, False, "true", "False", 1, None]))
    counts = _categorical(windows, "flag")
    profile = baseline.feature("flag")
    by_name = dict(zip((*profile.categories, "<other>"), counts.counts.tolist(), strict=True))
    assert by_name == {"true": 2, "false": 2, "<other>": 1}
    assert counts.nulls == 1


def test_unhashable_categorical_values_go_to_other(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, max_age_s=None)
    windows.add(_batch(c=["red", ["red"], {"a": 1}]))
    assert _categorical(windows, "c").counts[-1] == 2


# --------------------------------------------------------------------------- binning


@pytest.mark.parametrize(("seed", "quantiles"), [(0, 101), (1, 101), (2, 300), (3, 2)])
def test_branch_free_binning_equals_searchsorted(seed: int, quantiles: int) -> None:
    rng = np.random.default_rng(seed)
    profile = build_baseline(
        {
            "a": rng.normal(size=2_000),
            "b": rng.integers(0, 5, 2_000),
            "c": rng.lognormal(size=2_000),
        },
        quantiles=quantiles,
    )
    windows = FeatureWindows(profile)
    block = windows._numeric
    values = np.vstack(
        [rng.normal(size=700) * 3, rng.integers(-1, 7, 700), rng.lognormal(size=700) * 2]
    )
    ties = block.points[1][:5]
    values[1, : ties.size] = ties  # values exactly on grid points
    expected = np.vstack([block.points[i].searchsorted(values[i], side="left") for i in range(3)])
    np.testing.assert_array_equal(block.cells(values), expected)


def test_psi_bins_are_counts_on_the_profile_edges(baseline: BaselineProfile) -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(0.3, 1.2, 3_000)
    windows = FeatureWindows(baseline, max_rows=3_000, max_age_s=None)
    windows.add(_batch(x=values.tolist()))
    profile = baseline.feature("x")
    expected = np.bincount(
        np.searchsorted(profile.edges, values, side="left"), minlength=len(profile.edges) + 1
    )
    np.testing.assert_array_equal(_numeric(windows, "x").bins, expected)


def test_grid_counts_give_the_window_ecdf_at_the_grid_points(
    baseline: BaselineProfile,
) -> None:
    values = np.random.default_rng(6).normal(size=2_000)
    windows = FeatureWindows(baseline, max_rows=2_000, max_age_s=None)
    windows.add(_batch(x=values.tolist()))
    counts = _numeric(windows, "x")
    ecdf = np.cumsum(counts.grid[:-1]) / counts.finite
    expected = [(values <= p).mean() for p in counts.points]
    np.testing.assert_allclose(ecdf, expected, atol=1e-12)


def test_feature_rows_count_exactly_like_one_row_batches(baseline: BaselineProfile) -> None:
    rng = np.random.default_rng(5)
    as_rows = FeatureWindows(baseline, batch_rows=7, clock=FakeClock())
    as_batches = FeatureWindows(baseline, batch_rows=7, clock=FakeClock())
    # the parser's layout differs from the baseline's order, and carries an extra feature
    names = ("c", "extra", "flag", "x", "n")
    for i in range(50):
        values = (
            "red" if i % 3 else None,
            1,
            bool(i % 2),
            float(rng.normal()),
            int(rng.poisson(2)) if i % 5 else None,
        )
        as_rows.add(FeatureRow(names, values, "object"))
        as_batches.add(
            _batch(**{n: [v] for n, v in zip(names, values, strict=True) if n != "extra"})
        )
    for a, b in zip(as_rows.snapshot().features, as_batches.snapshot().features, strict=True):
        assert a.name == b.name and a.rows == b.rows == 50 and a.nulls == b.nulls
        for field in ("counts", "bins", "grid"):
            if hasattr(a, field):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (a.name, field)


def test_a_feature_row_lacking_a_feature_falls_back_to_columns(baseline: BaselineProfile) -> None:
    windows = FeatureWindows(baseline, clock=FakeClock())
    windows.add(FeatureRow(("x", "c"), (1.5, "blue"), "object"))
    assert _numeric(windows, "n").nulls == 1 and _numeric(windows, "x").finite == 1
