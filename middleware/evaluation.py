"""Off the request path: evaluate drift as rows arrive, and publish it.

The worker wakes once the smallest window scale has a fifth of its rows new (50 rows by
default; ``every_rows`` sets another count) or every ``interval_s``, and evaluates at most
every ``min_interval_s``: at 50 rows/s a shift is judged within about a second, at 10,000
rows/s the evaluations still cost a fraction of a per cent of a core. Publishing means the
Prometheus gauges, the latest report for the health verdict, and the InfluxDB shipper's
buffer. The worker is one asyncio task; the thresholds are calibrated in a thread before the
first evaluation, an evaluation takes about a millisecond and never raises into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from mlwarden.middleware.drift import DriftEvaluator, DriftReport, DriftThresholds
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.influx import InfluxShipper
from mlwarden.middleware.metrics import MonitorMetrics

__all__ = ["DriftWorker"]

log = logging.getLogger("mlwarden.middleware")


class DriftWorker:
    """Owns the feature windows' evaluation schedule and where its results go."""

    def __init__(
        self,
        windows: FeatureWindows,
        thresholds: DriftThresholds,
        *,
        metrics: MonitorMetrics,
        model: str,
        version: str,
        interval_s: float,
        every_rows: int | None = None,
        min_interval_s: float = 0.1,
        shipper: InfluxShipper | None = None,
        before: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.windows = windows
        self.thresholds = thresholds
        self.evaluator = DriftEvaluator(windows, thresholds)
        self.interval_s = interval_s
        self.every_rows = every_rows or self.evaluator.step(thresholds.scales[0])
        self.min_interval_s = min_interval_s
        self.shipper = shipper
        self._before = before  # brings queued rows in (the monitor's drain)
        self._clock = clock
        self.latest: DriftReport | None = None
        self._rows_since = 0
        self._last_at: float | None = None
        self._wake: asyncio.Event | None = None
        mv = (model, version)
        self._window_rows = metrics.window_rows.labels(*mv)
        self._evaluations = metrics.drift_evaluations.labels(*mv)
        self._duration = metrics.drift_evaluation_duration.labels(*mv)
        self._detected = metrics.drift_detected.labels(*mv)
        # Every series exists from the start (NaN until the first evaluation), so that the
        # set of series is fixed whatever the traffic, and absent() alerts mean what they say.
        nan = float("nan")
        features = windows.baseline.features
        self._mean = {
            f.name: metrics.feature_mean.labels(*mv, f.name)
            for f in features
            if f.kind == "numeric"
        }
        self._null = {f.name: metrics.feature_null_ratio.labels(*mv, f.name) for f in features}
        self._drifted = {f.name: metrics.feature_drifted.labels(*mv, f.name) for f in features}
        self._ratio = {
            f.name: {
                test: metrics.feature_drift_ratio.labels(*mv, f.name, test)
                for test in (
                    thresholds.numeric_tests
                    if f.kind == "numeric"
                    else thresholds.categorical_tests
                )
            }
            for f in features
        }
        # One gauge per statistic (PSI, KS distance, chi-square), by the method's name.
        statistic = {
            "psi": metrics.feature_psi,
            "ks": metrics.feature_ks_distance,
            "chi2": metrics.feature_chi2_statistic,
        }
        self._score: dict[str, dict[str, Any]] = {}
        self._pvalue: dict[str, dict[str, Any]] = {}
        for f in features:
            methods = ("psi", "ks") if f.kind == "numeric" else ("psi", "chi2")
            self._score[f.name] = {m: statistic[m].labels(*mv, f.name) for m in methods}
            self._pvalue[f.name] = {
                m: metrics.feature_drift_pvalue.labels(*mv, f.name, m)
                for m in methods
                if m in ("ks", "chi2")
            }
        for gauge in (
            *self._mean.values(),
            *self._null.values(),
            *(g for by_method in self._score.values() for g in by_method.values()),
            *(g for by_method in self._pvalue.values() for g in by_method.values()),
            *(g for by_test in self._ratio.values() for g in by_test.values()),
        ):
            gauge.set(nan)

    def rows_added(self, rows: int) -> None:
        """Called on the request path: wake the worker early once enough rows arrived."""
        self._rows_since += rows
        if self._rows_since >= self.every_rows and self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = asyncio.Event()
        try:
            try:
                await asyncio.to_thread(self.evaluator.calibration.prepare)
            except Exception:
                log.exception("mlwarden: calibrating the drift thresholds failed")
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
                if self._last_at is not None:
                    wait = self.min_interval_s - (self._clock() - self._last_at)
                    if wait > 0:
                        await asyncio.sleep(wait)
                self._wake.clear()
                self.evaluate_now()
        finally:
            self._wake = None

    def evaluate_now(self) -> DriftReport | None:
        """Evaluate and publish; errors are logged, never raised (the loop must go on)."""
        self._rows_since = 0
        self._last_at = self._clock()
        start = time.perf_counter()
        try:
            if self._before is not None:
                self._before()
            report = self.evaluator.evaluate()
        except Exception:
            log.exception("mlwarden: drift evaluation failed")
            return None
        self._duration.observe(time.perf_counter() - start)
        self._evaluations.inc()
        self.latest = report
        try:
            self._publish(report)
            if self.shipper is not None:
                self.shipper.submit(report)
        except Exception:
            log.exception("mlwarden: publishing the drift report failed")
        return report

    def _publish(self, report: DriftReport) -> None:
        self._window_rows.set(report.rows)
        self._detected.set(1 if report.drift_detected else 0)
        for feature in report.features:
            name = feature.name
            self._null[name].set(feature.null_ratio)
            mean = self._mean.get(name)
            if mean is not None:
                mean.set(_finite(feature.mean))
            self._drifted[name].set(1 if feature.drifted else 0)
            # A method that gave no figure this time (too few values) goes back to NaN.
            for method, gauge in self._score[name].items():
                gauge.set(_finite(feature.scores.get(method)))
            for method, gauge in self._pvalue[name].items():
                gauge.set(_finite(feature.pvalues.get(method)))
            for test, gauge in self._ratio[name].items():
                outcome = feature.tests.get(test)
                gauge.set(_finite(outcome.ratio if outcome is not None else None))


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else float("nan")
