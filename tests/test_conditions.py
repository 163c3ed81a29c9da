"""The policies' condition language: grammar, types, Kleene logic, messages, hostile text."""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.healing.conditions import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_NODES,
    Condition,
    ConditionError,
    Explanation,
    FunctionSpec,
    parse_condition,
)

UPSTREAMS = ("v1", "v2", "stable")
SIGNALS = {
    "error_rate": "number",
    "p99_latency_seconds": "number",
    "drift_score": "number",
    "accuracy": "number",
    "labelled_samples": "number",
    "a": "number",
    "b": "number",
    "c": "number",
    "p": "bool",
    "q": "bool",
    "r": "bool",
}


def known_upstream(args: tuple[Any, ...]) -> str | None:
    return None if args[0] in UPSTREAMS else f"unknown upstream (known: {', '.join(UPSTREAMS)})"


FUNCTIONS = {
    "breaker_open": FunctionSpec(("string",), "bool", check=known_upstream),
    "healthy": FunctionSpec(("string",), "bool", check=known_upstream),
    "quantile": FunctionSpec(("string", "number"), "number"),
}


def parse(text: str) -> Condition:
    return parse_condition(text, signals=SIGNALS, functions=FUNCTIONS)


def ev(
    text: str, functions: dict[str, Callable[..., Any]] | None = None, **values: Any
) -> bool | None:
    return parse(text).evaluate(values, functions)


def error(text: Any) -> ConditionError:
    with pytest.raises(ConditionError) as info:
        parse_condition(text, signals=SIGNALS, functions=FUNCTIONS)
    return info.value


# --------------------------------------------------------------------------- the policy examples


@pytest.mark.parametrize(
    ("text", "values", "functions", "expected"),
    [
        (
            "error_rate > 0.05 or p99_latency_seconds > 0.5",
            {"error_rate": 0.01, "p99_latency_seconds": 0.7},
            {},
            True,
        ),
        (
            "error_rate > 0.05 or p99_latency_seconds > 0.5",
            {"error_rate": 0.01, "p99_latency_seconds": 0.2},
            {},
            False,
        ),
        ("drift_score > 0.2", {"drift_score": 0.25}, {}, True),
        ('breaker_open("v2")', {}, {"breaker_open": lambda name: name == "v2"}, True),
        (
            "accuracy < 0.9 and labelled_samples >= 200",
            {"accuracy": 0.85, "labelled_samples": 200},
            {},
            True,
        ),
        (
            "accuracy < 0.9 and labelled_samples >= 200",
            {"accuracy": 0.85, "labelled_samples": 150},
            {},
            False,
        ),
        (
            'not healthy("v1") and error_rate >= 2 * 0.01',
            {"error_rate": 0.02},
            {"healthy": lambda name: False},
            True,
        ),
        (
            'not healthy("v1") and error_rate >= 2 * 0.01',
            {"error_rate": 0.02},
            {"healthy": lambda name: True},
            False,
        ),
    ],
)
def test_policy_examples_evaluate(
    text: str, values: dict[str, Any], functions: dict[str, Any], expected: bool
) -> None:
    assert parse(text).evaluate(values, functions) is expected


def test_condition_reports_text_signals_and_calls_in_order_without_duplicates() -> None:
    cond = parse(
        'healthy("v1") and not breaker_open("v2") and healthy("v1") '
        'or quantile("latency", 0.99) > a + a'
    )
    assert cond.text.startswith('healthy("v1")')
    assert cond.signals == frozenset({"a"})
    assert cond.function_calls == (
        ("healthy", ("v1",)),
        ("breaker_open", ("v2",)),
        ("quantile", ("latency", 0.99)),
    )
    assert repr(cond) == f"Condition({cond.text!r})"


