"""The Slack-compatible body of an escalation: Block Kit, escaped and cut to Slack's limits.

:func:`slack_body` builds what the escalation POSTs to a Slack incoming-webhook URL (through the
:class:`~mlwarden.sidecar.healing.webhooks.WebhookSender`, like every other webhook). All text
is escaped (``&``, ``<``, ``>``) and cut to Slack's limits, never inside an escape, so text that
came from configuration or from a model cannot mention ``@channel`` or forge a link.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["slack_body"]

_ELLIPSIS = "…"

_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_MAX = 10
_RECENT_MAX = 10
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fit(text: object, limit: int) -> str:
    """``text`` escaped for Slack and at most ``limit`` characters, never cut inside ``&amp;``."""
    raw = text if isinstance(text, str) else str(text)
    escaped = _escape(raw)
    if len(escaped) <= limit:
        return escaped
    out: list[str] = []
    used = 0
    for ch in raw:
        piece = _ESCAPES.get(ch, ch)
        if used + len(piece) > limit - len(_ELLIPSIS):
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + _ELLIPSIS


def _join_fit(head: str, lines: Sequence[str], limit: int) -> str:
    """``head`` and as many whole ``lines`` as fit in ``limit`` (already escaped text)."""
    text = head
    for i, line in enumerate(lines):
        more = f"\n_…and {len(lines) - i} more_"
        candidate = f"{text}\n{line}"
        rest_after = i + 1 < len(lines)
        if len(candidate) + (len(more) if rest_after else 0) > limit:
            return text + more if len(text) + len(more) <= limit else text
        text = candidate
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def _entry_time(entry: Mapping[str, Any]) -> str:
    if entry.get("time"):
        return str(entry["time"])
    at = entry.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at):
        try:
            when = _dt.datetime.fromtimestamp(at, tz=_dt.UTC)
        except (OverflowError, OSError, ValueError):
            return str(at)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return "?"


def slack_body(
    *,
    title: str,
    severity: str,
    policy: str,
    reason: str,
    signals: Mapping[str, Any],
    actions: Sequence[str],
    recent: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A Slack incoming-webhook body (Block Kit) for an escalation.

    Blocks: a header (``title``); a section with ``reason`` as text and fields for severity,
    policy and each signal (at most 10 fields: extra signals are summed up in the last one);
    a section of the actions taken; and, when ``recent`` is not empty, a section with up to
    10 ledger entries (``LedgerRecord.to_dict()`` mappings, in the order given: the ledger's
    ``query`` gives newest first) as time, action, target and outcome. ``text`` is the
    notification fallback. Every text is escaped (``&``, ``<``, ``>``) and cut to Slack's
    limits, so user-controlled text cannot mention ``@channel`` or forge a link.
    """
    fields = [
        f"*Severity*\n{_fit(severity, _FIELD_MAX - 12)}",
        f"*Policy*\n{_fit(policy, _FIELD_MAX - 12)}",
    ]
    items = list(signals.items())
    room = _FIELDS_MAX - len(fields)
    shown = items if len(items) <= room else items[: room - 1]
    for key, value in shown:
        name = _fit(key, 100)
        fields.append(f"*{name}*\n{_fit(_format_value(value), _FIELD_MAX - len(name) - 3)}")
    if len(shown) < len(items):
        fields.append(f"*…*\n{len(items) - len(shown)} more signals")
    summary: dict[str, Any] = {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*Reason*\n" + _fit(reason or "-", _SECTION_MAX - 9)},
        "fields": [{"type": "mrkdwn", "text": f} for f in fields],
    }
    action_lines = [f"• {_fit(a, 500)}" for a in actions] or ["none"]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _fit(title or "mlwarden", _HEADER_MAX),
                "emoji": True,
            },
        },
        summary,
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _join_fit("*Actions taken*", action_lines, _SECTION_MAX),
            },
        },
    ]
    if recent:
        lines = [
            f"`{_fit(_entry_time(e), 40)}` {_fit(e.get('action', '?'), 100)} → "
            f"{_fit(e.get('target', '?'), 200)}: {_fit(e.get('outcome', '?'), 100)}"
            for e in list(recent)[:_RECENT_MAX]
        ]
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _join_fit("*Recent healing actions*", lines, _SECTION_MAX),
                },
            }
        )
    fallback = _fit(f"[{severity}] {title} ({policy}): {reason}", _SECTION_MAX)
    return {"text": fallback, "blocks": blocks}
