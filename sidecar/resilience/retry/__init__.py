"""How the sidecar decides whether, when and how often to retry an upstream attempt.

Retries are built from small strategy objects, in the manner of tenacity and stamina, each
reading one immutable :class:`RetryState`:

- a **backoff** says how long to wait (:class:`ExponentialJitterBackoff`, :class:`ConstantBackoff`);
- a **stop** condition bounds attempts *and* time (:class:`StopAfterAttempts`,
  :class:`StopAfterDelay`, combined with ``|``); the default bounds both, as stamina does;
- a **retry condition** (:class:`RetryOn`, Envoy's ``retry_on`` words) is explicit and
  mandatory: :class:`RetryPolicy` has no default for it;
- a :class:`RetryBudget` (Envoy's retry budget, Linkerd's ``retryRatio``) caps retries to a
  share of recent requests so that a failing upstream is not hammered by every replica.

The proxy streams bodies, so it drives attempts itself: :meth:`RetryPolicy.begin` returns a
per-request :class:`RetryAttempts` whose :meth:`~RetryAttempts.next` turns each attempt's
:class:`Outcome` into a :class:`RetryDecision` (retry after ``delay_s``, or give up and why).
:meth:`RetryPolicy.run` is a convenience loop over the same steps for callers that do not
stream. A response that has started reaching the client, or a request body that cannot be
replayed, must not be retried; only the caller knows that, so it simply stops asking.

Building and defaults
    :meth:`RetryPolicy.from_config` builds the sidecar's policy from its ``retry`` and
    ``timeouts`` blocks and trusts them. Built directly (tests, embedding), every strategy takes
    its defaults from those blocks (:class:`~mlwarden.sidecar.config.RetryConfig`,
    :class:`~mlwarden.sidecar.config.TimeoutsConfig`) and checks its arguments with the same
    rules, so there is one default and one rule per setting, and the same message for the same
    mistake.

Which methods are retried
    By default ``retry.retriable_methods``: the idempotent methods (GET, HEAD, OPTIONS, PUT,
    DELETE) **and POST**.
    The sidecar fronts model servers, where POST carries a prediction request and a prediction
    is a pure function of its input: sending it twice costs compute, never correctness, and a
    retried prediction is what keeps a client served while one replica fails. Endpoints that do
    have side effects behind POST (feedback, labelling, online learning) must be configured out
    by passing ``retriable_methods`` without POST. Whatever the method, a *connect failure* is
    always retried when ``connect-failure`` is enabled: the request never reached the upstream,
    so nothing can have happened twice (Envoy makes the same call).

``Retry-After``
    Honoured on retriable responses (delta-seconds or HTTP-date): the wait is
    ``max(backoff, retry_after)``; if that wait does not fit in the time left before the
    request's deadline, the policy gives up (``give_up="deadline"``) instead of waiting in vain.

Reason labels (``RetryDecision.reason``) are a fixed, small set known up front
(:attr:`RetryOn.reason_labels`), so they are safe as Prometheus label values.

Where things are: ``state.py`` (:class:`Outcome`, :class:`RetryState`), ``backoff.py``,
``stop.py``, ``condition.py`` (:class:`RetryOn`, ``Retry-After``), ``budget.py`` and
``policy.py`` (:class:`RetryPolicy`, :class:`RetryAttempts`); import from this package.
"""

from __future__ import annotations

from mlwarden.sidecar.resilience.retry.backoff import (
    Backoff,
    ConstantBackoff,
    ExponentialJitterBackoff,
)
from mlwarden.sidecar.resilience.retry.budget import RetryBudget
from mlwarden.sidecar.resilience.retry.condition import (
    RETRY_ON_CONDITIONS,
    RetryOn,
    parse_retry_after,
)
from mlwarden.sidecar.resilience.retry.policy import (
    DEFAULT_RETRIABLE_METHODS,
    RetryAttempts,
    RetryDecision,
    RetryPolicy,
)
from mlwarden.sidecar.resilience.retry.state import Outcome, RetryState
from mlwarden.sidecar.resilience.retry.stop import Stop, StopAfterAttempts, StopAfterDelay, StopAny

__all__ = [
    "DEFAULT_RETRIABLE_METHODS",
    "RETRY_ON_CONDITIONS",
    "Backoff",
    "ConstantBackoff",
    "ExponentialJitterBackoff",
    "Outcome",
    "RetryAttempts",
    "RetryBudget",
    "RetryDecision",
    "RetryOn",
    "RetryPolicy",
    "RetryState",
    "Stop",
    "StopAfterAttempts",
    "StopAfterDelay",
    "StopAny",
    "parse_retry_after",
]