# --------------------------------------------------------------------------- precedence, grammar


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("p or q and r", {"p": True, "q": False, "r": False}, True),  # p or (q and r)
        ("(p or q) and r", {"p": True, "q": False, "r": False}, False),
        ("not p and q", {"p": True, "q": True}, False),  # (not p) and q
        ("not (p and q)", {"p": True, "q": False}, True),
        ("not a > 1", {"a": 0}, True),  # not (a > 1)
        ("not not p", {"p": True}, True),
        ("a + b * c == 7", {"a": 1, "b": 2, "c": 3}, True),
        ("(a + b) * c == 9", {"a": 1, "b": 2, "c": 3}, True),
        ("a - b - c == -4", {"a": 1, "b": 2, "c": 3}, True),  # left-associative
        ("a / b / c == 2", {"a": 12, "b": 2, "c": 3}, True),
        ("-a * -b == 6", {"a": 2, "b": 3}, True),
        ("- -a == a", {"a": 2.5}, True),
        ("-(a - b) == 1", {"a": 2, "b": 3}, True),
        ("a+b>c", {"a": 1, "b": 1, "c": 1.5}, True),  # no spaces needed
        ("p == (a > 1)", {"p": True, "a": 2}, True),
        ("p != q", {"p": True, "q": False}, True),
        ("true and not false", {}, True),
        ("a >= 1e-3 and a < .5e1 and a == 2.", {"a": 2}, True),
    ],
)
def test_precedence_and_grammar(text: str, values: dict[str, Any], expected: bool) -> None:
    assert parse(text).evaluate(values) is expected


@pytest.mark.parametrize(
    ("op", "x", "y"),
    [
        (op, x, y)
        for op in ("<", "<=", ">", ">=", "==", "!=")
        for x, y in ((1, 2), (2, 2), (3, 2), (-0.5, 0.25))
    ],
)
def test_every_comparison_matches_its_operator(op: str, x: float, y: float) -> None:
    python = {
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
        "==": operator.eq,
        "!=": operator.ne,
    }[op]
    assert ev(f"a {op} b", a=x, b=y) is python(x, y)


def test_newlines_and_tabs_are_whitespace_and_columns_count_through_them() -> None:
    assert ev("error_rate > 0.05\n  or\tp", error_rate=0.1, p=None) is True
    assert error("p or\n  nope").column == 8


def test_constant_arithmetic_is_folded() -> None:
    assert parse("1 + 2 * 3 == 7").evaluate({}) is True
    assert parse("error_rate > 2 * 0.01").evaluate({"error_rate": 0.03}) is True


# --------------------------------------------------------------------------- Kleene logic

K = (True, False, None)


def kleene_and(x: bool | None, y: bool | None) -> bool | None:
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


@pytest.mark.parametrize(("x", "y"), [(x, y) for x in K for y in K])
def test_and_follows_kleene(x: bool | None, y: bool | None) -> None:
    assert ev("p and q", p=x, q=y) is kleene_and(x, y)


@pytest.mark.parametrize(("x", "y"), [(x, y) for x in K for y in K])
def test_or_follows_kleene(x: bool | None, y: bool | None) -> None:
    expected = True if True in (x, y) else (None if None in (x, y) else False)
    assert ev("p or q", p=x, q=y) is expected


@pytest.mark.parametrize(("x", "expected"), [(True, False), (False, True), (None, None)])
def test_not_follows_kleene(x: bool | None, expected: bool | None) -> None:
    assert ev("not p", p=x) is expected


@pytest.mark.parametrize(
    "text",
    [
        "a > 1",
        "a + 1 > 0",
        "-a < 0",
        "a * 0 == 0",
        "1 / a > 0",
        "a == b",
        "a != a",
    ],
)
def test_an_unknown_number_makes_arithmetic_and_comparisons_unknown(text: str) -> None:
    assert ev(text, a=None, b=1) is None


def test_a_missing_signal_is_unknown_and_a_decisive_operand_still_decides() -> None:
    assert ev("error_rate > 0.05") is None
    assert ev("error_rate > 0.05 or p", p=True) is True
    assert ev("error_rate > 0.05 and p", p=False) is False


@pytest.mark.parametrize("value", [float("nan"), "0.5", b"1", [1], object(), True])
def test_a_number_signal_of_the_wrong_kind_or_nan_is_unknown(value: Any) -> None:
    assert ev("a > 0", a=value) is None


