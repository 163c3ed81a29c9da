"""The condition language of the healing policies: parsed and type-checked once, never eval'ed.

A policy's ``condition`` is text such as ``error_rate > 0.05 or p99_latency_seconds > 0.5`` or
``not healthy("v1") and error_rate >= 2 * 0.01``. This module owns its grammar, the checks made
when the configuration loads, and the evaluation on each tick of the healing loop.

Grammar (lowest precedence first; ``{ }`` repeats, ``[ ]`` is optional)::

    condition  = or_expr END
    or_expr    = and_expr { "or" and_expr }
    and_expr   = not_expr { "and" not_expr }
    not_expr   = "not" not_expr | comparison
    comparison = sum [ ( "<" | "<=" | ">" | ">=" | "==" | "!=" ) sum ]   (no chaining)
    sum        = product { ( "+" | "-" ) product }
    product    = unary { ( "*" | "/" ) unary }
    unary      = "-" unary | primary
    primary    = NUMBER | "true" | "false" | SIGNAL | call | "(" or_expr ")"
    call       = FUNCTION "(" [ literal { "," literal } ] ")"
    literal    = STRING | [ "-" ] NUMBER
    NUMBER     = digits [ "." [ digits ] ] [ exponent ] | "." digits [ exponent ]   (ASCII 0-9)
    exponent   = ( "e" | "E" ) [ "+" | "-" ] digits
    STRING     = '"' { printable ASCII except '"' and backslash } '"'
    SIGNAL, FUNCTION = [a-z_][a-z0-9_]*   (names the caller declares)

Decisions:

- One spelling per operator: ``and or not`` (lowercase). ``&& || ! = & |``, single quotes,
  ``**``, ``//``, ``%``, attribute access, subscripts, ``;`` and backslashes are rejected with a
  message saying what to write instead. Whitespace includes newlines (YAML block scalars).
- Comparisons do not chain (``a < b < c`` is an error): Python chains them, most languages do
  not, and an operator reading either would guess wrong. ``== !=`` compare two numbers or two
  booleans; ``< <= > >=`` compare numbers; ``+ - * /`` and unary ``-`` take numbers;
  ``and or not`` take booleans; the condition as a whole must be boolean.
- Function arguments are literals only, so every call is a fixed ``(name, args)`` pair that the
  caller knows up front (:attr:`Condition.function_calls`) and that the spec's ``check`` can
  validate at load time (e.g. that ``"v2"`` names a configured upstream).
- Arithmetic on constants is folded when parsing; a constant divisor of zero is an error.
- Evaluation is three-valued (Kleene). A signal or call whose value is ``None`` (too few
  samples, not reported), NaN, or not of its declared kind is *unknown*; an unknown operand
  makes arithmetic and comparisons unknown; ``and``/``or``/``not`` follow Kleene's tables
  (``unknown and false`` is false, ``unknown or true`` is true). Division by zero and NaN
  results are unknown, never an exception. Policies fire only on ``True``.
- Hostile text is bounded: at most :data:`MAX_LENGTH` characters, :data:`MAX_DEPTH` levels of
  nesting (checked before the parser recurses) and :data:`MAX_NODES` nodes.
- Positions in messages are 1-based character columns within the whole text.
"""

from __future__ import annotations

import difflib
import keyword
import math
import numbers
import operator
import re
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from mlwarden.middleware.errors import ConfigError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NODES",
    "Condition",
    "ConditionError",
    "Explanation",
    "FunctionSpec",
    "parse_condition",
]

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_NODES = 200

