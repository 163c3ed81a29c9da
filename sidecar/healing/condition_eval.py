"""Evaluating a parsed condition: closures over Kleene's three-valued logic, and explaining it.

The parser (:mod:`~mlwarden.sidecar.healing.condition_parser`) compiles each node of a condition
into one of the closures built here; a :class:`Condition` holds the root and evaluates it on
each tick of the healing loop. A signal or call whose value is ``None``, NaN or not of its
declared kind is *unknown* (``None``); an unknown operand makes arithmetic and comparisons
unknown; ``and``/``or``/``not`` follow Kleene's tables. Division by zero and NaN results are
unknown, never an exception. The language itself is described in
:mod:`mlwarden.sidecar.healing.conditions`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

__all__ = [
    "NORMALIZE",
    "Arg",
    "ArgKind",
    "Condition",
    "Explanation",
    "Fn",
    "Kind",
    "Value",
    "all_of",
    "any_of",
    "arith",
    "call_key",
    "compare",
    "compiled_call",
    "compiled_signal",
    "constant",
    "divide",
    "minus",
    "negate",
]

Kind = Literal["bool", "number"]
ArgKind = Literal["string", "number"]
Arg = str | float
Value = bool | float | None
Values = Mapping[str, object] | Callable[[str], object]
Functions = Mapping[str, Callable[..., object]]


class Explanation(NamedTuple):
    """A verdict and every value it read: signal names and calls such as ``healthy("v1")``."""

    result: bool | None
    values: dict[str, Value]


def _as_number(v: object) -> float | None:
    if type(v) is float:
        return None if v != v else v
    if type(v) is int and -(2**53) <= v <= 2**53:
        return float(v)
    if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    try:
        f = float(v)
    except (OverflowError, ValueError, TypeError):
        return None
    return None if f != f else f


def _as_bool(v: object) -> bool | None:
    return v if v is True or v is False else None


NORMALIZE: dict[str, Callable[[object], Value]] = {"number": _as_number, "bool": _as_bool}

# A compiled node: (signal getter, call dispatcher) -> value.
Getter = Callable[[str], object]
Caller = Callable[[str, tuple[Arg, ...]], object]
Fn = Callable[[Getter, Caller], Value]


def call_key(name: str, args: tuple[Arg, ...]) -> str:
    shown = (
        f'"{a}"' if isinstance(a, str) else (str(int(a)) if a.is_integer() else repr(a))
        for a in args
    )
    return f"{name}({', '.join(shown)})"


class Condition:
    """A parsed condition. Evaluate it with :meth:`evaluate`; build it with
    :func:`~mlwarden.sidecar.healing.conditions.parse_condition`."""

    __slots__ = ("_call_kinds", "_fn", "_signal_kinds", "function_calls", "signals", "text")

    def __init__(
        self,
        text: str,
        fn: Fn,
        signals: frozenset[str],
        function_calls: tuple[tuple[str, tuple[Arg, ...]], ...],
        signal_kinds: dict[str, Kind],
        call_kinds: dict[str, Kind],
    ) -> None:
        self.text = text
        self.signals = signals
        self.function_calls = function_calls
        self._fn = fn
        self._signal_kinds = signal_kinds
        self._call_kinds = call_kinds

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def evaluate(self, values: Values, functions: Functions | None = None) -> bool | None:
        """``True``, ``False`` or ``None`` (unknown). ``values`` maps signal names to values
        (a missing key is unknown) or is a function of the name; ``functions`` maps function
        names to implementations (a missing one is unknown). Their exceptions propagate."""
        get = values.get if isinstance(values, Mapping) else values
        impls = functions if functions is not None else {}

        def call(name: str, args: tuple[Arg, ...]) -> object:
            impl = impls.get(name)
            return None if impl is None else impl(*args)

        return self._fn(get, call)  # type: ignore[return-value]  # the root is boolean

    def explain(self, values: Values, functions: Functions | None = None) -> Explanation:
        """Evaluate and record each value read, for the healing ledger. Operands that could not
        change the verdict (after a decisive ``and``/``or`` operand) are not read."""
        get = values.get if isinstance(values, Mapping) else values
        impls = functions if functions is not None else {}
        read: dict[str, Value] = {}

        def recording_get(name: str) -> object:
            read[name] = value = NORMALIZE[self._signal_kinds[name]](get(name))
            return value

        def recording_call(name: str, args: tuple[Arg, ...]) -> object:
            impl = impls.get(name)
            raw = None if impl is None else impl(*args)
            read[call_key(name, args)] = value = NORMALIZE[self._call_kinds[name]](raw)
            return value

        result = self._fn(recording_get, recording_call)
        return Explanation(result, read)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- compiled nodes


def constant(value: Value) -> Fn:
    return lambda get, call: value


def compiled_signal(name: str, normalize: Callable[[object], Value]) -> Fn:
    return lambda get, call: normalize(get(name))


def compiled_call(name: str, args: tuple[Arg, ...], normalize: Callable[[object], Value]) -> Fn:
    return lambda get, call: normalize(call(name, args))


def negate(a: Fn) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        x = a(get, call)
        return None if x is None else not x

    return fn


def minus(a: Fn) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        x = a(get, call)
        return None if x is None else -x  # type: ignore[operator]

    return fn


def all_of(parts: tuple[Fn, ...]) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        unknown = False
        for part in parts:
            x = part(get, call)
            if x is False:
                return False
            if x is None:
                unknown = True
        return None if unknown else True

    return fn


def any_of(parts: tuple[Fn, ...]) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        unknown = False
        for part in parts:
            x = part(get, call)
            if x is True:
                return True
            if x is None:
                unknown = True
        return None if unknown else False

    return fn


def compare(op: Callable[[object, object], bool], a: Fn, b: Fn) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        x = a(get, call)
        if x is None:
            return None
        y = b(get, call)
        return None if y is None else op(x, y)

    return fn


def arith(op: Callable[[float, float], float], a: Fn, b: Fn) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        x = a(get, call)
        if x is None:
            return None
        y = b(get, call)
        if y is None:
            return None
        r = op(x, y)  # type: ignore[arg-type]
        return None if r != r else r  # NaN: inf - inf, 0 * inf

    return fn


def divide(a: Fn, b: Fn) -> Fn:
    def fn(get: Getter, call: Caller) -> Value:
        x = a(get, call)
        if x is None:
            return None
        y = b(get, call)
        if y is None or y == 0:
            return None
        r = x / y  # type: ignore[operator]
        return None if r != r else r

    return fn