@pytest.mark.parametrize("value", [1, 0.5, 1.0, "yes", np.bool_(True)])
def test_a_bool_signal_must_be_a_python_bool(value: Any) -> None:
    assert ev("p", p=value) is None


@pytest.mark.parametrize("value", [np.float64(2.0), np.int64(2), np.float32(2.0), 2])
def test_numpy_and_int_numbers_are_numbers(value: Any) -> None:
    assert ev("a == 2", a=value) is True


def test_division_by_zero_at_evaluation_is_unknown_not_an_exception() -> None:
    assert ev("a / b > 1", a=1, b=0) is None
    assert ev("a / b > 1", a=0, b=0.0) is None
    assert ev("a / b > 1 or p", a=1, b=0, p=True) is True
    assert ev("a / (b - b) > 1", a=1, b=3) is None


def test_overflow_is_infinite_and_nan_results_are_unknown() -> None:
    assert ev("a * a > 1", a=1e200) is True
    assert ev("a * a - a * a == 0", a=1e200) is None  # inf - inf
    assert ev("a / a > 0", a=math.inf) is None
    assert ev("a > 0", a=10**400) is None  # no float holds it


def test_values_may_be_a_function_and_only_declared_names_are_asked() -> None:
    asked: list[str] = []

    def values(name: str) -> float:
        asked.append(name)
        return 1.0

    assert parse("a + b > c").evaluate(values) is True
    assert asked == ["a", "b", "c"]


def test_function_implementations_get_their_literal_arguments() -> None:
    calls: list[tuple[Any, ...]] = []

    def quantile(*args: Any) -> float:
        calls.append(args)
        return 0.4

    assert ev('quantile("latency", 0.99) < 0.5', {"quantile": quantile}) is True
    assert ev('quantile("latency", -1) < 0.5', {"quantile": quantile}) is True
    assert calls == [("latency", 0.99), ("latency", -1.0)]


def test_a_missing_implementation_or_a_wrong_result_kind_is_unknown() -> None:
    assert ev('breaker_open("v2")') is None
    assert ev('breaker_open("v2")', {"breaker_open": lambda name: 1}) is None
    assert ev('quantile("x", 1) > 0', {"quantile": lambda *a: "high"}) is None
    assert ev('quantile("x", 1) > 0', {"quantile": lambda *a: None}) is None


def test_an_implementation_error_propagates() -> None:
    def broken(name: str) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ev('healthy("v1")', {"healthy": broken})


# --------------------------------------------------------------------------- explain


def test_explain_records_each_value_read_with_its_verdict() -> None:
    cond = parse('not healthy("v1") and error_rate >= 0.02 and quantile("lat", 2) > 0.1')
    got = cond.explain(
        {"error_rate": 0.5}, {"healthy": lambda n: False, "quantile": lambda n, q: np.float64(0.3)}
    )
    assert got == Explanation(
        True, {'healthy("v1")': False, "error_rate": 0.5, 'quantile("lat", 2)': 0.3}
    )
    assert type(got.values['quantile("lat", 2)']) is float


def test_explain_skips_operands_that_could_not_change_the_verdict() -> None:
    cond = parse("error_rate > 0.05 or p99_latency_seconds > 0.5")
    assert cond.explain({"error_rate": 0.1}) == (True, {"error_rate": 0.1})
    assert cond.explain({"p99_latency_seconds": 0.1}) == (
        None,
        {"error_rate": None, "p99_latency_seconds": 0.1},
    )


