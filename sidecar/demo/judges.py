"""How the demo judges a phase: from the ledger's events and the clients' answers.

Each judge fills a phase's :class:`~mlwarden.sidecar.demo.view.PhaseResult` (what detected the
fault and after how long, what healed it, the time to recovery) from the evidence the story
gathered; it reads that evidence and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from mlwarden.sidecar.demo.view import PhaseResult

__all__ = ["DRIFT_POLICIES", "DRIFT_ROUTING_POLICY", "Answer", "Evidence", "PhaseJudges"]

DRIFT_POLICIES = ("drift-small", "drift-large")  # the default tiers' names
DRIFT_ROUTING_POLICY = "drift-large"


@dataclass(slots=True)
class Answer:
    at: float  # wall time the answer (or the failure) came
    upstream: str  # x-mlwarden-upstream, "" when none
    failed: bool
    detail: str = ""  # for a failure: the status and the start of the body, or the error


class Evidence(Protocol):
    """What the story gathered that the judges read."""

    answers: Iterable[Answer]
    status: dict[str, Any] | None
    escalations: list[float]
    redeployed_at: float | None
    drift_cleared_at: float | None
    redeploy_error: str | None

    def ordered_events(self) -> list[dict[str, Any]]: ...


class PhaseJudges:
    """One judge a phase: ``normal``, ``errors``, ``drift``, ``outage``, ``recovery``."""

    def __init__(self, story: Evidence) -> None:
        self._story = story

    def events_after(
        self,
        t0: float,
        *,
        actions: tuple[str, ...],
        target: str | None = None,
        policy: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            r
            for r in self._story.ordered_events()
            if float(r.get("at", 0)) >= t0
            and r.get("action") in actions
            and (target is None or r.get("target") == target)
            and (policy is None or r.get("policy") == policy)
        ]

    def clients_recovered(self, t0: float, upstream: str | None = None) -> float | None:
        """The first good answer after ``t0`` (from ``upstream``) with no failure after it."""
        first: float | None = None
        for answer in self._story.answers:
            if answer.at < t0:
                continue
            if answer.failed:
                first = None
            elif first is None and (upstream is None or answer.upstream == upstream):
                first = answer.at
        return first

    @staticmethod
    def _describe(record: dict[str, Any]) -> str:
        who = record.get("policy") or ""
        return f"{record.get('action')} {record.get('target')}" + (f" ({who})" if who else "")

    def _detected(self, result: PhaseResult, t0: float, records: list[dict[str, Any]]) -> None:
        if records and result.detected_after_s is None:
            result.detected_after_s = float(records[0]["at"]) - t0
            result.detected_by = self._describe(records[0])

    def normal(self, result: PhaseResult, t0: float) -> None:
        result.healed = result.failed == 0
        passed = self.events_after(t0, actions=("set_weight",), target="v2")
        shadow = (self._story.status or {}).get("shadow") or {}
        agreement = shadow.get("agreement_rate")
        result.note = f"{len(passed)} canary step(s) passed" + (
            f"; shadow agreement {agreement:.1%}" if agreement is not None else ""
        )

    def errors(self, result: PhaseResult, t0: float) -> None:
        self._detected(
            result,
            t0,
            self.events_after(
                t0,
                actions=("rollback", "breaker_opened", "upstream_unhealthy", "policy_fired"),
                target="v2",
            ),
        )
        rollbacks = self.events_after(t0, actions=("rollback",), target="v2")
        recovered = self.clients_recovered(t0)
        if rollbacks and recovered is not None:
            healed_at = max(float(rollbacks[0]["at"]), recovered)
            result.healed = True
            result.healed_by = "canary rollback; retries + v1 served"
            result.recovery_s = healed_at - t0
            result.note = f"rollback: {rollbacks[0].get('reason', '')}"

    def drift(self, result: PhaseResult, t0: float) -> None:
        fired = [
            r
            for r in self.events_after(t0, actions=("policy_fired",))
            if r.get("policy") in DRIFT_POLICIES
        ]
        self._detected(result, t0, fired)
        if self._story.redeploy_error:
            result.note = self._story.redeploy_error.splitlines()[0]
            return
        moved = self.events_after(t0, actions=("fallback",), policy=DRIFT_ROUTING_POLICY)
        restored = self.events_after(t0, actions=("restore_primary",), policy=DRIFT_ROUTING_POLICY)
        if (
            self._story.redeployed_at is None
            or self._story.drift_cleared_at is None
            or not restored
        ):
            return
        back_at = float(restored[0]["at"])
        served = self.clients_recovered(back_at, "v1")
        if served is None:
            return
        result.healed = True
        result.healed_by = "to v2 + retrain; v1 redeployed; back"
        result.recovery_s = served - t0
        result.note = (
            (f"traffic on v2 from {float(moved[0]['at']) - t0:.1f} s; " if moved else "")
            + f"retrained v1 serving at {self._story.redeployed_at - t0:.1f} s, its window free of "
            f"drift at {self._story.drift_cleared_at - t0:.1f} s; traffic back on v1 at "
            f"{back_at - t0:.1f} s"
        )

    def outage(self, result: PhaseResult, t0: float) -> None:
        self._detected(
            result,
            t0,
            self.events_after(
                t0, actions=("breaker_opened", "upstream_unhealthy", "policy_fired"), target="v1"
            ),
        )
        recovered = self.clients_recovered(t0, "v2")
        if recovered is not None and result.detected_after_s is not None:
            result.healed = True
            result.healed_by = "retries + breaker: v2 serves"
            result.recovery_s = recovered - t0
            result.note = (
                f"escalations received: {sum(1 for e in self._story.escalations if e >= t0)}"
                f"; first answer from v2 {recovered - t0:.3f} s after the kill"
            )

    def recovery(self, result: PhaseResult, t0: float) -> None:
        self._detected(
            result,
            t0,
            self.events_after(t0, actions=("upstream_healthy", "breaker_closed"), target="v1"),
        )
        recovered = self.clients_recovered(t0, "v1")
        if recovered is not None:
            result.healed = True
            result.healed_by = "health checks: v1 back, closed"
            result.recovery_s = recovered - t0
            result.note = "time to recovery includes the model server's start-up"

    def explain_failures(self, phases: list[tuple[float, PhaseResult]]) -> None:
        """Name what the failed client requests got, per phase (started, result), in the note."""
        bounds = [started for started, _ in phases[1:]] + [float("inf")]
        for (started, result), until in zip(phases, bounds, strict=True):
            seen: dict[str, int] = {}
            for answer in self._story.answers:
                if answer.failed and started <= answer.at < until:
                    seen[answer.detail] = seen.get(answer.detail, 0) + 1
            if seen:
                what = "; ".join(f"{n}x {detail}" for detail, n in list(seen.items())[:3])
                result.note = (result.note + "; " if result.note else "") + (
                    f"failed requests got: {what}"
                )
