"""What the retry strategies read: one attempt's :class:`Outcome` and the :class:`RetryState`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ErrorKind", "Outcome", "RetryState"]

ErrorKind = Literal["connect_error", "reset", "timeout"]
_ERROR_KINDS = frozenset({"connect_error", "reset", "timeout"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one upstream attempt produced: a status, or an error kind if no response came.

    ``retry_after`` is the raw ``Retry-After`` header value, if the response had one.
    """

    status: int | None = None
    error: ErrorKind | None = None
    retry_after: str | None = None

    def __post_init__(self) -> None:
        if (self.status is None) == (self.error is None):
            raise ValueError("an Outcome has exactly one of status or error")
        if self.error is not None and self.error not in _ERROR_KINDS:
            raise ValueError(f"error: expected one of {sorted(_ERROR_KINDS)}, got {self.error!r}")
        if self.status is not None:
            # an http.HTTPStatus is fine, but keep labels and comparisons on plain ints
            object.__setattr__(self, "status", int(self.status))


@dataclass(frozen=True, slots=True)
class RetryState:
    """What the strategies may look at: attempts made so far, times (policy clock), last outcome."""

    attempt: int
    started_at: float
    now: float
    last_outcome: Outcome | None = None

    @property
    def elapsed_s(self) -> float:
        return self.now - self.started_at
