"""Parsing a condition: recursive descent that type-checks and compiles each node as it goes.

:func:`parse_condition` checks the names it is given, bounds the text, and runs the parser over
the tokens of :mod:`~mlwarden.sidecar.healing.condition_tokens`; each node becomes a closure of
:mod:`~mlwarden.sidecar.healing.condition_eval`, constants folded. Every problem is a
:class:`~mlwarden.sidecar.healing.condition_tokens.ConditionError` naming its column. The
grammar and the decisions behind it are in :mod:`mlwarden.sidecar.healing.conditions`.
"""

from __future__ import annotations

import difflib
import keyword
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from mlwarden.sidecar.healing.condition_eval import (
    NORMALIZE,
    Arg,
    ArgKind,
    Condition,
    Fn,
    Kind,
    all_of,
    any_of,
    arith,
    call_key,
    compare,
    compiled_call,
    compiled_signal,
    constant,
    divide,
    minus,
    negate,
)
from mlwarden.sidecar.healing.condition_tokens import NAME, ConditionError, Token, tokenize

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "MAX_NODES", "FunctionSpec", "parse_condition"]

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_NODES = 200

_KEYWORDS = frozenset({"and", "or", "not", "true", "false"})
_COMPARE = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_A = {"bool": "a boolean", "number": "a number", "string": "a string"}


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
        if not isinstance(name, str) or not NAME.match(name) or name in _KEYWORDS:
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


_VARIABLE = object()  # the value of a node that is not a constant


class _Expr(NamedTuple):
    kind: Kind
    fn: Fn
    depth: int
    pos: int
    const: object = _VARIABLE


class _Parser:
    """Recursive descent that type-checks and compiles each node into a closure as it goes."""

    def __init__(self, text: str, kinds: dict[str, Kind], specs: dict[str, FunctionSpec]) -> None:
        self.text = text
        self.kinds = kinds
        self.specs = specs
        self.stream = tokenize(text)
        self.tokens: list[Token] = []
        self.i = 0
        self.nesting = 0
        self.nodes = 0
        self.used: set[str] = set()
        self.calls: dict[tuple[str, tuple[Arg, ...]], None] = {}

    def fail(self, detail: str, pos: int) -> ConditionError:
        return ConditionError(detail, pos + 1, self.text)

    def peek(self) -> Token:
        if self.i == len(self.tokens):
            self.tokens.append(next(self.stream))
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.peek()
        self.i += 1
        return token

    def at(self, *values: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "name") and token.value in values

    def node(self, kind: Kind, fn: Fn, pos: int, *children: _Expr) -> _Expr:
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
            return _Expr(kind, constant(value), depth, pos, value)
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

    def show(self, token: Token) -> str:
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
        fn = any_of(fns) if word == "or" else all_of(fns)
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
        return self.node("bool", negate(operand.fn), op.pos, operand)

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
            "bool", compare(_COMPARE[op.value], left.fn, right.fn), op.pos, left, right
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
                divide(left.fn, right.fn)
                if op.value == "/"
                else arith(_ARITH[str(op.value)], left.fn, right.fn)
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
        return self.node("number", minus(operand.fn), op.pos, operand)

    def primary(self) -> _Expr:
        token = self.take()
        if token.kind == "number":
            return self.node("number", constant(token.value), token.pos)._replace(const=token.value)
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
                return self.node("bool", constant(value), token.pos)._replace(const=value)
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
            return self.node(
                self.kinds[name], compiled_signal(name, NORMALIZE[self.kinds[name]]), pos
            )
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
            raise self.fail(f"{call_key(*key)}: {problem}", arg_pos[0] if arg_pos else pos)
        self.calls[key] = None
        return self.node(spec.returns, compiled_call(name, key[1], NORMALIZE[spec.returns]), pos)


def _foreign(name: str) -> bool:
    """Python's words (``lambda``, ``import``, ``if``, ``in``) and ``none``/``null``."""
    return keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in ("none", "null")


def _arguments(n: int) -> str:
    return f"{n} argument" if n == 1 else f"{n} arguments"


def _no_get(name: str) -> object:
    raise AssertionError("a constant read a signal")


def _no_call(name: str, args: tuple[Arg, ...]) -> object:
    raise AssertionError("a constant called a function")
