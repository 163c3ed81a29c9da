"""Why an upstream is done with for one request, and whether the next candidate may try.

The proxy's attempt loop asks :func:`decide` after each failed or retriable attempt: a delay
to retry the same upstream after, or a :class:`GiveUp` saying whether to fall back, the
fallback reason label, and whether the request ran out of time (504 rather than 503 when it
is the last word).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlwarden.sidecar.resilience.retry import RetryDecision

__all__ = ["FALL_BACK_ON", "GiveUp", "decide"]

# Give-ups after which another upstream may still answer. "deadline" is the policy's word
# for "a retry here would not fit in the time left" (a long Retry-After, a long backoff):
# another upstream may still answer now, and a request whose time is really up is stopped
# before its next attempt anyway. "method"/"not_retriable" mean the request must not be sent
# again anywhere.
FALL_BACK_ON = frozenset({"attempts", "budget", "deadline"})
# The fallback reason label of each give-up that moves on to the next candidate.
FALLBACK_REASON = {
    "attempts": "retries_exhausted",
    "budget": "budget_exhausted",
    "deadline": "retry_too_late",
    "not_retriable": "error",
}


@dataclass(frozen=True, slots=True)
class GiveUp:
    """An upstream is done with: ``fall_back`` says whether the next candidate may be tried,
    ``label`` is the fallback reason (one of
    :data:`~mlwarden.sidecar.signals.outcomes.FALLBACK_REASONS`)."""

    fall_back: bool
    reason: str
    label: str = "error"
    #: The attempt ran out of time (its per-try deadline, or the request's total deadline):
    #: when it is the last word, the client gets 504, as from Envoy and nginx, not 503.
    timed_out: bool = False


def decide(
    decision: RetryDecision, what: str, *, error: bool, timed_out: bool = False
) -> float | GiveUp:
    """A retry delay, or why this upstream is done and whether another one may be tried.

    After an error there is no answer to give the client, so a failure that is not retried on
    the same upstream (``timeout`` is not, by default) still moves on to the next candidate:
    that is what a fallback is for. Only a method that must not be re-sent, or the total
    deadline, ends the request.
    """
    if decision.retry:
        return decision.delay_s
    give_up = decision.give_up or "not_retriable"
    fall_back = give_up in FALL_BACK_ON or (error and give_up == "not_retriable")
    return GiveUp(
        fall_back,
        f"{what} ({give_up})",
        FALLBACK_REASON.get(give_up, "error"),
        timed_out=timed_out,
    )
