"""Escalation: calling a person when healing repeats, and every delivery in the ledger.

A policy that fired more than ``escalation.threshold`` times within ``escalation.window_s``,
or a critical one, escalates **once per window**: an ``escalation`` record and a
Slack-compatible body to ``escalation.webhook_url``, naming the policy, the signals, the
actions taken and the recent ledger entries. Each webhook delivery (escalations and the
policies' own ``webhook`` actions) is recorded with its outcome once it is delivered or given
up, or at once when it could not be queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from mlwarden.sidecar.config import EscalationConfig
from mlwarden.sidecar.healing.policy_config import PolicyConfig
from mlwarden.sidecar.healing.ports import HealingPort
from mlwarden.sidecar.healing.slack_messages import slack_body

__all__ = ["ESCALATION_RECENT", "Escalation"]

#: Ledger entries an escalation carries.
ESCALATION_RECENT = 10


class Escalation:
    """Escalates and sends the policies' webhooks through ``port``; records every step."""

    def __init__(
        self,
        config: EscalationConfig,
        port: HealingPort,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.port = port
        self._wall = wall_clock
        #: Whether this sidecar escalates: a fleet's follower does not (its leader escalates
        #: on the fleet's counts, :mod:`mlwarden.sidecar.fleet.escalation`).
        self.decides: Callable[[], bool] = lambda: True

    def repeated(self, policy: PolicyConfig) -> str | None:
        """Why ``policy``, which just fired, escalates for repeating (None: it does not)."""
        window, threshold = self.config.window_s, self.config.threshold
        fired = self.port.count_records(
            self._wall() - window, policy=policy.name, action="policy_fired"
        )
        if fired > threshold:
            return f"fired {fired} times within {window:g}s (more than {threshold})"
        return None

    def escalate(
        self, policy: PolicyConfig, reason: str, signals: dict[str, Any], actions: list[str]
    ) -> None:
        if not self.decides():
            return
        esc = self.config
        wall = self._wall()
        if self.port.count_records(wall - esc.window_s, policy=policy.name, action="escalation"):
            return  # once per window
        recent = self.port.recent_records(ESCALATION_RECENT)
        url = esc.webhook_url
        self.record(
            policy,
            "escalation",
            _host(url) if url else "log",
            reason,
            signals,
            "ok" if url is None else "pending",
            severity="critical",
        )
        if url is None:
            return
        body = slack_body(
            title=f"mlwarden: policy {policy.name} escalated",
            severity=policy.severity,
            policy=policy.name,
            reason=reason,
            signals=signals,
            actions=actions,
            recent=recent,
        )
        self.webhook(policy, url, body, {}, "escalation_webhook", signals)

    def webhook(
        self,
        policy: PolicyConfig,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str],
        what: str,
        signals: dict[str, Any],
    ) -> None:
        host = _host(url)

        def done(result: Any) -> None:
            self.record(
                policy,
                "webhook",
                host,
                f"{what} to {host}: "
                + (
                    f"HTTP {result.status}"
                    if result.ok
                    else f"failed after {result.attempts} attempt(s)"
                    f" ({result.error or result.status})"
                ),
                signals,
                "ok" if result.ok else "failed",
                details={"attempts": result.attempts, "status": result.status},
            )

        if not self.port.send_webhook(
            f"{policy.name}:{what}", url, body, headers=headers, on_result=done
        ):
            self.record(
                policy,
                "webhook",
                host,
                f"{what} to {host} not sent (no sender, or its queue is full)",
                signals,
                "failed",
            )

    def record(
        self,
        policy: PolicyConfig,
        action: str,
        target: str,
        reason: str,
        signals: Mapping[str, Any],
        outcome: str = "ok",
        *,
        severity: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.port.record(
            action=action,
            target=target,
            reason=reason,
            signals=dict(signals),
            outcome=outcome,
            policy=policy.name,
            severity=severity or policy.severity,
            details=details,
        )


def _host(url: str | None) -> str:
    """The host of a URL, for records and logs (a webhook URL may carry a secret path)."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return host if parts.port is None else f"{host}:{parts.port}"
