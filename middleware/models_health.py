"""The health of a multi-model server: each model's own report, and a summary of all.

``GET /-/health/{model}`` (or ``/-/health?model={model}``) answers that model's
:class:`~mlwarden.middleware.health_report.HealthReport`, exactly as a single-model monitor
does, so a sidecar's health check can target one model (``health_path: /-/health/churn``).
``GET /-/health`` answers a summary: every tracked model's verdict and reasons, and the
server's status: ``ok`` when every model is, ``failing`` only when every model is failing
(the server serves none well: 503), else ``degraded``. Requests for models not tracked on
their own (beyond ``max_models``, or for models that never answered) are under ``other``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mlwarden.middleware.health_report import DEGRADED, FAILING, OK, HealthReport
from mlwarden.middleware.models import ModelRegistry

__all__ = ["ModelsHealth"]


class ModelsHealth:
    """Reports per model and the summary; ``before`` brings queued exchanges in first."""

    def __init__(
        self, models: ModelRegistry, *, before: Callable[[], None], started_at: float
    ) -> None:
        self._models = models
        self._before = before
        self._started_at = started_at

    def report(self, model: str) -> HealthReport | None:
        """``model``'s report; None when it is not tracked."""
        tracker = self._models.get(model)
        if tracker is None:
            return None
        self._before()
        return tracker.health_report(self._started_at)

    def summary(self) -> dict[str, Any]:
        self._before()
        models: dict[str, Any] = {}
        statuses: list[str] = []
        for tracker in self._models:
            report = tracker.health_report(self._started_at)
            statuses.append(report.status)
            models[tracker.name] = _brief(report)
        other = _brief(self._models.other.health_report(self._started_at))
        if not statuses or all(s == OK for s in statuses):
            status = OK
        elif all(s == FAILING for s in statuses):
            status = FAILING
        else:
            status = DEGRADED
        return {
            "status": status,
            "models": models,
            "other": other,
            "tracked": len(models),
            "max_models": self._models.max_models,
        }

    def summary_json(self) -> tuple[str, bytes]:
        summary = self.summary()
        return summary["status"], json.dumps(summary).encode()


def _brief(report: HealthReport) -> dict[str, Any]:
    return {
        "version": report.model.version,
        "status": report.status,
        "reasons": list(report.reasons),
        "requests": report.window.requests,
        "error_rate": report.window.error_rate,
        "drift_detected": report.drift.detected,
        "drifted_features": list(report.drift.drifted_features),
    }