def test_explain_reports_unusable_values_as_unknown() -> None:
    assert parse("a > 1").explain({"a": float("nan")}) == (None, {"a": None})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "the condition is empty"),
        ("   ", 1, "the condition is empty"),
        ("error_rate", 1, "must be true or false, got a number"),
        ("eror_rate > 0.05", 1, "unknown signal 'eror_rate' (did you mean 'error_rate'?)"),
        ("p or zzz", 6, "unknown signal 'zzz' (known: a, accuracy, b, c, drift_score"),
        ('breaker_opn("v2")', 1, "unknown function 'breaker_opn' (did you mean 'breaker_open'?)"),
        ('breaker_open("v9")', 14, 'breaker_open("v9"): unknown upstream (known: v1, v2, stable)'),
        ("healthy", 1, "'healthy' is a function: call it as healthy(...)"),
        ("error_rate(1) > 0", 1, "'error_rate' is a signal, not a function"),
        ("healthy(1)", 9, "argument 1 of healthy must be a string, got a number"),
        ('quantile("x", "y") > 1', 15, "argument 2 of quantile must be a number, got a string"),
        ('healthy("v1", "v2")', 15, "healthy takes 1 argument, got more"),
        ("healthy()", 9, "healthy takes 1 argument, got 0"),
        ('healthy("v1" "v2")', 14, "expected ',' or ')' in the call of healthy"),
        ("healthy(a)", 9, "arguments of healthy are literal strings or numbers, found 'a'"),
        ('healthy("v1"', 13, "expected ',' or ')'"),
        ("error_rate > true", 14, "'>' compares numbers, got a boolean"),
        ("p < 1", 1, "'<' compares numbers, got a boolean"),
        ("p == 1", 3, "'==' compares a boolean with a number"),
        ("a and p", 1, "'and' needs booleans on both sides, got a number"),
        ("p or a", 6, "'or' needs booleans on both sides, got a number"),
        ("not a", 5, "'not' needs a boolean, got a number"),
        ("-p", 2, "unary '-' needs a number, got a boolean"),
        ("p + 1 > 0", 1, "'+' needs numbers on both sides, got a boolean"),
        ('"v1" == a', 1, "a string is allowed only as a function argument"),
        ("a < b < c", 7, "comparisons do not chain"),
        ("a > 1 / 0", 7, "division by zero"),
        ("a > 1 / (2 - 2)", 7, "division by zero"),
        ("1e308 * 10 - 1e308 * 10 > a", 12, "arithmetic on constants has no finite result"),
        ("a > 1e999", 5, "number '1e999' is out of range"),
        ("a > 1.2.3", 5, "malformed number '1.2.3'"),
        ("a > 5ms", 5, "malformed number '5ms'"),
        ("a > 0x10", 5, "malformed number '0x10'"),
        ("(p", 3, "expected ')' to close the '(' at column 1, found end of text"),
        ("p)", 2, "unexpected ')' after a complete expression"),
        ("p or", 5, "expected a value, found end of text"),
        ("a > ", 5, "expected a value, found end of text"),
        ("p p", 3, "unexpected 'p' after a complete expression"),
        ("True", 1, "names are lowercase: write 'true', not 'True'"),
        ("p AND q", 3, "names are lowercase: write 'and'"),
        ("p && q", 3, "unsupported '&&' (write 'and')"),
        ("p || q", 3, "unsupported '||' (write 'or')"),
        ("!p", 1, "unsupported '!' (write 'not')"),
        ("a = 1", 3, "unsupported '=' (write '==' to compare)"),
        ("a ** 2 > 1", 3, "unsupported '**'"),
        ("a // 2 > 1", 3, "unsupported '//'"),
        ("a % 2 > 1", 3, "unsupported '%'"),
        ("healthy('v1')", 9, 'unsupported "\'" (strings take double quotes)'),
        ('healthy("v1)', 9, "unterminated string"),
        ('healthy("v\\"1")', 11, "backslashes are not supported in strings"),
        ('healthy("vé")', 11, "strings hold printable ASCII only, found 'é'"),
        ("none", 1, "'none' is not part of the condition language"),
        ("a if p else b", 3, "'if' is not part of the condition language"),
        ("a in b", 3, "'in' is not part of the condition language"),
    ],
)
def test_errors_name_the_column_and_the_problem(text: str, column: int, fragment: str) -> None:
    exc = error(text)
    assert exc.column == column, exc.problem
    assert fragment in exc.detail, exc.detail


