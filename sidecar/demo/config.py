"""What the demo runs: phase timings, the policy tiers on a faster clock, the sidecar file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FULL",
    "OUTAGE_POLICY",
    "QUICK",
    "TIME_SCALE",
    "Timing",
    "default_tiers_scaled",
    "sidecar_config",
]

OUTAGE_POLICY = "primary-out-of-rotation"
#: The default tiers' timings (for_s, cooldown_s, window_s, restore_after_s) are divided by
#: this: a minute of drift before acting is right for a service, too long for a demo.
TIME_SCALE = 20.0


@dataclass(frozen=True, slots=True)
class Timing:
    """How long each phase runs, and the pace of the story."""

    normal_s: float
    errors_s: float
    drift_s: float
    outage_s: float
    recovery_s: float
    grace_s: float  # more time for a phase that has not healed yet
    rate_per_s: float  # client requests per second
    canary_interval_s: float


FULL = Timing(
    normal_s=20,
    errors_s=15,
    drift_s=40,
    outage_s=15,
    recovery_s=15,
    grace_s=20,
    rate_per_s=40,
    canary_interval_s=5,
)
QUICK = Timing(
    normal_s=9,
    errors_s=10,
    drift_s=28,
    outage_s=10,
    recovery_s=10,
    grace_s=15,
    rate_per_s=40,
    canary_interval_s=3,
)


def default_tiers_scaled(retrain_url: str, scale: float = TIME_SCALE) -> list[dict[str, Any]]:
    """The sidecar's default policy tiers, as config entries, with timings divided by ``scale``.

    Same names, conditions, severities and actions as :func:`default_policies` gives a sidecar
    with ``healing.retrain_webhook_url`` set; only the clock runs faster.
    """
    from mlwarden.sidecar.healing.default_policies import default_policies
    from mlwarden.sidecar.settings import sidecar_config_from_mapping

    config = sidecar_config_from_mapping(
        {
            "upstreams": {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"},
            "healing": {"retrain_webhook_url": retrain_url},
        },
        environ={},
    )
    out = []
    for policy in default_policies(config):
        actions: list[Any] = []
        for action in policy.actions:
            if action.kind == "webhook":
                actions.append({"webhook": {"url": action.url, "body": dict(action.body or {})}})
            else:
                actions.append(action.kind)
        out.append(
            {
                "name": policy.name,
                "when": policy.when,
                "severity": policy.severity,
                "for_s": policy.for_s / scale,
                "cooldown_s": policy.cooldown_s / scale,
                "window_s": policy.window_s / scale,
                "restore_after_s": (
                    None if policy.restore_after_s is None else policy.restore_after_s / scale
                ),
                "actions": actions,
            }
        )
    return out


def sidecar_config(
    *, ports: dict[str, int], token: str, timing: Timing, workdir: Path
) -> dict[str, Any]:
    """The sidecar's configuration file for the story, on the given loopback ports."""

    def url(name: str) -> str:
        return f"http://127.0.0.1:{ports[name]}"

    t = timing
    hooks = url("hooks")
    return {
        "upstreams": {
            "v1": {"url": url("v1"), "connect_timeout_s": 0.5},
            "v2": {"url": url("v2"), "connect_timeout_s": 0.5},
        },
        "routing": {"primary": "v1", "fallbacks": ["v2"]},
        "listen": {"host": "127.0.0.1", "port": ports["proxy"]},
        "admin": {"host": "127.0.0.1", "port": ports["admin"], "token": token},
        "timeouts": {"per_try_timeout_s": 2.0, "total_timeout_s": 5.0},
        # Two retries with backoff up to 0.2 s outlast a process swap's few milliseconds
        # without a listener, even when the fallback is out of rotation.
        "retry": {
            "num_retries": 2,
            "retry_on": ["connect-failure", "reset", "gateway-error", "5xx"],
            "base_interval_s": 0.02,
            "max_interval_s": 0.2,
        },
        "breaker": {"consecutive_5xx": 3, "reset_timeout_s": 3.0},
        "health_checks": {
            "interval_s": 1.0,
            "timeout_s": 0.5,
            "healthy_threshold": 2,
            "unhealthy_threshold": 2,
        },
        # Small steps: the normal phase passes a few, never all (no promotion before the
        # candidate's fault), so the candidate is still on the split when it fails.
        "canary": {
            "candidate": "v2",
            "steps_percent": [20, 30, 40, 50, 60, 70, 80],
            "interval_s": t.canary_interval_s,
            "min_requests": 10,
            # About 25 candidate requests an interval: a pass needs the samples to show
            # the candidate within the tolerances, so the demo's are wide enough for that
            # (a real deployment has the traffic to keep the defaults).
            "max_error_rate": 0.2,
            "max_latency_ratio": 2.0,
            "inconclusive_deadline_s": 60.0,
            # A p99 over ~20 requests on a shared machine is mostly noise: 3x
            # still catches a real slowdown without rolling back on a hiccup.
            "max_latency_p99_ratio": 3.0,
            "on_deadline": "hold",
            "guard_s": 30.0,
        },
        "shadow": {
            "target": "v2",
            "sample_percent": 25.0,
            "max_concurrent": 2,
            "max_queue": 16,
            "timeout_s": 2.0,
        },
        "ledger": {"path": str(workdir / "ledger.jsonl"), "fsync": False},
        "healing": {
            "interval_s": 0.5,
            "default_policies": False,
            "retrain_webhook_url": f"{hooks}/retrain",
            "escalation": {"webhook_url": f"{hooks}/escalate", "threshold": 3},
        },
        "policies": [
            *default_tiers_scaled(f"{hooks}/retrain"),
            # Beside the tiers: a primary out of rotation is worth a person's attention.
            {
                "name": OUTAGE_POLICY,
                "when": 'not healthy("v1")',
                "for_s": 1,
                "cooldown_s": 300,
                "severity": "critical",
                "actions": ["escalate"],
            },
        ],
    }
