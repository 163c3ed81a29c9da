"""Request and response bodies → JSON documents or text, and the errors of reading them.

Shared by the request formats (:mod:`mlwarden.middleware.payloads`) and the response reader
(:mod:`mlwarden.middleware.predictions`): which content types are JSON, CSV or text, UTF-8 with
or without a BOM, JSON decoded by orjson with the standard library deciding what orjson
refuses, the JSON value types as the readers test them, and :class:`PayloadError` with a
detail short enough for logs and span events.
"""

from __future__ import annotations

import codecs
import json
from functools import lru_cache
from typing import Any

from mlwarden.middleware.errors import PayloadError

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency, but stay correct without it
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "CSV",
    "JSON",
    "MISSING",
    "NUMBER_TYPES",
    "OTHER",
    "SCALAR_TYPES",
    "SEQUENCE_TYPES",
    "TEXT",
    "Missing",
    "decode_text",
    "load_json",
    "media_kind",
    "payload_error",
    "starts_like_json",
]

_DETAIL_MAX = 200  # details end up in logs and span events; a payload must not flood them
_UTF8_BOM = codecs.BOM_UTF8

#: What :func:`media_kind` tells apart (compared with ``is``).
JSON, CSV, TEXT, OTHER = "json", "csv", "text", "other"


class Missing:
    """Marks a value absent from a document (unlike a JSON null, which is present)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()
#: The classes of JSON scalars, of the sequences a reader takes as lists, and of numbers.
SCALAR_TYPES = frozenset({int, float, str, bool, type(None)})
SEQUENCE_TYPES = frozenset({list, tuple})
NUMBER_TYPES = frozenset({int, float})


def payload_error(reason: str, detail: str) -> PayloadError:
    """A :class:`PayloadError` whose detail is cut to a bounded length."""
    if len(detail) > _DETAIL_MAX:
        detail = detail[: _DETAIL_MAX - 3] + "..."
    return PayloadError(reason, detail)


def media_kind(content_type: str | None) -> str:
    """:data:`JSON`, :data:`CSV`, :data:`TEXT` or :data:`OTHER` (no header: JSON)."""
    if content_type is None or content_type == "application/json":
        return JSON
    return _classify_media(content_type)


@lru_cache(maxsize=64)
def _classify_media(content_type: str) -> str:
    # Cached because the same handful of header values repeat on every request; bounded so
    # that a client sending random values only churns the cache.
    media = content_type.partition(";")[0].strip().lower()
    if not media or media in ("application/json", "text/json") or media.endswith("+json"):
        return JSON
    if media in ("text/csv", "application/csv"):
        return CSV
    if media == "text/plain":
        return TEXT
    return OTHER


def starts_like_json(body: bytes) -> bool:
    """Whether a body sent as text looks like a JSON object or list."""
    head = body[:256]
    if head.startswith(_UTF8_BOM):
        head = head[3:]
    return head.lstrip()[:1] in (b"{", b"[")


def decode_text(body: bytes) -> str:
    """The body as UTF-8 text (a BOM dropped); ``not_utf8`` otherwise."""
    if body.startswith(_UTF8_BOM):
        body = body[3:]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise payload_error("not_utf8", f"invalid UTF-8 at byte {exc.start}") from exc


def load_json(body: bytes) -> Any:
    """Decode a JSON body: orjson when it is installed (several times faster than the stdlib,
    and this runs twice per model request), the stdlib for what orjson refuses (NaN and
    Infinity literals, integers beyond 64 bits, nesting past 1024, a BOM, bad UTF-8), so that
    both accept exactly the same payloads."""
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass
    return _loads(decode_text(body))


def _loads(text: str) -> Any:
    """``json.loads`` with its failures sorted into reasons (NaN and Infinity stay floats)."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise payload_error(
            "too_deep", "JSON nesting exceeds the interpreter's recursion limit"
        ) from exc
    except ValueError as exc:  # JSONDecodeError, and int literals beyond the digit limit
        raise payload_error("invalid_json", str(exc)) from exc
