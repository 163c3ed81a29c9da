"""The blocks of releasing a new version: the canary split and shadow traffic.

Also their rules against the upstreams and the routing (a candidate is not the primary, a
canary's stable version defaults to the primary).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mlwarden.sidecar.config.checks import (
    Bad,
    http_url,
    number,
    one_of,
    optional,
    seconds,
    sequence,
    show,
    text,
)
from mlwarden.sidecar.config.network import RoutingConfig
from mlwarden.sidecar.config.schema import Block, Problems, setting

__all__ = ["CanaryConfig", "ShadowTrafficConfig", "check_canary", "check_shadow"]


def _percent_steps(value: Any) -> tuple[float, ...]:
    items = sequence(value, "percentages")
    bad = [
        i for i in items if isinstance(i, bool) or not isinstance(i, int | float) or not 0 < i < 100
    ]
    if bad or not items:
        # At 100% the stable version gets nothing to compare with: passing the last step
        # promotes, so 100 is never a step.
        raise Bad(
            f"expected a non-empty list of percentages above 0 and below 100 (passing "
            f"the last one promotes), got {show(value)}"
        )
    steps = tuple(float(i) for i in items)
    if list(steps) != sorted(set(steps)):
        raise Bad(f"expected increasing percentages, got {show(value)}")
    return steps


@dataclass(frozen=True, kw_only=True, slots=True)
class CanaryConfig(Block):
    """A candidate version on a growing share of traffic, analysed against the stable one
    every ``interval_s``: passed, the weight steps up to the next of ``steps_percent`` (each
    below 100) and passing the last one promotes the candidate; ``failure_limit`` failed
    analyses in a row (or its breaker opening, or an error rate beyond any noise) roll it
    back to weight 0. An analysis fails on errors (Fisher's exact test, p < ``alpha``, and the
    rate above the stable's by ``max_error_rate_increase`` or above ``max_error_rate``) or on
    latency (Mann-Whitney U, p < ``alpha``, and the 95% interval of the median ratio above
    ``max_latency_ratio`` or of the p99 ratio above ``max_latency_p99_ratio``). Too few
    requests (``min_requests`` per
    version per interval) decide nothing: "inconclusive", and ``on_deadline`` decides after
    ``inconclusive_deadline_s``. ``source: prometheus`` takes the figures from PromQL over
    every replica's metrics at ``prometheus_url`` (a fleet-wide verdict) instead of this
    sidecar's own windows. After promotion the new primary is watched for ``guard_s``
    and rolled back to the pinned stable version if it fails."""

    _key: ClassVar[str] = "canary"
    candidate: str = setting(check=text)
    stable: str | None = setting(None, optional(text))
    steps_percent: tuple[float, ...] = setting((5.0, 25.0, 50.0), _percent_steps)
    sticky_header: str | None = setting(None, optional(text))
    sticky_cookie: str | None = setting(None, optional(text))
    interval_s: float = setting(30.0, seconds(gt=0, le=86_400))
    min_requests: int = setting(50, number(int, ge=1, le=10_000_000))
    max_error_rate: float = setting(0.05, number(float, ge=0, le=1))
    max_error_rate_increase: float = setting(0.01, number(float, ge=0, le=1))
    max_latency_p99_ratio: float = setting(1.5, number(float, ge=1, le=1000))
    max_latency_ratio: float = setting(1.25, number(float, ge=1, le=1000))
    alpha: float = setting(0.01, number(float, gt=0, lt=0.5))
    failure_limit: int = setting(2, number(int, ge=1, le=100))
    max_drift_score: float | None = setting(None, optional(number(float, ge=0)))
    inconclusive_deadline_s: float = setting(600.0, seconds(gt=0, le=30 * 86_400))
    on_deadline: str = setting("rollback", one_of(("rollback", "promote", "hold")))
    guard_s: float = setting(300.0, seconds(ge=0, le=30 * 86_400))
    source: str = setting("local", one_of(("local", "prometheus")))
    prometheus_url: str | None = setting(None, optional(http_url))

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if v["sticky_header"] is not None and v["sticky_cookie"] is not None:
            out.append(("sticky_cookie", "set sticky_header or sticky_cookie, not both"))
        if v["source"] == "prometheus" and v["prometheus_url"] is None:
            out.append(
                (
                    "prometheus_url",
                    "required when source is prometheus (the server "
                    "that scrapes every replica's admin port)",
                )
            )
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class ShadowTrafficConfig(Block):
    """A copy of ``sample_percent`` of the requests sent to ``target`` beside the real one,
    its answer compared with the primary's and dropped: the client waits for nothing. At most
    ``max_concurrent`` copies in flight and ``max_queue`` waiting, beyond that shed; each
    copy bounded by ``timeout_s``. Numeric predictions agree within ``abs_tol`` or
    ``rel_tol``; classes when equal."""

    _key: ClassVar[str] = "shadow"
    target: str = setting(check=text)
    sample_percent: float = setting(10.0, number(float, ge=0, le=100))
    max_concurrent: int = setting(4, number(int, ge=1, le=1000))
    max_queue: int = setting(64, number(int, ge=1, le=100_000))
    timeout_s: float = setting(5.0, seconds(gt=0, le=3600))
    max_body_bytes: int = setting(256 * 1024, number(int, ge=1, le=64 * 2**20))
    abs_tol: float = setting(1e-6, number(float, ge=0))
    rel_tol: float = setting(1e-3, number(float, ge=0))


def check_canary(
    canary: CanaryConfig, names: list[str], routing: RoutingConfig, problems: Problems
) -> CanaryConfig:
    """The canary against the upstreams and routing; its stable defaults to the primary."""
    known = ", ".join(names)
    if canary.candidate not in names:
        problems.add("canary.candidate", f"unknown upstream {canary.candidate!r} (known: {known})")
    elif canary.candidate == routing.primary:
        problems.add(
            "canary.candidate",
            f"is the routing primary {routing.primary!r}: the "
            f"candidate is tried against it, not instead of it",
        )
    stable = canary.stable or routing.primary
    if stable not in names:
        problems.add("canary.stable", f"unknown upstream {stable!r} (known: {known})")
    elif stable == canary.candidate:
        problems.add("canary.stable", "must differ from canary.candidate")
    return dataclasses.replace(canary, stable=stable)


def check_shadow(
    shadow: ShadowTrafficConfig, names: list[str], routing: RoutingConfig, problems: Problems
) -> None:
    """The shadow's target against the upstreams and routing."""
    if shadow.target not in names:
        problems.add(
            "shadow.target",
            f"unknown upstream {shadow.target!r} (known: {', '.join(names)})",
        )
    elif shadow.target == routing.primary:
        problems.add(
            "shadow.target",
            "is the routing primary: a shadow is a copy sent to another version",
        )
