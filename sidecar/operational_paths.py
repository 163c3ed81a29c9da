"""Which requests the public port refuses to forward: the model's operational paths.

A model server with the middleware serves ``/metrics``, ``/-/health`` and ``/-/feedback``
beside its predictions. Those are for the sidecar, Prometheus and the team's labelling job,
not for the sidecar's clients: through the sidecar a client could read the model's metrics,
or post labels for other clients' predictions and move the live accuracy that healing acts
on. So the proxy answers them 404 itself, without contacting an upstream, unless
``routing.forward_operational_paths`` lists them. What counts as operational, and how a path
is normalised first (``//-/./feedback`` is ``/-/feedback``), is
:func:`~mlwarden.sidecar.config.network.operational_path`.

Each refusal is reported with a bounded label (:data:`REFUSED_LABELS`): the three paths the
middleware serves, or ``other`` for any other operational path.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlwarden.sidecar.config import RoutingConfig
from mlwarden.sidecar.config.network import operational_path
from mlwarden.sidecar.forwarding import json_response

__all__ = ["REFUSAL", "REFUSED_LABELS", "OperationalPaths"]

_KNOWN = ("/metrics", "/-/health", "/-/feedback")
#: The ``path`` label values of a refused request.
REFUSED_LABELS = (*_KNOWN, "other")
#: The answer to a refused request (status, headers, body), made once.
REFUSAL = json_response(
    404,
    {
        "error": "not found",
        "detail": "the model's operational paths are not served on this port "
        "(routing.forward_operational_paths)",
    },
)


class OperationalPaths:
    """Decides, per request path, whether the proxy forwards it or refuses it (and how that
    refusal is labelled). ``forwarded``: the operational paths to forward anyway."""

    __slots__ = ("_forwarded",)

    def __init__(self, forwarded: Iterable[str] = ()) -> None:
        normal = []
        for path in forwarded:
            found = operational_path(path)
            if found is None:
                raise ValueError(f"{path!r} is not an operational path (/metrics, /-/...)")
            normal.append(found)
        self._forwarded = frozenset(normal)

    @classmethod
    def from_config(cls, routing: RoutingConfig) -> OperationalPaths:
        """From the routing block (its paths already checked and normalised)."""
        return cls(routing.forward_operational_paths)

    def __repr__(self) -> str:
        return f"OperationalPaths(forwarded={sorted(self._forwarded)!r})"

    def refused(self, path: str) -> str | None:
        """The label of a refused request for ``path``; None when it is forwarded."""
        lowered = path.lower()
        if "/-" not in lowered and "/metrics" not in lowered:  # every model request: 0.1 µs
            return None
        normal = operational_path(path)
        if normal is None or normal in self._forwarded:
            return None
        if normal.startswith("/metrics"):
            return "/metrics"
        return normal if normal in _KNOWN else "other"