Kind = Literal["bool", "number"]
ArgKind = Literal["string", "number"]
Arg = str | float
Value = bool | float | None
Values = Mapping[str, object] | Callable[[str], object]
Functions = Mapping[str, Callable[..., object]]

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_KEYWORDS = frozenset({"and", "or", "not", "true", "false"})
_OPERATORS = ("<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",")
_COMPARE = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}
# Text that people (or attackers) write from other languages, and what to say about it.
_REJECTED = (
    ("&&", "write 'and'"),
    ("||", "write 'or'"),
    ("**", "there is no power operator"),
    ("//", "write '/'"),
    ("=", "write '==' to compare"),
    ("!", "write 'not'"),
    ("&", "write 'and'"),
    ("|", "write 'or'"),
    ("%", "there is no modulo operator"),
    ("'", "strings take double quotes"),
    (".", "there is no attribute access"),
    ("[", "there are no subscripts"),
    ("]", "there are no subscripts"),
    (";", "a condition is one expression"),
    ("\\", "there are no backslash escapes"),
)
_A = {"bool": "a boolean", "number": "a number", "string": "a string"}


class ConditionError(ConfigError):
    """A condition does not parse or type-check.

    ``detail`` is the one-line reason, ``column`` the 1-based position it points at, ``text``
    the condition; ``problem`` (also ``problems[0]``) adds the text with a caret under the
    column. A policy loader prefixes ``problem`` with the policy's key and collects it.
    """

    what = "condition"

    def __init__(self, detail: str, column: int, text: str = "") -> None:
        self.detail = detail
        self.column = column
        self.text = text
        self.problem = f"column {column}: {detail}" + _excerpt(text, column - 1)
        super().__init__(self.problem)


