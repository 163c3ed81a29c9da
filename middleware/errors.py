"""The public exceptions of mlwarden.

Everything mlwarden raises on purpose derives from :class:`MlwardenError`::

    MlwardenError
    ├── ConfigError          an option, a config file or a threshold is invalid (start-up)
    │   └── BaselineError    the baseline profile is missing, unreadable or malformed
    ├── PayloadError         an inference payload could not be turned into feature rows;
    │                        never reaches the client: the middleware counts it by ``reason``
    ├── BreakerOpen          (mlwarden.sidecar.resilience.breaker) an upstream's breaker
    │                        admits no request now; the proxy moves to the next fallback
    └── UpstreamError        (mlwarden.sidecar.upstream) one exchange with an upstream failed:
                             UpstreamConnectError (UpstreamPoolTimeout), UpstreamTimeout,
                             UpstreamReset, UpstreamProtocolError; the retry layer decides

The sidecar's classes live in the sidecar (this layer does not import it) and are listed here
so that the whole tree is in one place.

``ConfigError`` collects every problem it can before it is raised, so that one start-up
shows all of them; ``problems`` holds them one per entry, each naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["BaselineError", "ConfigError", "MlwardenError", "PayloadError"]


class MlwardenError(Exception):
    """Base class of every error mlwarden raises on purpose."""


class ConfigError(MlwardenError, ValueError):
    """Invalid configuration; the message names each key, the bad value and what is allowed."""

    what = "configuration"

    def __init__(self, problems: str | Iterable[str], *, source: str | None = None) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.source = source
        head = f"invalid {self.what} {source}" if source else f"invalid {self.what}"
        if len(self.problems) == 1:
            message = f"{head}: {self.problems[0]}"
        else:
            message = head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class BaselineError(ConfigError):
    """The baseline profile cannot be used."""

    what = "baseline"


class PayloadError(MlwardenError, ValueError):
    """A payload could not be read; ``reason`` is one of a small fixed set (a metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
