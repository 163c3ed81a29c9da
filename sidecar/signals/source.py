"""One interface for every figure the healing loop reads: :class:`SignalSource`.

A source answers :meth:`SignalSource.read` with the values of the signals it declares in
``SIGNALS`` for one upstream over a window. The sidecar's own windows of attempts, the
middleware's health reports, the breakers, the shadow, the canary and PromQL over the fleet
are sources; policies and the canary analysis read them through a :class:`SignalBoard`.
The policy vocabulary (the words a condition may use) is derived from the sources'
declarations, so a signal exists in the language exactly when some source can read it.

A value is ``None`` when it is unknown (no traffic, no report, a failed query): a condition
over an unknown value is unknown, never true.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

__all__ = ["Signal", "SignalBoard", "SignalKind", "SignalSource", "declared"]

SignalKind = Literal["bool", "number"]
Value = float | bool | None


@dataclass(frozen=True, slots=True)
class Signal:
    """A figure a source can read: its name, its kind and what it means.

    ``plain``: usable bare in a condition, of the policy's target; ``function``: also readable
    of any named upstream as ``function("v2")``.
    """

    name: str
    kind: SignalKind
    doc: str
    plain: bool = True
    function: str | None = None


class SignalSource:
    """Reads its ``SIGNALS`` for one upstream; see the module docstring.

    :meth:`refresh` fetches what a remote source (PromQL) must fetch before reads, from the
    loop that reads; local sources have nothing to fetch.
    """

    SIGNALS: ClassVar[tuple[Signal, ...]] = ()

    __slots__ = ()

    def read(self, target: str, window_s: float) -> Mapping[str, Value]:
        """The values of :attr:`SIGNALS` for ``target`` over the last ``window_s`` seconds."""
        raise NotImplementedError

    async def refresh(self, targets: Iterable[str], window_s: float) -> None:
        """Fetch the figures of ``targets`` that :meth:`read` will answer from."""


def declared(sources: Iterable[type[SignalSource] | SignalSource]) -> dict[str, Signal]:
    """Every signal the sources declare, by name (a name declared twice is a bug)."""
    out: dict[str, Signal] = {}
    for source in sources:
        for signal in source.SIGNALS:
            if signal.name in out:
                raise ValueError(f"signal {signal.name!r} is declared by two sources")
            out[signal.name] = signal
    return out


class SignalBoard:
    """The sources of one sidecar, read as one: every declared signal has a value (``None``
    when the source that reads it is absent, e.g. no shadow configured)."""

    def __init__(
        self, sources: Iterable[SignalSource], *, vocabulary: Mapping[str, Signal]
    ) -> None:
        self.sources = tuple(sources)
        self._blank: dict[str, Any] = dict.fromkeys(vocabulary)
        self._owner: dict[str, SignalSource] = {}
        for source in self.sources:
            for signal in source.SIGNALS:
                if signal.name not in vocabulary:
                    raise ValueError(f"signal {signal.name!r} is not in the vocabulary")
                self._owner[signal.name] = source

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        """Every signal of ``target`` over the window, ``None`` where unknown."""
        out = dict(self._blank)
        for source in self.sources:
            out.update(source.read(target, window_s))
        return out

    def read_one(self, name: str, target: str, window_s: float) -> Any:
        """One signal of ``target`` (``None`` when no source reads it)."""
        source = self._owner.get(name)
        return None if source is None else source.read(target, window_s).get(name)

    async def refresh(
        self, targets: Iterable[str], window_s: float, names: Collection[str] | None = None
    ) -> None:
        """Refresh the sources; with ``names``, only those that read one of these signals
        (a Prometheus is not asked for figures no condition reads)."""
        wanted = tuple(targets)
        for source in self.sources:
            if names is None or any(s.name in names for s in source.SIGNALS):
                await source.refresh(wanted, window_s)

    def __repr__(self) -> str:
        return f"SignalBoard({[type(s).__name__ for s in self.sources]!r})"
