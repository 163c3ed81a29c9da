"""``Throttle``: lets a log message through at most once per period, counting what it held back.

The first message always passes: "never logged yet" is ``None``, not a time of 0, because a
monotonic clock counts from boot and reads small on a machine that started a minute ago.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    """Lets a message through at most once per ``period_s`` and counts what it held back."""

    __slots__ = ("_clock", "_last", "_period", "suppressed")

    def __init__(self, clock: Callable[[], float], period_s: float) -> None:
        self._clock = clock
        self._period = period_s
        self._last: float | None = None
        self.suppressed = 0

    def ready(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._period:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n
