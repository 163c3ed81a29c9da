"""Where the sidecar sends a request: health checks (``health_checks``), and next the router,
the canary split and shadow traffic.

Import from the submodules, e.g.
``from mlwarden.sidecar.routing.health_checks import HealthChecker``; this package re-exports
nothing so that importing one does not load the others.
"""
