"""One model's parts inside the monitor: health, feature windows, drift, quality, labels.

A :class:`ModelTracker` is built from the monitor's options with the model's name, version
and baseline put in (:func:`~mlwarden.middleware.models.options_for`): a single-model monitor
has one; a multi-model monitor one per model (:class:`~mlwarden.middleware.models.
ModelRegistry`). Everything a tracker records is labelled with its model and version. A
tracker made without a baseline is timed, counted and health-checked, without drift, until
:meth:`ModelTracker.attach_baseline` gives it one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.evaluation import DriftWorker
from mlwarden.middleware.features import FeatureWindows
from mlwarden.middleware.feedback import Feedback, FeedbackResult
from mlwarden.middleware.health import HealthWindow, health_report
from mlwarden.middleware.health_report import HealthReport
from mlwarden.middleware.influx import InfluxShipper
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.middleware.models import options_for
from mlwarden.middleware.options import MonitorOptions
from mlwarden.middleware.reading import ExchangeReader

__all__ = ["FeedbackRouter", "ModelTracker"]


class ModelTracker:
    """See the module docstring. ``drain`` brings the monitor's queued exchanges in before a
    drift evaluation or a report (they may be this model's)."""

    def __init__(
        self,
        base: MonitorOptions,
        metrics: MonitorMetrics,
        *,
        name: str,
        version: str,
        baseline: BaselineProfile | None,
        drain: Callable[[], None],
    ) -> None:
        self._base = base
        self.metrics = metrics
        self.name = name
        self.version = version
        self._drain = drain
        self.options = options_for(base, name, version, baseline)
        o = self.options
        self.in_flight = metrics.requests_in_flight.labels(name, version)
        self.internal_errors = metrics.internal_errors.labels(name, version)
        self.health_window = HealthWindow(
            max_requests=o.health.max_requests, max_age_s=o.health.window_s
        )
        self.feedback: Feedback | None = (
            Feedback.from_options(o, metrics=metrics) if o.request_id_header is not None else None
        )
        self.windows: FeatureWindows | None = None
        self.worker: DriftWorker | None = None
        self.shipper: InfluxShipper | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        if baseline is not None:
            self._build_drift()
        self._bind_reader()

    def __repr__(self) -> str:
        return f"ModelTracker({self.name!r}, version={self.version!r})"

    @property
    def baseline(self) -> BaselineProfile | None:
        return self.options.baseline

    # -- parts ---------------------------------------------------------------------------------

    def _build_drift(self) -> None:
        o, m = self.options, self.metrics
        assert o.baseline is not None
        self.windows = FeatureWindows(
            o.baseline, max_rows=o.window_rows, max_age_s=o.window_seconds
        )
        if o.influx is not None:
            self.shipper = InfluxShipper(o.influx, model=self.name, version=self.version, metrics=m)
        self.worker = DriftWorker(
            self.windows,
            o.drift,
            metrics=m,
            model=self.name,
            version=self.version,
            interval_s=o.drift_interval_s,
            every_rows=o.drift_every_rows,
            min_interval_s=o.drift_min_interval_s,
            shipper=self.shipper,
            before=self._drain,
        )

    def _bind_reader(self) -> None:
        #: Reads one finished exchange of this model into its metrics and windows.
        self.read = ExchangeReader(
            self.options,
            self.metrics,
            health_window=self.health_window,
            windows=self.windows,
            worker=self.worker,
            feedback=self.feedback,
        ).read

    def attach_baseline(self, baseline: BaselineProfile) -> None:
        """The model's baseline appeared: drift is judged from now on."""
        if self.worker is not None:
            return
        self.options = options_for(self._base, self.name, self.version, baseline)
        self._build_drift()
        self._bind_reader()
        if self._started:
            self.start()

    def children(self, route: str, method: str, status_class: str) -> tuple[Any, Any, Any]:
        """The request duration, time-to-first-byte and exception series of one label set."""
        key = (route, method, status_class)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            labels = (self.name, self.version, route, method)
            children = (
                m.request_duration.labels(*labels, status_class),
                m.time_to_first_byte.labels(*labels, status_class),
                m.request_exceptions.labels(*labels),
            )
            self._children[key] = children
        return children

    # -- reports ---------------------------------------------------------------------------------

    def health_report(self, started_at: float) -> HealthReport:
        """This model's health report (the caller drains first)."""
        o = self.options
        return health_report(
            model=self.name,
            version=self.version,
            window=self.health_window,
            drift=self.worker.latest if self.worker is not None else None,
            thresholds=o.health,
            started_at=started_at,
            influx=self.shipper.status() if self.shipper is not None else None,
            quality=self.feedback.report() if self.feedback is not None else None,
        )

    def publish_quality(self) -> None:
        if self.feedback is not None:
            self.feedback.publish()

    # -- background work -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the drift worker and the shipper (when there is a baseline); once each."""
        self._started = True
        if self.worker is None or self._tasks:
            return
        loop = asyncio.get_running_loop()
        name = f"mlwarden-drift-{self.name}"
        self._tasks.append(loop.create_task(self.worker.run(), name=name))
        if self.shipper is not None:
            self._tasks.append(
                loop.create_task(self.shipper.run(), name=f"mlwarden-influx-{self.name}")
            )

    async def aclose(self) -> None:
        """Stop the background tasks; a last bounded attempt to ship buffered statistics."""
        self._started = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.worker is not None and self.shipper is not None:
            self.worker.evaluate_now()
        if self.shipper is not None:
            await self.shipper.aclose()


class FeedbackRouter:
    """The labels endpoint of a multi-model monitor: each label goes to the model whose
    memory holds its request id (unknown ids are counted under ``fallback``'s). Refusal and
    parsing are the same for every model (the options are the monitor's)."""

    def __init__(self, trackers: Callable[[], Iterable[ModelTracker]], fallback: Feedback) -> None:
        self._trackers = trackers
        self._fallback = fallback

    @property
    def has_token(self) -> bool:
        return self._fallback.has_token

    @property
    def anonymous(self) -> bool:
        return self._fallback.anonymous

    @property
    def max_body_bytes(self) -> int:
        return self._fallback.max_body_bytes

    def refusal(self, authorization: str | None) -> Any:
        return self._fallback.refusal(authorization)

    def parse(self, body: bytes) -> list[Any]:
        return self._fallback.parse(body)

    def record(self, entries: Iterable[Any]) -> FeedbackResult:
        feedbacks = [t.feedback for t in self._trackers() if t.feedback is not None]
        groups: dict[int, list[Any]] = {}
        for entry in entries:
            target = self._fallback
            rid = entry.get("request_id") if isinstance(entry, dict) else None
            if isinstance(rid, str):
                with contextlib.suppress(UnicodeEncodeError):
                    key = rid.encode("latin-1")
                    for feedback in feedbacks:
                        if feedback.memory.knows(key):
                            target = feedback
                            break
            groups.setdefault(id(target), [target]).append(entry)
        total = FeedbackResult()
        for target, *group in groups.values():
            for outcome, count in target.record(group).items():
                total[outcome] = total.get(outcome, 0) + count
        if not total:
            total = self._fallback.record([])
        return total

    def publish(self) -> None:
        for tracker in self._trackers():
            tracker.publish_quality()
