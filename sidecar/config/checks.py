"""Value checks: each takes a raw value and returns it normalised, or raises :class:`Bad`.

Normalised means lists become tuples and whole numbers floats where a float is expected.
Checks accept their own output, since a block's ``__post_init__`` runs them again on direct
construction. Every message has one shape, ``expected <what is allowed>, got <the value>``
(the key is prefixed by whoever collects the problem); rules between keys say
``must be <relation> (<the other value>), got <the value>``.
"""

from __future__ import annotations

import difflib
import math
import re
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Bad",
    "Check",
    "boolean",
    "host_name",
    "http_url",
    "number",
    "one_of",
    "optional",
    "pem_file",
    "port_number",
    "redis_address",
    "seconds",
    "secret_token",
    "sequence",
    "show",
    "status_codes",
    "string",
    "text",
    "upstream_names",
    "url_path",
    "words",
]

_HOST_RE = re.compile(r"[A-Za-z0-9_.:\[\]-]+")
_MIN_TOKEN_CHARS = 16

Check = Callable[[Any], Any]


class Bad(Exception):
    """One value is invalid; the message says what was expected and what was found."""


def show(value: Any) -> str:
    """The value as a message quotes it, cut short: a message is read, not a data dump."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bound(x: float) -> str:
    return f"{x:_}" if isinstance(x, int) and x >= 100_000 else f"{x:g}"


def number(
    kind: type[int] | type[float],
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    unit: str = "",
) -> Check:
    """A whole number (``int``) or a number (``float``) within the bounds given."""
    bounds = [
        f"> {_bound(gt)}" if gt is not None else "",
        f">= {_bound(ge)}" if ge is not None else "",
        f"< {_bound(lt)}" if lt is not None else "",
        f"<= {_bound(le)}" if le is not None else "",
    ]
    noun = "a whole number" if kind is int else "a number"
    want = " ".join(p for p in (noun + unit, " and ".join(b for b in bounds if b)) if p)

    def check(value: Any) -> Any:
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if (
            not ok_type
            or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise Bad(f"expected {want}, got {show(value)}")
        if (
            (gt is not None and value <= gt)
            or (ge is not None and value < ge)
            or (lt is not None and value >= lt)
            or (le is not None and value > le)
        ):
            raise Bad(f"expected {want}, got {show(value)}")
        try:
            return kind(value)
        except OverflowError:  # an int beyond float's range, where there is no upper bound
            raise Bad(f"expected {want}, got an integer too large") from None

    return check


def seconds(**bounds: float) -> Check:
    """A duration in seconds (a float) within the bounds given."""
    return number(float, unit=" of seconds", **bounds)


def optional(check: Check) -> Check:
    """``None`` (the setting is off or derived), or a value that passes ``check``."""

    def optional_check(value: Any) -> Any:
        return None if value is None else check(value)

    return optional_check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {show(value)}")
    return value


def port_number(value: Any) -> int:
    return number(int, ge=0, le=65535)(value)  # 0: an OS-assigned port (tests)


def host_name(value: Any) -> str:
    if not isinstance(value, str) or not _HOST_RE.fullmatch(value):
        raise Bad(f"expected a host name or IP address such as 0.0.0.0, got {show(value)}")
    return value


def url_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " ?#"):
        raise Bad(f"expected a URL path starting with '/', without query, got {show(value)}")
    return value


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise Bad(f"expected a non-empty string, got {show(value)}")
    return value


def string(value: Any) -> str:
    """Any string, the empty one included (an unset credential)."""
    if not isinstance(value, str):
        raise Bad(f"expected a string, got {show(value)}")
    return value


def http_url(value: Any) -> str:
    want = "expected an http(s) URL with a host"
    if not isinstance(value, str):
        raise Bad(f"{want}, got {show(value)}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise Bad(f"{want}, got {show(value)} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Bad(f"{want}, got {show(value)}")
    if parts.username is not None or parts.password is not None:
        # The URL lands in logs and /-/status; credentials there would leak.
        raise Bad("must not contain credentials (user:password@)")
    if parts.query or parts.fragment:
        raise Bad(f"{want} and no query or fragment, got {show(value)}")
    return value


def pem_file(value: Any) -> str:
    """The path of a readable PEM file of CA certificates (loaded once to prove it)."""
    if not isinstance(value, str) or not value:
        raise Bad(f"expected the path of a PEM file of CA certificates, got {show(value)}")
    try:
        ssl.create_default_context(cafile=value)
    except FileNotFoundError:
        raise Bad(f"no such file: {value!r}") from None
    except (OSError, ssl.SSLError) as exc:
        raise Bad(f"{value!r} is not a readable PEM file of CA certificates ({exc})") from None
    return value


def redis_address(value: Any) -> str | None:
    # Never echo the value: it may hold a password.
    if value is None:
        return None
    want = "expected a redis://, rediss:// or unix:// URL"
    if not isinstance(value, str):
        raise Bad(f"{want}, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError:
        raise Bad(f"{want} (value hidden: it may hold a password)") from None
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise Bad(f"{want} (value hidden: it may hold a password)")
    return value


def secret_token(value: Any) -> str:
    # Never echo the value: it is a secret.
    if value == "":
        return ""
    if (
        not isinstance(value, str)
        or len(value) < _MIN_TOKEN_CHARS
        or any(c.isspace() for c in value)
    ):
        raise Bad(
            f"expected a string of at least {_MIN_TOKEN_CHARS} characters without "
            f"whitespace (value hidden)"
        )
    return value


def sequence(value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise Bad(f"expected a list of {what}, got {show(value)}")
    return tuple(value)


def upstream_names(value: Any) -> tuple[str, ...]:
    """A list of upstream names (whether each is declared is checked against the upstreams)."""
    items = sequence(value, "upstream names")
    bad = [i for i in items if not isinstance(i, str)]
    if bad:
        raise Bad(f"expected a list of upstream names, got {', '.join(map(repr, bad))}")
    return items


def status_codes(low: int, high: int) -> Check:
    """A list of HTTP status codes within ``low..high``, sorted, each once."""

    def check(value: Any) -> tuple[int, ...]:
        items = sequence(value, f"status codes {low}-{high}")
        bad = [
            c
            for c in items
            if not isinstance(c, int) or isinstance(c, bool) or not low <= c <= high
        ]
        if bad:
            raise Bad(f"expected status codes {low}-{high}, got {', '.join(map(repr, bad))}")
        return tuple(sorted(set(items)))

    return check


def words(allowed: frozenset[str], *, upper: bool = False) -> Check:
    """A list of words from ``allowed`` (or Envoy's comma-separated string), each once."""

    def check(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [w.strip() for w in value.split(",")]
        items = sequence(value, "strings")
        norm = [i.upper() if upper and isinstance(i, str) else i for i in items]
        bad = [i for i in norm if i not in allowed]
        if bad:
            hints = []
            for b in bad:
                close = (
                    difflib.get_close_matches(b, sorted(allowed), n=1) if isinstance(b, str) else []
                )
                hints.append(f"{b!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise Bad(f"unknown {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")
        return tuple(dict.fromkeys(norm))

    return check


def one_of(allowed: tuple[str, ...]) -> Check:
    """One word of ``allowed``."""

    def check(value: Any) -> str:
        if value not in allowed:
            raise Bad(f"expected one of {', '.join(allowed)}, got {show(value)}")
        return str(value)

    return check