def test_the_message_shows_the_text_with_a_caret_under_the_column() -> None:
    exc = error("error_rate > 0.05 or eror_rate > 1")
    assert exc.problem == (
        "column 22: unknown signal 'eror_rate' (did you mean 'error_rate'?)\n"
        "    error_rate > 0.05 or eror_rate > 1\n"
        "                         ^"
    )
    assert str(exc) == "invalid condition: " + exc.problem
    assert exc.problems == (exc.problem,)
    assert exc.text == "error_rate > 0.05 or eror_rate > 1"


def test_a_condition_error_is_a_config_error_that_a_loader_can_collect() -> None:
    exc = error("p and")
    assert isinstance(exc, ConfigError)
    collected = ConfigError([f"policies.rollback.condition: {exc.problem}"])
    assert "policies.rollback.condition: column 6: expected a value" in str(collected)


def test_the_caret_excerpt_of_a_long_text_is_a_window_with_ellipses() -> None:
    text = "p and " * 100 + "nope"
    exc = error(text)
    _, line, caret = exc.problem.split("\n")
    assert line.startswith("    ...") and len(line) < 90
    assert line[caret.index("^") :].startswith("nope")


def test_suggestions_offer_several_close_names() -> None:
    with pytest.raises(ConditionError) as info:
        parse_condition("latency_p9 > 1", signals=["latency_p99", "latency_p95", "errors"])
    assert "did you mean 'latency_p99' or 'latency_p95'?" in info.value.detail


def test_a_function_check_runs_at_parse_time_once_per_call_site() -> None:
    seen: list[tuple[Any, ...]] = []

    def check(args: tuple[Any, ...]) -> str | None:
        seen.append(args)
        return None

    functions = {"healthy": FunctionSpec(("string",), "bool", check=check)}
    parse_condition('healthy("v1") or healthy("v2")', signals=(), functions=functions)
    assert seen == [("v1",), ("v2",)]


def test_signals_given_as_a_plain_collection_are_numbers() -> None:
    cond = parse_condition("x > 1 and y < 2", signals={"x", "y"})
    assert cond.evaluate({"x": 2, "y": 1}) is True
    with pytest.raises(ConditionError, match="no functions are available"):
        parse_condition("f(1)", signals={"x"})


@pytest.mark.parametrize(
    ("signals", "functions"),
    [
        ({"Bad": "number"}, {}),
        ({"and": "number"}, {}),
        ({"x": "string"}, {}),
        ({}, {"my-fn": FunctionSpec((), "bool")}),
    ],
)
def test_invalid_declarations_are_programming_errors(signals: Any, functions: Any) -> None:
    with pytest.raises(ValueError, match=r"expected kind|not a valid"):
        parse_condition("true", signals=signals, functions=functions)


@pytest.mark.parametrize(("params", "returns"), [(("text",), "bool"), ((), "string")])
def test_function_specs_are_validated(params: Any, returns: Any) -> None:
    with pytest.raises(ValueError):
        FunctionSpec(params, returns)


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("value", [None, 1, True, ["p"], b"p"])
def test_a_condition_that_is_not_text_is_a_condition_error(value: Any) -> None:
    assert "expected the condition as text" in error(value).detail


@pytest.mark.parametrize(
    "text",
    [
        "(" * 10_000 + "p" + ")" * 10_000,
        "p or " * 20_000 + "p",
        "x" * 100_000,
    ],
)
def test_huge_text_is_rejected_before_parsing(text: str) -> None:
    exc = error(text)
    assert exc.column == MAX_LENGTH + 1
    assert "too long" in exc.detail and len(exc.problem) < 300


@pytest.mark.parametrize(
    "text",
    [
        "(" * (MAX_DEPTH + 1) + "p" + ")" * (MAX_DEPTH + 1),
        "(" * 999 + "p" + ")" * 999,
        "not " * 400 + "p",
        "-" * 1000 + "a > 0",
        " + ".join(["a"] * 40) + " > 0",
    ],
)
def test_deep_nesting_is_rejected_before_the_parser_recurses(text: str) -> None:
    assert "nested too deeply" in error(text).detail


