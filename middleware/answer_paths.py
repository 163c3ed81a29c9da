"""Where in a model's answer to look: ``prediction_path`` and ``confidence_path``.

Each is a dotted path (``result.scores``, ``outputs.0.data``: a numeric part indexes a list
and also matches a dict key) compiled once by :func:`compile_source`, or a callable given the
parsed answer (it may return a list, a tuple, a numpy array or one value). :func:`resolve`
finds the node; a callable that raises is the answer's ``reader_error``, never the
request's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlwarden.middleware.bodies import MISSING, payload_error

__all__ = ["Source", "compile_source", "describe", "resolve"]

PathPart = tuple[str, int | None]  # the key, and the list index when it is a number
#: A compiled source: the parts of a dotted path, or a callable.
Source = tuple[PathPart, ...] | Callable[[Any], Any]


def compile_source(path: str | Callable[[Any], Any] | None, option: str) -> Source | None:
    """A dotted path compiled, a callable as it is, or None; ValueError naming ``option``."""
    if path is None or callable(path):
        return path
    if not isinstance(path, str):
        raise ValueError(f"{option} must be a dotted path, a callable or None, got {path!r}")
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"{option} must be a dotted path like 'result.scores', got {path!r}")
    return tuple((p, int(p) if p.lstrip("-").isdigit() else None) for p in parts)


def describe(source: Source | None) -> str:
    """How a source was given, for a repr."""
    if isinstance(source, tuple):
        return repr(".".join(key for key, _ in source))
    return repr(source)


def resolve(document: Any, source: Source, *, missing: str | None = None) -> Any:
    """The node ``source`` points at; ``MISSING`` when a path is not in the document (with
    ``missing``, a ``no_predictions`` error naming that option instead)."""
    if callable(source):
        try:
            node = source(document)
        except Exception as exc:
            raise payload_error("reader_error", f"{type(exc).__name__}: {exc}") from exc
        tolist = getattr(node, "tolist", None)
        if callable(tolist) and not isinstance(node, list):  # a numpy array
            try:
                node = tolist()
            except Exception as exc:
                raise payload_error("reader_error", f"{type(exc).__name__}: {exc}") from exc
        elif isinstance(node, tuple):
            node = list(node)
        return node
    node = _follow(document, source)
    if node is MISSING and missing is not None:
        raise payload_error("no_predictions", f"{missing} not found in the response")
    return node


def _follow(document: Any, parts: tuple[PathPart, ...]) -> Any:
    """The node at ``parts``, or ``MISSING``; numeric parts index lists (and match dict keys)."""
    node = document
    for key, index in parts:
        if node.__class__ is dict:
            node = node.get(key, MISSING)
            if node is MISSING:
                return MISSING
        elif node.__class__ is list and index is not None:
            try:
                node = node[index]
            except IndexError:
                return MISSING
        else:
            return MISSING
    return node
