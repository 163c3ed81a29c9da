"""The drift tests of every window scale over a stream of rows, each run when it is due.

:class:`ScaleJudge` holds, per scale, the outcomes of its last test and the row count it was
taken at; a scale is tested again once a fifth of its rows are new (the cadence the false-alarm
budget of :mod:`~mlwarden.middleware.drift.calibration` assumes), and its last outcomes stand
in between. What it is fed is counts (:class:`~mlwarden.middleware.features.RecentCounts`),
wherever they come from: one server's windows
(:class:`~mlwarden.middleware.drift.verdict.DriftEvaluator`) or the sum of a fleet's, so that a
fleet judged on its summed counts keeps the single server's false-alarm budget per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlwarden.middleware.drift.calibration import EVALUATIONS_PER_SCALE, Calibration
from mlwarden.middleware.drift.scale_tests import TestOutcome, run_scale
from mlwarden.middleware.drift.settings import DriftThresholds
from mlwarden.middleware.features import RecentCounts

__all__ = ["ScaleJudge"]


@dataclass(slots=True)
class _ScaleState:
    added: int  # the stream's row count when this scale was last tested
    numeric: list[dict[str, TestOutcome]]
    categorical: list[dict[str, TestOutcome]]


class ScaleJudge:
    """See the module docstring. ``numeric_names`` / ``categorical_names``: the baseline's
    features of each kind, in baseline order (the order of the counts)."""

    def __init__(
        self,
        calibration: Calibration,
        settings: DriftThresholds,
        *,
        numeric_names: Sequence[str],
        categorical_names: Sequence[str],
    ) -> None:
        self.calibration = calibration
        self.settings = settings
        self._numeric_names = tuple(numeric_names)
        self._categorical_names = tuple(categorical_names)
        self._state: dict[int, _ScaleState] = {}
        self.last_tested: tuple[int, ...] = ()  # the scales the last judgement tested

    def step(self, scale: int) -> int:
        """New rows after which ``scale`` is tested again."""
        return max(1, math.ceil(scale / EVALUATIONS_PER_SCALE))

    def rows_until_due(self, added: int) -> int:
        """New rows needed before the smallest scale is tested again (0: due now)."""
        smallest = self.settings.scales[0]
        state = self._state.get(smallest)
        if state is None:
            return 0
        return max(0, self.step(smallest) - (added - state.added))

    def due(self, added: int, *, every_scale: bool = False) -> list[int]:
        """The scales to test at ``added`` rows (all of them with ``every_scale``)."""
        return [
            scale
            for scale in self.settings.scales
            if every_scale
            or (state := self._state.get(scale)) is None
            or added - state.added >= self.step(scale)
        ]

    def judge(self, rows: int, added: int, recent: Mapping[int, RecentCounts]) -> list[int]:
        """Test the scales whose counts are in ``recent``; the scales the verdict holds.

        ``rows``: the rows in the window now; a scale is active once the window holds that
        many (the smallest one from ``min_rows`` on), and forgotten when it no longer does.
        """
        s = self.settings
        active: list[int] = []
        tested: list[int] = []
        for scale in s.scales:
            if not (rows >= scale or (scale == s.scales[0] and rows >= s.min_rows)):
                self._state.pop(scale, None)
                continue
            active.append(scale)
            counts = recent.get(scale)
            if counts is not None:
                numeric, categorical = run_scale(
                    counts,
                    self.calibration,
                    numeric_tests=s.numeric_tests,
                    categorical_tests=s.categorical_tests,
                    min_rows=s.min_rows,
                )
                self._state[scale] = _ScaleState(added, numeric, categorical)
                tested.append(scale)
            elif scale not in self._state:  # active, never tested: nothing to stand in
                active.pop()
        self.last_tested = tuple(tested)
        return active

    def best(self, active: Sequence[int]) -> dict[str, dict[str, TestOutcome]]:
        """Per feature and test, the outcome that came closest to firing over ``active``."""
        best: dict[str, dict[str, TestOutcome]] = {}
        for scale in active:
            state = self._state[scale]
            for names, outcomes in (
                (self._numeric_names, state.numeric),
                (self._categorical_names, state.categorical),
            ):
                for name, by_test in zip(names, outcomes, strict=True):
                    mine = best.setdefault(name, {})
                    for test, outcome in by_test.items():
                        held = mine.get(test)
                        if held is None or outcome.ratio > held.ratio or held.ratio != held.ratio:
                            mine[test] = outcome
        return best

    def fired_by_scale(self) -> dict[int, bool]:
        """Per active scale, whether any test fired in its latest evaluation."""
        return {
            scale: any(o.fired for by in (*st.numeric, *st.categorical) for o in by.values())
            for scale, st in self._state.items()
        }