def test_nesting_up_to_the_limit_parses() -> None:
    assert parse("(" * MAX_DEPTH + "p" + ")" * MAX_DEPTH).evaluate({"p": True}) is True
    assert parse("not " * (MAX_DEPTH - 1) + "p").evaluate({"p": True}) is False


def test_too_many_terms_are_rejected() -> None:
    assert parse(" or ".join(["p"] * 150)).evaluate({"p": None}) is None
    assert f"more than {MAX_NODES} terms" in error(" or ".join(["p"] * (MAX_NODES + 1))).detail


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ('__import__("os")', 1),
        ('__import__("os").system("ls")', 1),
        ("a.b > 1", 2),
        ("().__class__", 2),
        ("a[0] > 1", 2),
        ("lambda: p", 1),
        ("p; p", 2),
        ("p \\\n or q", 3),
        ("a > \u0661", 5),  # ARABIC-INDIC DIGIT ONE
        ("a > \uff11", 5),  # FULLWIDTH DIGIT ONE
        ("a > .\u0661", 5),  # a dot, then ARABIC-INDIC DIGIT ONE
        ("a > 1\u0661", 5),
        ("\uff41 > 1", 1),  # FULLWIDTH LATIN SMALL LETTER A
        ("p\u200b", 2),  # ZERO WIDTH SPACE
        ("p or\u00a0q", 5),  # NO-BREAK SPACE
        ("\u202ep", 1),  # RIGHT-TO-LEFT OVERRIDE
        ('f"{p}"', 1),
        ("{p}", 1),
        ("p # comment", 3),
        ("`p`", 1),
        ("a @ b", 3),
        ("p\x00", 2),
        ('eval("1")', 1),
        ("a > 1_000", 5),
    ],
)
def test_hostile_text_is_a_clean_condition_error(text: str, column: int) -> None:
    exc = error(text)
    assert exc.column == column, exc.problem
    assert all(ch.isprintable() for line in exc.problem.split("\n") for ch in line)


# --------------------------------------------------------------------------- randomized


PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7}
LITERALS = {"1": 1.0, "2.5": 2.5, "0.5": 0.5, "1e-3": 0.001, "3": 3.0, ".25": 0.25, "0": 0.0}
CMP = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}
Tree = tuple[Any, ...]


def gen_bool(rng: random.Random, depth: int) -> Tree:
    pick = rng.randrange(3, 7) if depth > 0 and rng.random() < 0.8 else rng.randrange(3)
    if pick == 0:
        return ("sig", rng.choice("pqr"))
    if pick == 1:
        value = rng.random() < 0.5
        return ("lit", "true" if value else "false", value)
    if pick == 2:
        return ("call", "g", ("y",))
    if pick == 3:
        return ("not", gen_bool(rng, depth - 1))
    if pick in (4, 5):
        op = "and" if pick == 4 else "or"
        return (op, gen_bool(rng, depth - 1), gen_bool(rng, depth - 1))
    if rng.random() < 0.2:
        return ("cmp", rng.choice(["==", "!="]), gen_bool(rng, depth - 1), gen_bool(rng, depth - 1))
    return ("cmp", rng.choice(list(CMP)), gen_num(rng, depth - 1), gen_num(rng, depth - 1))


def gen_num(rng: random.Random, depth: int) -> Tree:
    pick = rng.randrange(3, 5) if depth > 0 and rng.random() < 0.7 else rng.randrange(3)
    if pick == 0:
        return ("sig", rng.choice("abc"))
    if pick == 1:
        text = rng.choice(list(LITERALS))
        return ("lit", text, LITERALS[text])
    if pick == 2:
        return ("call", "f", ("x", 2.0))
    if pick == 3:
        return ("neg", gen_num(rng, depth - 1))
    return (rng.choice("+-*/"), gen_num(rng, depth - 1), gen_num(rng, depth - 1))


