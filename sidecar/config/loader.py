"""Reading the configuration: the YAML file (duplicate keys rejected) and the environment
overrides applied to its content before validation.

- ``MLWARDEN__<SEGMENT>__<SEGMENT>...=<value>`` sets one key; ``__`` separates the path
  segments, which match existing keys case-insensitively (new keys are lower-cased), e.g.
  ``MLWARDEN__RETRY__NUM_RETRIES=3`` or ``MLWARDEN__UPSTREAMS__STABLE__URL=http://10.0.0.7:80``.
  Values are parsed as YAML (``3``, ``2.5``, ``true``, ``null``, ``[5xx, reset]``), except text
  settings (URLs, hosts, names, tokens, paths, bodies), which are taken verbatim so that a
  token such as ``0123`` stays a string. ``retry_on`` and ``retriable_methods`` also take
  Envoy's comma-separated spelling (``5xx,reset``). A problem a variable caused names it.
- ``MLWARDEN_ADMIN_TOKEN`` supplies ``admin.token`` when the file and overrides leave it unset:
  a secret belongs in the environment (a Kubernetes Secret), not in a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.config.checks import show
from mlwarden.sidecar.config.schema import Problems

__all__ = ["ADMIN_TOKEN_ENV", "ENV_PREFIX", "apply_env", "read_document"]

#: Prefix of the variables that override single keys (``MLWARDEN__RETRY__NUM_RETRIES=3``).
ENV_PREFIX = "MLWARDEN__"
#: Variable that supplies ``admin.token`` when the configuration leaves it unset.
ADMIN_TOKEN_ENV = "MLWARDEN_ADMIN_TOKEN"
# Leaf keys whose environment values are text, taken verbatim rather than parsed as YAML.
_TEXT_KEYS = frozenset(
    {
        "url",
        "host",
        "token",
        "redis_url",
        "primary",
        "health_path",
        "body",
        "content_type",
        "otlp_endpoint",
        "service_name",
        "ca_file",
        "path",
        "influx_url",
        "influx_bucket",
        "influx_org",
        "influx_token",
    }
)


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: YAML keeps the last one silently, which would
    hide a second upstream of the same name."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                f"while reading a mapping (line {node.start_mark.line + 1})",
                node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


def read_document(path: str | os.PathLike[str]) -> Any:
    """The file's YAML document, unvalidated; ConfigError when it cannot be read or parsed."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], source=source) from exc
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax: {_yaml_reason(exc)}"], source=source) from exc


# --------------------------------------------------------------------------- environment


def apply_env(
    data: Mapping[str, Any], environ: Mapping[str, str], problems: Problems
) -> dict[str, Any]:
    """A copy of ``data`` with every ``MLWARDEN__…`` variable and ``MLWARDEN_ADMIN_TOKEN``
    applied; records which variable set which key in ``problems.origins``."""
    out = dict(data)
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        segments = var[len(ENV_PREFIX) :].split("__")
        if not all(segments):
            problems.add_variable(
                var,
                f"empty path segment; use '__' only between keys, "
                f"e.g. {ENV_PREFIX}RETRY__NUM_RETRIES",
            )
            continue
        node: dict[str, Any] = out
        path: list[str] = []
        for seg in segments[:-1]:
            key = _match_key(node, seg)
            child = node.get(key)
            if child is None:
                child = {}
            elif isinstance(child, str) and path == ["upstreams"]:
                child = {"url": child}  # the URL shorthand, opened up for one of its keys
            elif not isinstance(child, Mapping):
                where = ".".join([*path, key])
                problems.add_variable(
                    var,
                    f"cannot set a key inside {where}, which is "
                    f"{type(child).__name__} {show(child)}, not a mapping",
                )
                break
            node[key] = child = dict(child)
            node = child
            path.append(key)
        else:
            leaf = _match_key(node, segments[-1])
            raw = environ[var]
            if leaf in _TEXT_KEYS or path == ["upstreams"]:
                node[leaf] = raw
            else:
                try:
                    node[leaf] = yaml.safe_load(raw) if raw.strip() else None
                except yaml.YAMLError as exc:
                    problems.add_variable(var, f"not a YAML value ({_yaml_reason(exc)})")
                    continue
            problems.origins[".".join([*path, leaf])] = var
    _apply_admin_token(out, environ, problems)
    return out


def _apply_admin_token(
    data: dict[str, Any], environ: Mapping[str, str], problems: Problems
) -> None:
    admin = data.get("admin")
    if not isinstance(admin, Mapping | None):
        return  # the admin block's own problem
    admin = dict(admin or {})
    if admin.get("token") in (None, "") and environ.get(ADMIN_TOKEN_ENV):
        admin["token"] = environ[ADMIN_TOKEN_ENV]
        problems.origins.setdefault("admin.token", ADMIN_TOKEN_ENV)
    elif admin.get("token") is None:
        admin.pop("token", None)  # null: unset, the default
    if admin or "admin" in data:
        data["admin"] = admin


def _match_key(node: Mapping[str, Any], segment: str) -> str:
    for key in node:
        if isinstance(key, str) and key.lower() == segment.lower():
            return key
    return segment.lower()
