"""The blocks of resilience: retries, circuit breakers and active health checks.

Also the retry vocabulary (Envoy's ``retry_on`` words and the methods that may be retried),
which :mod:`mlwarden.sidecar.resilience.retry` builds its strategies from: the words and the
defaults live here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mlwarden.sidecar.config.checks import (
    boolean,
    number,
    redis_address,
    seconds,
    status_codes,
    words,
)
from mlwarden.sidecar.config.schema import Block, setting

__all__ = [
    "HTTP_METHODS",
    "RETRY_ON",
    "BreakerConfig",
    "HealthChecksConfig",
    "RetryConfig",
]

#: The retry conditions, Envoy's words: ``5xx`` is any 5xx status and no response at all,
#: ``gateway-error`` is 502/503/504 (and connect failures and resets: see
#: :class:`~mlwarden.sidecar.resilience.retry.RetryOn`), ``retriable-status-codes`` is
#: ``retry.retriable_status_codes``.
RETRY_ON = frozenset(
    {"connect-failure", "reset", "timeout", "retriable-status-codes", "5xx", "gateway-error"}
)
#: The methods ``retry.retriable_methods`` may name.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryConfig(Block):
    """When and how often to try again. POST is retried by default: a prediction is a pure
    function of its payload, so repeating it costs compute but changes nothing; the budget
    bounds that cost. ``timeout`` is not retried by default: a slow model would get more load
    exactly when it is slow. For endpoints with side effects, set ``retriable_methods``."""

    _key: ClassVar[str] = "retry"
    num_retries: int = setting(2, number(int, ge=0, le=10))
    retry_on: tuple[str, ...] = setting(
        ("connect-failure", "reset", "gateway-error"), words(RETRY_ON)
    )
    retriable_status_codes: tuple[int, ...] = setting((), status_codes(100, 599))
    retriable_methods: tuple[str, ...] = setting(
        ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"), words(HTTP_METHODS, upper=True)
    )
    base_interval_s: float = setting(0.025, seconds(gt=0, le=60))
    max_interval_s: float = setting(0.25, seconds(gt=0, le=600))
    backoff_multiplier: float = setting(2.0, number(float, ge=1, le=10))
    budget_percent: float = setting(20.0, number(float, ge=0, le=100))
    min_retries_per_s: float = setting(10.0, number(float, ge=0, le=1_000_000))

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if v["max_interval_s"] < v["base_interval_s"]:
            out.append(
                (
                    "max_interval_s",
                    f"must be >= retry.base_interval_s "
                    f"({v['base_interval_s']:g}), got "
                    f"{v['max_interval_s']:g}",
                )
            )
        listed = "retriable-status-codes" in v["retry_on"]
        if listed and not v["retriable_status_codes"]:
            out.append(
                (
                    "retriable_status_codes",
                    "must list at least one status code when retry_on has 'retriable-status-codes'",
                )
            )
        if v["retriable_status_codes"] and not listed:
            out.append(
                (
                    "retriable_status_codes",
                    "is ignored unless retry_on has 'retriable-status-codes'; add it there",
                )
            )
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig(Block):
    """The circuit breaker of each upstream. Connect failures and timeouts always count as
    failures; ``failure_status_codes`` says which answers do too. ``redis_url`` shares state
    across replicas; it may hold a password, so it is left out of ``repr``.
    ``close_on_healthy``: health checks bringing an upstream back into rotation close its
    breaker (Envoy's ``successful_active_health_check_uneject_host``); otherwise a breaker
    that opened on a version now serving only as a fallback stays open until real traffic
    trials it, and then lets one request through at a time just when it is needed."""

    _key: ClassVar[str] = "breaker"
    consecutive_5xx: int = setting(5, number(int, ge=1, le=10_000))
    reset_timeout_s: float = setting(30.0, seconds(gt=0, le=86_400))
    half_open_max_calls: int = setting(1, number(int, ge=1, le=1000))
    failure_status_codes: tuple[int, ...] = setting((500, 502, 503, 504), status_codes(100, 599))
    redis_url: str | None = setting(None, redis_address, repr=False)
    close_on_healthy: bool = setting(True, boolean)


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthChecksConfig(Block):
    """Active health checks of every upstream; with ``read_health_report`` the middleware's
    JSON verdict (drift, error rate) counts, not only the status code."""

    _key: ClassVar[str] = "health_checks"
    interval_s: float = setting(5.0, seconds(gt=0, le=3600))
    timeout_s: float = setting(1.0, seconds(gt=0, le=3600))
    healthy_threshold: int = setting(2, number(int, ge=1, le=100))
    unhealthy_threshold: int = setting(3, number(int, ge=1, le=100))
    read_health_report: bool = setting(True, boolean)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        if v["timeout_s"] >= v["interval_s"]:
            # Otherwise checks of one upstream overlap and pile up against a hanging server.
            return [
                (
                    "timeout_s",
                    f"must be < health_checks.interval_s ({v['interval_s']:g}), "
                    f"got {v['timeout_s']:g}",
                )
            ]
        return []
