"""Test doubles shared by the tests: a clock that moves only when told, and listeners."""

from __future__ import annotations

from typing import Any

from mlwarden.sidecar.listeners import Listener


class FakeClock:
    """A clock that reads ``now`` and moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def recording(hook: str, into: list[tuple[Any, ...]]) -> Listener:
    """A listener whose ``hook`` appends its arguments, as a tuple, to ``into``."""

    def record(self: Listener, *args: Any) -> None:
        into.append(args)

    return type(f"Recording_{hook}", (Listener,), {hook: record})()


def raising(hook: str) -> Listener:
    """A listener whose ``hook`` raises (a bug in somebody's listener)."""

    def fail(self: Listener, *args: Any) -> None:
        raise RuntimeError("listener bug")

    return type(f"Raising_{hook}", (Listener,), {hook: fail})()