def _excerpt(text: str, pos: int, width: int = 72) -> str:
    if not text:
        return ""
    start = max(0, min(pos - width // 2, len(text) - width))
    shown = "".join(ch if ch.isprintable() else " " for ch in text[start : start + width])
    head = "..." if start > 0 else ""
    tail = "..." if start + width < len(text) else ""
    return f"\n    {head}{shown}{tail}\n    {' ' * (len(head) + pos - start)}^"


@dataclass(frozen=True)
class FunctionSpec:
    """A function conditions may call: its argument kinds, its result kind, a load-time check.

    ``check(args)`` returns an error message for arguments it rejects (e.g. an unknown upstream
    name) or ``None``; it runs once per call site when the condition is parsed.
    """

    params: tuple[ArgKind, ...]
    returns: Kind
    check: Callable[[tuple[Arg, ...]], str | None] | None = None

    def __post_init__(self) -> None:
        if any(p not in ("string", "number") for p in self.params):
            raise ValueError(f"params: expected 'string' or 'number' each, got {self.params!r}")
        if self.returns not in ("bool", "number"):
            raise ValueError(f"returns: expected 'bool' or 'number', got {self.returns!r}")


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


_NORMALIZE: dict[str, Callable[[object], Value]] = {"number": _as_number, "bool": _as_bool}

# A compiled node: (signal getter, call dispatcher) -> value.
_Getter = Callable[[str], object]
_Caller = Callable[[str, tuple[Arg, ...]], object]
_Fn = Callable[[_Getter, _Caller], Value]


def _call_key(name: str, args: tuple[Arg, ...]) -> str:
    shown = (
        f'"{a}"' if isinstance(a, str) else (str(int(a)) if a.is_integer() else repr(a))
        for a in args
    )
    return f"{name}({', '.join(shown)})"


class Condition:
    """A parsed condition. Evaluate it with :meth:`evaluate`; build it with
    :func:`parse_condition`."""

    __slots__ = ("_call_kinds", "_fn", "_signal_kinds", "function_calls", "signals", "text")

    def __init__(
        self,
        text: str,
        fn: _Fn,
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
            read[name] = value = _NORMALIZE[self._signal_kinds[name]](get(name))
            return value

        def recording_call(name: str, args: tuple[Arg, ...]) -> object:
            impl = impls.get(name)
            raw = None if impl is None else impl(*args)
            read[_call_key(name, args)] = value = _NORMALIZE[self._call_kinds[name]](raw)
            return value

        result = self._fn(recording_get, recording_call)
        return Explanation(result, read)  # type: ignore[arg-type]


def parse_condition(
    text: str,
    *,
    signals: Collection[str] | Mapping[str, Kind],
    functions: Mapping[str, FunctionSpec] | None = None,
) -> Condition:
    """Parse and type-check ``text``; raise :class:`ConditionError` naming the column.

    ``signals`` lists the known signal names, all numbers, or maps each name to ``"number"``
    or ``"bool"``. ``functions`` maps the callable names to their specs.
    """
    kinds: dict[str, Kind] = (
        dict(signals) if isinstance(signals, Mapping) else dict.fromkeys(signals, "number")
    )
    specs = dict(functions or {})
    for name, kind in kinds.items():
        if kind not in ("bool", "number"):
            raise ValueError(f"signal {name!r}: expected kind 'bool' or 'number', got {kind!r}")
    for name in (*kinds, *specs):
        if not isinstance(name, str) or not _NAME.match(name) or name in _KEYWORDS:
            raise ValueError(f"{name!r} is not a valid signal or function name")
    if not isinstance(text, str):
        raise ConditionError(f"expected the condition as text, got {type(text).__name__}", 1)
    if len(text) > MAX_LENGTH:
        raise ConditionError(
            f"the condition is too long ({len(text)} characters; at most {MAX_LENGTH})",
            MAX_LENGTH + 1,
            text[: MAX_LENGTH + 20],
        )
    return _Parser(text, kinds, specs).parse()


# --------------------------------------------------------------------------- tokens


class _Token(NamedTuple):
    kind: Literal["number", "string", "name", "op", "end"]
    value: str | float
    pos: int
    source: str  # the token as written, for messages


def _tokenize(text: str) -> Iterator[_Token]:
    """Tokens on demand, so that the leftmost problem is the one reported."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif m := _NUMBER.match(text, i):  # [0-9]: str.isdigit() accepts other scripts
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_."):
                while end < n and (text[end].isalnum() or text[end] in "_."):
                    end += 1
                raise ConditionError(f"malformed number {text[i:end]!r}", i + 1, text)
            value = float(m.group())
            if math.isinf(value):
                raise ConditionError(f"number {m.group()!r} is out of range", i + 1, text)
            yield _Token("number", value, i, m.group())
            i = end
        elif ch == '"':
            end = i + 1
            while end < n and text[end] != '"':
                c = text[end]
                if c == "\\":
                    raise ConditionError("backslashes are not supported in strings", end + 1, text)
                if not (c.isascii() and c.isprintable()):
                    raise ConditionError(
                        f"strings hold printable ASCII only, found {_describe(c)}", end + 1, text
                    )
                end += 1
            if end >= n:
                raise ConditionError("unterminated string", i + 1, text)
            yield _Token("string", text[i + 1 : end], i, text[i : end + 1])
            i = end + 1
        elif (m := _WORD.match(text, i)) and ch.isascii():
            word = m.group()
            if not _NAME.match(word):
                raise ConditionError(
                    f"names are lowercase: write {word.lower()!r}, not {word!r}", i + 1, text
                )
            yield _Token("name", word, i, word)
            i = m.end()
        elif (op := next((o for o in _OPERATORS if text.startswith(o, i)), None)) and not (
            text.startswith(("**", "//"), i)
        ):
            yield _Token("op", op, i, op)
            i += len(op)
        else:
            bad, why = next(((b, w) for b, w in _REJECTED if text.startswith(b, i)), (ch, ""))
            if not why:
                raise ConditionError(f"unexpected character {_describe(ch)}", i + 1, text)
            raise ConditionError(f"unsupported {bad!r} ({why})", i + 1, text)
    while True:
        yield _Token("end", "", n, "")


def _describe(ch: str) -> str:
    if ch.isascii() and ch.isprintable():
        return repr(ch)
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')})"


# --------------------------------------------------------------------------- parser


_VARIABLE = object()  # the value of a node that is not a constant


class _Expr(NamedTuple):
    kind: Kind
    fn: _Fn
    depth: int
    pos: int
    const: object = _VARIABLE


def _constant(value: Value) -> _Fn:
    return lambda get, call: value


class _Parser:
    """Recursive descent that type-checks and compiles each node into a closure as it goes."""

    def __init__(self, text: str, kinds: dict[str, Kind], specs: dict[str, FunctionSpec]) -> None:
        self.text = text
        self.kinds = kinds
        self.specs = specs
        self.stream = _tokenize(text)
        self.tokens: list[_Token] = []
        self.i = 0
        self.nesting = 0
        self.nodes = 0
        self.used: set[str] = set()
        self.calls: dict[tuple[str, tuple[Arg, ...]], None] = {}

    def fail(self, detail: str, pos: int) -> ConditionError:
        return ConditionError(detail, pos + 1, self.text)

    def peek(self) -> _Token:
        if self.i == len(self.tokens):
            self.tokens.append(next(self.stream))
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.peek()
        self.i += 1
        return token

    def at(self, *values: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "name") and token.value in values

    def node(self, kind: Kind, fn: _Fn, pos: int, *children: _Expr) -> _Expr:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"the condition is too large (more than {MAX_NODES} terms)", pos)
        depth = 1 + max((c.depth for c in children), default=0)
        if depth > MAX_DEPTH:
            raise self.fail(
                f"the condition is nested too deeply (more than {MAX_DEPTH} levels)", pos
            )
        if children and all(c.const is not _VARIABLE for c in children):
            value = fn(_no_get, _no_call)
            if value is None:  # NaN from constants alone, e.g. infinity minus infinity
                raise self.fail("arithmetic on constants has no finite result", pos)
            return _Expr(kind, _constant(value), depth, pos, value)
        return _Expr(kind, fn, depth, pos)

    def nest(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self.fail(
                f"the condition is nested too deeply (more than {MAX_DEPTH} levels)",
                self.peek().pos,
            )

    def expect(self, kinds: tuple[str, ...], expr: _Expr, what: str) -> None:
        if expr.kind not in kinds:
            raise self.fail(f"{what}, got {_A[expr.kind]}", expr.pos)

    def parse(self) -> Condition:
        if self.peek().kind == "end":
            raise self.fail("the condition is empty", 0)
        expr = self.or_expr()
        token = self.peek()
        if token.kind == "name" and _foreign(str(token.value)):
            raise self.fail(f"{token.value!r} is not part of the condition language", token.pos)
        if token.kind != "end":
            raise self.fail(f"unexpected {self.show(token)} after a complete expression", token.pos)
        if expr.kind != "bool":
            raise self.fail(
                f"the condition must be true or false, got {_A[expr.kind]} (is a "
                f"comparison missing?)",
                0,
            )
        return Condition(
            self.text,
            expr.fn,
            frozenset(self.used),
            tuple(self.calls),
            {n: self.kinds[n] for n in self.used},
            {name: self.specs[name].returns for name, _ in self.calls},
        )

    def show(self, token: _Token) -> str:
        return "end of text" if token.kind == "end" else repr(token.source[:30])

    def logical(self, word: str, operand: Callable[[], _Expr]) -> _Expr:
        parts = [operand()]
        while self.at(word):
            self.take()
            parts.append(operand())
            for part in parts[-2:]:
                self.expect(("bool",), part, f"'{word}' needs booleans on both sides")
        if len(parts) == 1:
            return parts[0]
        fns = tuple(p.fn for p in parts)
        fn = _any_of(fns) if word == "or" else _all_of(fns)
        return self.node("bool", fn, parts[0].pos, *parts)

    def or_expr(self) -> _Expr:
        return self.logical("or", self.and_expr)

    def and_expr(self) -> _Expr:
        return self.logical("and", self.not_expr)

    def not_expr(self) -> _Expr:
        if not self.at("not"):
            return self.comparison()
        op = self.take()
        self.nest()
        operand = self.not_expr()
        self.nesting -= 1
        self.expect(("bool",), operand, "'not' needs a boolean")
        return self.node("bool", _negate(operand.fn), op.pos, operand)

    def comparison(self) -> _Expr:
        left = self.sum()
        if not self.at(*_COMPARE):
            return left
        op = self.take()
        right = self.sum()
        if self.at(*_COMPARE):
            raise self.fail("comparisons do not chain: write 'a < b and b < c'", self.peek().pos)
        if op.value in ("==", "!="):
            if left.kind != right.kind:
                raise self.fail(
                    f"'{op.value}' compares {_A[left.kind]} with {_A[right.kind]}", op.pos
                )
        else:
            self.expect(("number",), left, f"'{op.value}' compares numbers")
            self.expect(("number",), right, f"'{op.value}' compares numbers")
        return self.node(
            "bool", _compare(_COMPARE[op.value], left.fn, right.fn), op.pos, left, right
        )

    def arithmetic(self, ops: tuple[str, str], operand: Callable[[], _Expr]) -> _Expr:
        left = operand()
        while self.at(*ops):
            op = self.take()
            right = operand()
            for side in (left, right):
                self.expect(("number",), side, f"'{op.value}' needs numbers on both sides")
            if op.value == "/" and right.const == 0:
                raise self.fail("division by zero", op.pos)
            fn = (
                _divide(left.fn, right.fn)
                if op.value == "/"
                else _arith(_ARITH[str(op.value)], left.fn, right.fn)
            )
            left = self.node("number", fn, op.pos, left, right)
        return left

    def sum(self) -> _Expr:
        return self.arithmetic(("+", "-"), self.product)

    def product(self) -> _Expr:
        return self.arithmetic(("*", "/"), self.unary)

    def unary(self) -> _Expr:
        if not self.at("-"):
            return self.primary()
        op = self.take()
        self.nest()
        operand = self.unary()
        self.nesting -= 1
        self.expect(("number",), operand, "unary '-' needs a number")
        return self.node("number", _minus(operand.fn), op.pos, operand)

    def primary(self) -> _Expr:
        token = self.take()
        if token.kind == "number":
            return self.node("number", _constant(token.value), token.pos)._replace(
                const=token.value
            )
        if token.kind == "string":
            raise self.fail("a string is allowed only as a function argument", token.pos)
        if token.kind == "op" and token.value == "(":
            self.nest()
            inner = self.or_expr()
            self.nesting -= 1
            if not self.at(")"):
                raise self.fail(
                    f"expected ')' to close the '(' at column {token.pos + 1}, "
                    f"found {self.show(self.peek())}",
                    self.peek().pos,
                )
            self.take()
            return inner._replace(pos=token.pos)
        if token.kind == "name":
            if token.value in ("true", "false"):
                value = token.value == "true"
                return self.node("bool", _constant(value), token.pos)._replace(const=value)
            if token.value not in _KEYWORDS:
                return self.name(str(token.value), token.pos)
        raise self.fail(f"expected a value, found {self.show(token)}", token.pos)

    def name(self, name: str, pos: int) -> _Expr:
        if name not in self.kinds and name not in self.specs and _foreign(name):
            raise self.fail(f"{name!r} is not part of the condition language", pos)
        is_call = self.at("(")
        if is_call and name in self.specs:
            return self.call(name, pos)
        if not is_call and name in self.kinds:
            self.used.add(name)
            return self.node(self.kinds[name], _signal(name, _NORMALIZE[self.kinds[name]]), pos)
        if is_call and name in self.kinds:
            raise self.fail(f"{name!r} is a signal, not a function", pos)
        if name in self.specs:
            raise self.fail(f"{name!r} is a function: call it as {name}(...)", pos)
        what, known = ("function", self.specs) if is_call else ("signal", self.kinds)
        close = difflib.get_close_matches(name, sorted(known), n=3)
        if close:
            hint = " (did you mean " + " or ".join(map(repr, close)) + "?)"
        elif known:
            names = sorted(known)
            hint = f" (known: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
        else:
            hint = f" (no {what}s are available)"
        raise self.fail(f"unknown {what} {name!r}{hint}", pos)

    def call(self, name: str, pos: int) -> _Expr:
        spec = self.specs[name]
        self.take()  # "("
        args: list[Arg] = []
        arg_pos: list[int] = []
        while not self.at(")"):
            if args and not self.at(","):
                raise self.fail(
                    f"expected ',' or ')' in the call of {name}, found {self.show(self.peek())}",
                    self.peek().pos,
                )
            if args:
                self.take()
            token = self.take()
            arg_pos.append(token.pos)
            if token.kind == "op" and token.value == "-" and self.peek().kind == "number":
                args.append(-float(self.take().value))
            elif token.kind in ("string", "number"):
                args.append(token.value)
            else:
                raise self.fail(
                    f"arguments of {name} are literal strings or numbers, found {self.show(token)}",
                    token.pos,
                )
            if len(args) > len(spec.params):
                raise self.fail(f"{name} takes {_arguments(len(spec.params))}, got more", token.pos)
        close = self.take()
        if len(args) != len(spec.params):
            raise self.fail(
                f"{name} takes {_arguments(len(spec.params))}, got {len(args)}", close.pos
            )
        for n, (arg, want, at) in enumerate(zip(args, spec.params, arg_pos, strict=True), 1):
            got = "string" if isinstance(arg, str) else "number"
            if got != want:
                raise self.fail(f"argument {n} of {name} must be {_A[want]}, got {_A[got]}", at)
        key = (name, tuple(args))
        if spec.check is not None and (problem := spec.check(key[1])):
            raise self.fail(f"{_call_key(*key)}: {problem}", arg_pos[0] if arg_pos else pos)
        self.calls[key] = None
        return self.node(spec.returns, _call(name, key[1], _NORMALIZE[spec.returns]), pos)


def _foreign(name: str) -> bool:
    """Python's words (``lambda``, ``import``, ``if``, ``in``) and ``none``/``null``."""
    return keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in ("none", "null")


def _arguments(n: int) -> str:
    return f"{n} argument" if n == 1 else f"{n} arguments"


# --------------------------------------------------------------------------- compiled nodes


def _no_get(name: str) -> object:
    raise AssertionError("a constant read a signal")


def _no_call(name: str, args: tuple[Arg, ...]) -> object:
    raise AssertionError("a constant called a function")


def _signal(name: str, normalize: Callable[[object], Value]) -> _Fn:
    return lambda get, call: normalize(get(name))


def _call(name: str, args: tuple[Arg, ...], normalize: Callable[[object], Value]) -> _Fn:
    return lambda get, call: normalize(call(name, args))


def _negate(a: _Fn) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        x = a(get, call)
        return None if x is None else not x

    return fn


def _minus(a: _Fn) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        x = a(get, call)
        return None if x is None else -x  # type: ignore[operator]

    return fn


def _all_of(parts: tuple[_Fn, ...]) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        unknown = False
        for part in parts:
            x = part(get, call)
            if x is False:
                return False
            if x is None:
                unknown = True
        return None if unknown else True

    return fn


def _any_of(parts: tuple[_Fn, ...]) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        unknown = False
        for part in parts:
            x = part(get, call)
            if x is True:
                return True
            if x is None:
                unknown = True
        return None if unknown else False

    return fn


def _compare(op: Callable[[object, object], bool], a: _Fn, b: _Fn) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        x = a(get, call)
        if x is None:
            return None
        y = b(get, call)
        return None if y is None else op(x, y)

    return fn


def _arith(op: Callable[[float, float], float], a: _Fn, b: _Fn) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        x = a(get, call)
        if x is None:
            return None
        y = b(get, call)
        if y is None:
            return None
        r = op(x, y)  # type: ignore[arg-type]
        return None if r != r else r  # NaN: inf - inf, 0 * inf

    return fn


def _divide(a: _Fn, b: _Fn) -> _Fn:
    def fn(get: _Getter, call: _Caller) -> Value:
        x = a(get, call)
        if x is None:
            return None
        y = b(get, call)
        if y is None or y == 0:
            return None
        r = x / y  # type: ignore[operator]
        return None if r != r else r

    return fn