def render(tree: Tree, rng: random.Random) -> tuple[str, int]:
    """Text with the fewest parentheses the precedence allows, plus some redundant ones."""
    kind = tree[0]
    sp = rng.choice([" ", "  ", "\n"])

    def sub(child: Tree, least: int) -> str:
        text, prec = render(child, rng)
        if prec < least or rng.random() < 0.1:
            return f"({text})"
        return text

    if kind in ("sig", "lit"):
        text, prec = tree[1], 8
    elif kind == "call":
        args = ", ".join(f'"{a}"' if isinstance(a, str) else "2" for a in tree[2])
        text, prec = f"{tree[1]}({args})", 8
    elif kind == "not":
        text, prec = f"not{sp}{sub(tree[1], 3)}", 3
    elif kind == "neg":
        text, prec = f"-{sub(tree[1], 7)}", 7
    elif kind == "cmp":
        text, prec = f"{sub(tree[2], 5)}{sp}{tree[1]}{sp}{sub(tree[3], 5)}", 4
    else:
        p = PREC[kind]
        text, prec = f"{sub(tree[1], p)}{sp}{kind}{sp}{sub(tree[2], p + 1)}", p
    return text, prec


def reference(tree: Tree, env: dict[str, Any]) -> Any:
    """An independent evaluator: Kleene logic as min/max over False < unknown < True."""
    kind = tree[0]
    if kind == "sig":
        return env[tree[1]]
    if kind == "lit":
        return tree[2]
    if kind == "call":
        return env[tree[1]]
    rank = {False: 0, None: 1, True: 2}
    back = {0: False, 1: None, 2: True}
    if kind == "not":
        return back[2 - rank[reference(tree[1], env)]]
    if kind in ("and", "or"):
        pick = min if kind == "and" else max
        return back[pick(rank[reference(tree[1], env)], rank[reference(tree[2], env)])]
    if kind == "neg":
        x = reference(tree[1], env)
        return None if x is None else -x
    x = reference(tree[-2], env)
    y = reference(tree[-1], env)
    if x is None or y is None:
        return None
    if kind == "cmp":
        return CMP[tree[1]](x, y)
    if kind == "/":
        if y == 0:
            return None
        result = x / y
    else:
        result = ARITH[kind](x, y)
    return None if math.isnan(result) else result


def children(tree: Tree) -> tuple[Tree, ...]:
    if tree[0] in ("sig", "lit", "call"):
        return ()
    return tree[2:] if tree[0] == "cmp" else tree[1:]


def has_signal(tree: Tree) -> bool:
    return tree[0] in ("sig", "call") or any(map(has_signal, children(tree)))


def constant_zero_divisor(tree: Tree) -> bool:
    if tree[0] == "/" and not has_signal(tree[2]) and reference(tree[2], {}) == 0:
        return True
    return any(map(constant_zero_divisor, children(tree)))


def size(tree: Tree) -> int:
    return 1 + sum(map(size, children(tree)))


RANDOM_SPECS = {
    "f": FunctionSpec(("string", "number"), "number"),
    "g": FunctionSpec(("string",), "bool"),
}
RANDOM_SIGNALS = {
    "a": "number",
    "b": "number",
    "c": "number",
    "p": "bool",
    "q": "bool",
    "r": "bool",
}


@pytest.mark.parametrize("seed", range(40))
def test_random_conditions_agree_with_a_reference_evaluator(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        tree = gen_bool(rng, rng.randrange(2, 7))
        text, _ = render(tree, rng)
        try:
            cond = parse_condition(text, signals=RANDOM_SIGNALS, functions=RANDOM_SPECS)
        except ConditionError as exc:
            if "too large" in exc.detail:
                assert size(tree) > MAX_NODES
            else:
                assert constant_zero_divisor(tree) and "division by zero" in exc.detail, text
            continue
        assert not constant_zero_divisor(tree), text
        for _ in range(6):
            env = {name: rng.choice([None, 0.0, 0.5, 1.0, -2.0, 3.0]) for name in "abcf"}
            env |= {name: rng.choice([None, True, False]) for name in "pqrg"}
            impls = {"f": lambda s, n, env=env: env["f"], "g": lambda s, env=env: env["g"]}
            values = {k: env[k] for k in "abcpqr"}
            expected = reference(tree, env)
            assert cond.evaluate(values, impls) is expected, (text, env)
            assert cond.explain(values, impls).result is expected
