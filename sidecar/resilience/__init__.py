"""The sidecar's resilience rules: retries (``retry``) and circuit breakers (``breaker``, with
their shared, fail-open state in ``breaker_storage``).

Import from the submodules, e.g. ``from mlwarden.sidecar.resilience.retry import RetryPolicy``;
this package re-exports nothing so that importing one does not load the other.
"""
