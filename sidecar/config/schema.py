"""The schema machinery of the configuration blocks: settings, problem collection, blocks.

A block is a frozen dataclass deriving from :class:`Block` whose fields are declared with
:func:`setting` (a default and a value check from :mod:`~mlwarden.sidecar.config.checks`). The
field's default is the one default of that key in the whole sidecar: a component built from
the block trusts it, and one built directly takes its defaults from the block too (see
:func:`field_check` and :func:`check_arguments` for components that validate their own
keyword arguments with the same rules).

:class:`Problems` collects every problem of a file, each naming its key path (and the
environment variable that set it, if one did), so that one start-up shows all of them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import field
from typing import Any, ClassVar

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.config.checks import Bad, Check, show, text

__all__ = ["Block", "Problems", "check_arguments", "field_check", "setting"]

# Words other tools use for our keys: a typo hint cannot find these by spelling.
_SYNONYMS = {
    "fail_max": "consecutive_5xx",
    "max_retries": "num_retries",
    "retries": "num_retries",
    "attempts": "num_retries",
    "per_try_timeout": "per_try_timeout_s",
    "timeout": "total_timeout_s",
    "base_interval": "base_interval_s",
    "max_interval": "max_interval_s",
    "reset_timeout": "reset_timeout_s",
    "interval": "interval_s",
}


def setting(default: Any = dataclasses.MISSING, check: Check = text, **kw: Any) -> Any:
    """A block's dataclass field that carries its value check (no default: required)."""
    return field(default=default, metadata={"check": check}, **kw)


class Problems:
    """Collects problems; one caused by an environment variable names that variable."""

    def __init__(self, origins: Mapping[str, str] | None = None) -> None:
        self.items: list[str] = []
        #: key path -> the environment variable that set it
        self.origins: dict[str, str] = dict(origins or {})

    def add(self, path: str, message: str) -> None:
        var = next((self.origins[p] for p in _prefixes(path) if p in self.origins), None)
        self.items.append(f"{path}: {message}" + (f" (from {var})" if var else ""))

    def add_variable(self, var: str, message: str) -> None:
        """A problem of an environment variable itself (no key path to name)."""
        self.items.append(f"{var}: {message}")

    def unknown(self, path: str, key: Any, allowed: list[str]) -> None:
        if not isinstance(key, str):
            self.add(path, f"keys must be strings, got {key!r}")
            return
        close = (
            [_SYNONYMS[key]]
            if _SYNONYMS.get(key) in allowed
            else difflib.get_close_matches(key, allowed, n=1)
        )
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.add(
            f"{path}.{key}" if path else key, f"unknown key ({hint}allowed: {', '.join(allowed)})"
        )


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


class Block:
    """Shared by the blocks: validation from field metadata, on mapping load and on construction.

    The machinery's own names start with ``_`` so that they can never clash with a key.
    """

    __slots__ = ()
    _key: ClassVar[str]

    def _path(self) -> str:
        return self._key

    def __post_init__(self) -> None:
        problems = Problems()
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        type(self)._check(values, self._path(), problems)
        if problems.items:
            raise ConfigError(problems.items)

    @classmethod
    def _check(cls, raw: Mapping[str, Any], path: str, problems: Problems) -> dict[str, Any]:
        """Checked, normalised values of the keys present in ``raw``, then the cross-field rules."""
        valid: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        before = len(problems.items)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if f.name not in raw:
                if f.default is not dataclasses.MISSING:
                    defaults[f.name] = f.default
                elif check is not None:
                    problems.add(f"{path}.{f.name}", "required")
                continue
            if check is None:
                valid[f.name] = raw[f.name]
                continue
            try:
                valid[f.name] = check(raw[f.name])
            except Bad as exc:
                problems.add(f"{path}.{f.name}", str(exc))
        if len(problems.items) == before:
            for name, message in cls._cross({**defaults, **valid}):
                problems.add(f"{path}.{name}", message)
        return valid

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Rules between keys of one block, as (key, message); only run when each key is valid."""
        return []

    @classmethod
    def _load(cls, raw: Any, path: str, problems: Problems, **extra: Any) -> Any:
        """An instance from a YAML block, or None after adding its problems."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.add(path, f"expected a mapping, got {type(raw).__name__} {show(raw)}")
            return None
        allowed = [f.name for f in dataclasses.fields(cls) if f.name not in extra]  # type: ignore[arg-type]
        before = len(problems.items)
        for key in raw:
            if key not in allowed:
                problems.unknown(path, key, allowed)
        values = cls._check(
            {**{k: v for k, v in raw.items() if k in allowed}, **extra}, path, problems
        )
        if len(problems.items) != before:
            return None
        return cls(**values)


def field_check(block: type[Block], name: str) -> Check:
    """The value check of ``block``'s key ``name``: the one rule for that value."""
    for f in dataclasses.fields(block):  # type: ignore[arg-type]
        if f.name == name:
            return f.metadata["check"]
    raise KeyError(name)


def check_arguments(
    arguments: Mapping[str, tuple[Check, Any]], *, source: str | None = None
) -> dict[str, Any]:
    """The normalised values of a component's keyword arguments, each run through its check.

    For components built directly (tests, embedding) rather than from their block: the same
    rules and the same message shape as the file's, one :class:`ConfigError` naming every bad
    argument.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, (check, value) in arguments.items():
        try:
            values[name] = check(value)
        except Bad as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise ConfigError(problems, source=source)
    return values
