"""The public port's limits on clients, and the count of clients refused by them.

A general-purpose server reads a request head of any size and waits for it forever: one
client could send a 32 MiB header (held whole in memory by the parser), 10,000 headers, or
keep a connection open with a partial head at a byte a second. The sidecar's server
(:mod:`mlwarden.sidecar.server`) refuses those before the proxy sees a request, as Envoy and
nginx do by default, with the limits here (``limits`` and ``timeouts`` blocks of the config);
slow bodies are the proxy's (``request_body_timeout_s``). Each refusal is counted by kind
(:class:`EdgeCounts`), exported as ``mlwarden_proxy_edge_refused_total{reason}``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlwarden.sidecar.config import SidecarConfig

__all__ = ["EDGE_REFUSALS", "EdgeCounts", "EdgeLimits", "edge_limits"]

#: The ``reason`` label values of ``mlwarden_proxy_edge_refused_total``: a head too large or
#: with too many headers (431), a head too slow (408), a connection that sent nothing before
#: the head timeout, a malformed request (400), a connection beyond ``max_connections`` (503).
EDGE_REFUSALS = (
    "header_bytes",
    "header_count",
    "head_timeout",
    "idle_timeout",
    "malformed",
    "connection_limit",
)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The limits on one client (see the module docstring)."""

    max_header_bytes: int
    max_headers: int
    request_head_timeout_s: float
    keep_alive_idle_s: float = 60.0
    max_connections: int = 4096


@dataclass(slots=True)
class EdgeCounts:
    """Connections refused at the edge, by kind (:data:`EDGE_REFUSALS`)."""

    refused: Counter[str] = field(default_factory=Counter)


def edge_limits(config: SidecarConfig) -> EdgeLimits:
    """The limits of a sidecar's configuration (``limits`` and ``timeouts`` blocks)."""
    return EdgeLimits(
        max_header_bytes=config.limits.max_header_bytes,
        max_headers=config.limits.max_headers,
        request_head_timeout_s=config.timeouts.request_head_timeout_s,
        keep_alive_idle_s=config.timeouts.keep_alive_idle_s,
        max_connections=config.limits.max_connections,
    )
