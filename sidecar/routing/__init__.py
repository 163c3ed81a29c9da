"""Where the sidecar sends a request: the router (``router``), the health checks
(``health_checks``), the canary split (``canary``) and shadow traffic (``shadow``, with
``shadow_exchange``, ``shadow_comparison`` and ``shadow_metrics``).

Import from the submodules, e.g.
``from mlwarden.sidecar.routing.health_checks import HealthChecker``; this package re-exports
nothing so that importing one does not load the others.
"""
