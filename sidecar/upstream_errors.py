"""The upstream client's errors: how far one exchange got before it failed.

All derive from :class:`mlwarden.middleware.errors.MlwardenError`; the retry layer reads
``request_sent``, ``connection_reused`` and ``response_started`` to decide what may be retried::

    UpstreamError                 one exchange failed; ``request_sent`` says whether any byte of
    │                             the request was written, ``connection_reused`` whether the
    │                             connection had served an earlier exchange
    ├── UpstreamConnectError      refused, unresolvable or the connect deadline passed: nothing
    │   │                         was sent, safe to retry with any method
    │   └── UpstreamPoolTimeout   no connection became free before the connect deadline
    ├── UpstreamTimeout           the per-try deadline passed while sending, or waiting for the
    │                             head or the body
    ├── UpstreamReset             the upstream closed the connection mid-exchange (also: a reused
    │                             keep-alive connection it had just closed; ``connection_reused``
    │                             and ``response_started`` tell the retry layer which)
    └── UpstreamProtocolError     a malformed response, or a head above ``max_response_head_bytes``

They are importable from :mod:`mlwarden.sidecar.upstream` too, the client's public module.
"""

from __future__ import annotations

from mlwarden.middleware.errors import MlwardenError

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPoolTimeout",
    "UpstreamProtocolError",
    "UpstreamReset",
    "UpstreamTimeout",
]


class UpstreamError(MlwardenError):
    """One exchange with an upstream failed; see the module docstring for the tree."""

    def __init__(
        self,
        message: str,
        *,
        request_sent: bool,
        connection_reused: bool = False,
        response_started: bool = False,
    ) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        self.connection_reused = connection_reused
        self.response_started = response_started


class UpstreamConnectError(UpstreamError):
    """No connection could be made; nothing was sent, so any method may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, request_sent=False)


class UpstreamPoolTimeout(UpstreamConnectError):
    """Every connection stayed busy until the connect deadline; nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The per-try deadline passed before the exchange finished."""


class UpstreamReset(UpstreamError):
    """The upstream dropped the connection before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's response could not be parsed, or its head was too large."""
