"""The words for what an attempt on an upstream came to, in one place.

The proxy reports each attempt's outcome as a status class (``"2xx"``) or one of
:data:`NO_ANSWER`; the windows, the canary's PromQL and the metrics all count errors the same
way: :data:`ERROR_OUTCOMES`.
"""

from __future__ import annotations

__all__ = ["ERROR_OUTCOMES", "FALLBACK_REASONS", "NO_ANSWER", "STATUS_CLASSES", "status_class"]

#: Outcomes of an attempt that got no answer.
NO_ANSWER: tuple[str, ...] = ("connect_error", "timeout", "reset")
#: Outcomes that count as an error of the upstream: a 5xx answer, or none at all.
ERROR_OUTCOMES: frozenset[str] = frozenset({"5xx", *NO_ANSWER})
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: Why a request moved from one upstream to the next.
#: ``breaker_open``/``unhealthy``: the upstream was skipped without being tried;
#: ``retries_exhausted``/``budget_exhausted``: its retries were spent on retriable failures;
#: ``retry_too_late``: the wait before a retry (its ``Retry-After``, the backoff) would not
#: fit in the time left; ``error``: it failed in a way not retried on the same upstream (a
#: timeout, by default).
FALLBACK_REASONS: tuple[str, ...] = (
    "breaker_open",
    "unhealthy",
    "retries_exhausted",
    "budget_exhausted",
    "retry_too_late",
    "error",
)


def status_class(status: int) -> str:
    """``503`` → ``"5xx"``: the bounded label of a status code."""
    index = status // 100 - 1
    return STATUS_CLASSES[index] if 0 <= index < 5 else "5xx"
