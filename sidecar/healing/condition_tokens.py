"""Reading a condition's text into tokens, and the error that points at a column of it.

:func:`tokenize` yields tokens on demand, so that the leftmost problem is the one reported;
text from other languages (``&&``, ``=``, single quotes, ...) is refused with what to write
instead. :class:`ConditionError` is what the tokenizer and the parser
(:mod:`~mlwarden.sidecar.healing.condition_parser`) raise. The grammar is in
:mod:`mlwarden.sidecar.healing.conditions`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from typing import Literal, NamedTuple

from mlwarden.middleware.errors import ConfigError

__all__ = ["NAME", "ConditionError", "Token", "tokenize"]

#: A signal or function name.
NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_OPERATORS = ("<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",")
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


class Token(NamedTuple):
    kind: Literal["number", "string", "name", "op", "end"]
    value: str | float
    pos: int
    source: str  # the token as written, for messages


def tokenize(text: str) -> Iterator[Token]:
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
            yield Token("number", value, i, m.group())
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
            yield Token("string", text[i + 1 : end], i, text[i : end + 1])
            i = end + 1
        elif (m := _WORD.match(text, i)) and ch.isascii():
            word = m.group()
            if not NAME.match(word):
                raise ConditionError(
                    f"names are lowercase: write {word.lower()!r}, not {word!r}", i + 1, text
                )
            yield Token("name", word, i, word)
            i = m.end()
        elif (op := next((o for o in _OPERATORS if text.startswith(o, i)), None)) and not (
            text.startswith(("**", "//"), i)
        ):
            yield Token("op", op, i, op)
            i += len(op)
        else:
            bad, why = next(((b, w) for b, w in _REJECTED if text.startswith(b, i)), (ch, ""))
            if not why:
                raise ConditionError(f"unexpected character {_describe(ch)}", i + 1, text)
            raise ConditionError(f"unsupported {bad!r} ({why})", i + 1, text)
    while True:
        yield Token("end", "", n, "")


def _describe(ch: str) -> str:
    if ch.isascii() and ch.isprintable():
        return repr(ch)
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')})"
