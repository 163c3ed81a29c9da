"""The ``policies`` of the configuration file, parsed: :class:`PolicyConfig` and its actions.

The configuration package checks only that ``policies`` is a list and hands the entries over
as written; this module parses each against the healing vocabulary (conditions by
:mod:`~mlwarden.sidecar.healing.conditions`, actions from
:data:`~mlwarden.sidecar.healing.vocabulary.ACTION_KINDS`), adding every problem to the same
collection as the rest of the file (:func:`mlwarden.sidecar.settings.load_sidecar_config` runs
both), so that one start-up names every problem, each by its key (``policies.<name>.when``, or
``policies[<index>]`` while the entry has no valid name).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlwarden.sidecar.config.checks import (
    Bad,
    Check,
    http_url,
    number,
    one_of,
    optional,
    seconds,
    show,
)
from mlwarden.sidecar.config.schema import Problems
from mlwarden.sidecar.healing.conditions import Condition, ConditionError, parse_condition
from mlwarden.sidecar.healing.vocabulary import ACTION_KINDS, SIGNALS, function_specs

__all__ = ["SEVERITIES", "PolicyAction", "PolicyConfig", "parse_policies"]

#: How serious a policy's firing is; ``critical`` escalates at once.
SEVERITIES = ("info", "warning", "critical")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_MAX_ACTIONS = 20


@dataclass(frozen=True, slots=True)
class PolicyAction:
    """One action of a policy: ``kind`` (route_to_fallback, restore_primary, rollback_canary,
    set_weight, webhook, escalate) and its argument (a weight, a webhook spec)."""

    kind: str
    weight_percent: float | None = None
    url: str | None = None
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """One healing policy: when ``condition`` (over the ``target``'s signals, default the
    current primary, in a ``window_s`` window) has held for ``for_s``, take ``actions`` in
    order; then not again for ``cooldown_s``. After routing away, ``restore_after_s`` of the
    condition being false again restores the primary (None: a person or another policy
    does). The defaults here are the file's defaults."""

    name: str
    when: str
    condition: Condition
    actions: tuple[PolicyAction, ...] = ()
    severity: str = "warning"
    for_s: float = 0.0
    cooldown_s: float = 300.0
    window_s: float = 60.0
    target: str | None = None
    restore_after_s: float | None = None


#: The checks of the plain settings of an entry; their defaults are PolicyConfig's.
_SETTINGS: dict[str, Check] = {
    "severity": one_of(SEVERITIES),
    "for_s": seconds(ge=0, le=30 * 86_400),
    "cooldown_s": seconds(ge=0, le=30 * 86_400),
    "window_s": seconds(gt=0, le=3600),
    "restore_after_s": optional(seconds(gt=0)),
}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PolicyConfig)}
#: The keys an entry may have (``condition`` is what ``when`` parses into).
_KEYS = [f.name for f in dataclasses.fields(PolicyConfig) if f.name != "condition"]


def parse_policies(
    entries: Sequence[Any], upstreams: Sequence[str], problems: Problems
) -> tuple[PolicyConfig, ...]:
    """The ``policies`` entries parsed; each problem is added to ``problems`` and the entry
    that has one is left out (the caller raises once it has every problem of the file)."""
    functions = function_specs(list(upstreams))
    out: list[PolicyConfig] = []
    seen: set[str] = set()
    for i, spec in enumerate(entries):
        where = f"policies[{i}]"
        if not isinstance(spec, Mapping):
            problems.add(where, f"expected a mapping with name, when and actions, got {show(spec)}")
            continue
        name = spec.get("name")
        if isinstance(name, str) and _NAME_RE.fullmatch(name):
            where = f"policies.{name}"
            if name in seen:
                problems.add(where, "a second policy with this name")
            seen.add(name)
        else:
            problems.add(
                f"{where}.name",
                "required: 1-63 lowercase letters, digits, '_' or "
                "'-', starting with a letter or digit",
            )
        for key in spec:
            if key not in _KEYS:
                problems.unknown(where, key, _KEYS)
        when = spec.get("when")
        condition = None
        if not isinstance(when, str) or not when.strip():
            problems.add(f"{where}.when", "required: a condition such as 'error_rate > 0.05'")
        else:
            try:
                condition = parse_condition(when, signals=SIGNALS, functions=functions)
            except ConditionError as exc:
                problems.add(f"{where}.when", exc.problem)
        values: dict[str, Any] = {}
        for key, check in _SETTINGS.items():
            try:
                values[key] = check(spec.get(key, _DEFAULTS[key]))
            except Bad as exc:
                problems.add(f"{where}.{key}", str(exc))
        target = spec.get("target")
        if target is not None and target not in upstreams:
            problems.add(
                f"{where}.target", f"unknown upstream {target!r} (known: {', '.join(upstreams)})"
            )
        actions = _parse_actions(spec.get("actions", []), f"{where}.actions", problems)
        if condition is not None and actions is not None and isinstance(name, str):
            out.append(
                PolicyConfig(
                    name=name,
                    when=when,  # type: ignore[arg-type]
                    condition=condition,
                    actions=actions,
                    target=target,
                    **values,
                )
            )
    return tuple(out)


def _parse_actions(raw: Any, where: str, problems: Problems) -> tuple[PolicyAction, ...] | None:
    if not isinstance(raw, list):
        problems.add(where, f"expected a list of actions, got {show(raw)}")
        return None
    out = []
    before = len(problems.items)
    for j, item in enumerate(raw[:_MAX_ACTIONS]):
        at = f"{where}[{j}]"
        if isinstance(item, str):
            kind, arg = item, None
        elif isinstance(item, Mapping) and len(item) == 1:
            kind, arg = next(iter(item.items()))
        else:
            problems.add(at, f"expected an action name or a one-key mapping, got {show(item)}")
            continue
        if kind not in ACTION_KINDS:
            close = difflib.get_close_matches(str(kind), ACTION_KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.add(at, f"unknown action {kind!r} ({hint}allowed: {', '.join(ACTION_KINDS)})")
            continue
        try:
            out.append(_action(kind, arg))
        except Bad as exc:
            problems.add(f"{at}.{kind}", str(exc))
    return tuple(out) if len(problems.items) == before else None


def _action(kind: str, arg: Any) -> PolicyAction:
    if kind == "set_weight":
        return PolicyAction(kind, weight_percent=number(float, ge=0, lt=100)(arg))
    if kind == "webhook":
        if not isinstance(arg, Mapping) or "url" not in arg:
            raise Bad(f"expected {{url: ..., body: {{...}}}}, got {show(arg)}")
        extra = set(arg) - {"url", "body", "headers"}
        if extra:
            raise Bad(
                f"unknown key(s) {', '.join(sorted(map(str, extra)))} (allowed: url, body, headers)"
            )
        body = arg.get("body", {})
        headers = arg.get("headers", {})
        if not isinstance(body, Mapping):
            raise Bad(f"body: expected a mapping (sent as JSON), got {show(body)}")
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise Bad("headers: expected a mapping of strings")  # values unquoted: credentials
        return PolicyAction(kind, url=http_url(arg["url"]), body=dict(body), headers=dict(headers))
    if arg is not None:
        raise Bad(f"takes no argument, got {show(arg)}")
    return PolicyAction(kind)
