"""The condition language of the healing policies: parsed and type-checked once, never eval'ed.

A policy's ``condition`` is text such as ``error_rate > 0.05 or p99_latency_seconds > 0.5`` or
``not healthy("v1") and error_rate >= 2 * 0.01``. This module defines the language (its grammar
and the decisions below) and is its public face: import from here. The work is done in three
modules, re-exported here: the tokenizer (:mod:`~mlwarden.sidecar.healing.condition_tokens`),
the parser with the checks made when the configuration loads
(:mod:`~mlwarden.sidecar.healing.condition_parser`), and the evaluation on each tick of the
healing loop (:mod:`~mlwarden.sidecar.healing.condition_eval`).

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

from mlwarden.sidecar.healing.condition_eval import Condition, Explanation, Kind
from mlwarden.sidecar.healing.condition_parser import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_NODES,
    FunctionSpec,
    parse_condition,
)
from mlwarden.sidecar.healing.condition_tokens import ConditionError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NODES",
    "Condition",
    "ConditionError",
    "Explanation",
    "FunctionSpec",
    "Kind",
    "parse_condition",
]
