"""What the demo shows: a live view while it runs and a summary table at the end.

On a terminal the view redraws in place (ANSI cursor-home and clear) a few times a second:
the phase with a progress bar, traffic by version over the last seconds, breaker states, the
canary, the shadow's agreement, and the healing actions as the ledger records them. Anywhere
else (a pipe, CI) it prints each phase, each ledger record and a status line every few
seconds instead, so that the output stays readable as a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["LiveView", "PhaseResult", "Snapshot", "progress_bar", "summary_table"]

_EVENT_SHOWN = 10


@dataclass(slots=True)
class Snapshot:
    """Everything one frame shows."""

    phase_index: int
    phase_count: int
    phase: str
    story: str
    elapsed_s: float
    duration_s: float
    recent_by_upstream: dict[str, int]  # answers in the last few seconds, by version
    recent_failed: int
    sent: int
    failed: int
    status: dict[str, Any] | None  # the sidecar's /-/status, when it answered
    events: list[dict[str, Any]] = field(default_factory=list)  # ledger records, oldest first
    prometheus_url: str | None = None


@dataclass(slots=True)
class PhaseResult:
    """One row of the summary."""

    name: str
    fault: str
    detected_after_s: float | None = None
    detected_by: str = ""
    healed_by: str = ""
    recovery_s: float | None = None
    requests: int = 0
    failed: int = 0
    healed: bool = False
    note: str = ""


def progress_bar(done: float, total: float, width: int = 24) -> str:
    share = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    full = int(share * width)
    return "[" + "#" * full + "-" * (width - full) + f"] {done:5.1f}/{total:.0f} s"


def _breakers(status: dict[str, Any] | None) -> str:
    if not status:
        return "breakers: (no status from the sidecar yet)"
    parts = []
    for name, up in status.get("upstreams", {}).items():
        state = up.get("breaker", {}).get("state", "?")
        parts.append(f"{name} {state}" + ("" if up.get("available", True) else " (out)"))
    return "breakers: " + ", ".join(parts)


def _routing(status: dict[str, Any] | None) -> str:
    if not status:
        return ""
    routing = status.get("routing", {})
    text = "routing: " + " > ".join(routing.get("order", []))
    canary = status.get("canary")
    if canary:
        text += f"   canary {canary.get('candidate')}: {canary.get('state')}"
        if canary.get("state") == "analysing":
            text += f" at {canary.get('weight_percent', 0):g}%"
    shadow = status.get("shadow")
    if shadow and shadow.get("agreement_rate") is not None:
        text += f"   shadow agreement {shadow['agreement_rate']:.1%}"
    return text


def _event_line(record: dict[str, Any], started_at: float) -> str:
    at = float(record.get("at", 0.0)) - started_at
    who = record.get("policy") or record.get("actor") or ""
    outcome = record.get("outcome", "")
    reason = str(record.get("reason", ""))
    if len(reason) > 70:
        reason = reason[:69] + "…"
    return (
        f"  {at:6.1f}s  {record.get('action', ''):<22} {record.get('target', ''):<10} "
        f"{outcome:<7} {who:<16} {reason}"
    )


class LiveView:
    """Renders :class:`Snapshot` frames: in place on a terminal, as a log elsewhere."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        live: bool | None = None,
        started_at: float | None = None,
        log_every_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.started_at = time.time() if started_at is None else started_at
        self._log_every_s = log_every_s
        self._clock = clock
        self._last_log: float | None = None  # not 0: the monotonic clock counts from boot
        self._events_seen: set[str] = set()
        self._phase_seen = -1

    def frame(self, snap: Snapshot) -> None:
        if self.live:
            self.stream.write("\x1b[H\x1b[2J" + "\n".join(self._lines(snap)) + "\n")
            self.stream.flush()
            return
        if snap.phase_index != self._phase_seen:
            self._phase_seen = snap.phase_index
            self._print(
                f"\n== phase {snap.phase_index + 1}/{snap.phase_count}: {snap.phase} "
                f"({snap.duration_s:.0f} s) — {snap.story}"
            )
        for record in snap.events:
            rid = str(record.get("id"))
            if rid not in self._events_seen:
                self._events_seen.add(rid)
                self._print("ledger:" + _event_line(record, self.started_at)[1:])
        now = self._clock()
        if self._last_log is None or now - self._last_log >= self._log_every_s:
            self._last_log = now
            self._print(
                f"  {progress_bar(snap.elapsed_s, snap.duration_s)}  "
                f"{self._traffic(snap)}  {_breakers(snap.status)}"
            )

    def _traffic(self, snap: Snapshot) -> str:
        by = ", ".join(f"{k} {v}" for k, v in sorted(snap.recent_by_upstream.items())) or "none"
        return f"last 2 s: {by}; failed {snap.recent_failed}"

    def _lines(self, snap: Snapshot) -> list[str]:
        lines = [
            "mlwarden demo — a sidecar healing two model versions"
            + (f"   Prometheus: {snap.prometheus_url}" if snap.prometheus_url else ""),
            "",
            f"phase {snap.phase_index + 1}/{snap.phase_count}: {snap.phase}",
            f"  {snap.story}",
            f"  {progress_bar(snap.elapsed_s, snap.duration_s, width=40)}",
            "",
            f"client requests: {snap.sent} sent, {snap.failed} failed   {self._traffic(snap)}",
            _breakers(snap.status),
            _routing(snap.status),
            "",
            "healing ledger (newest last):",
        ]
        shown = snap.events[-_EVENT_SHOWN:]
        lines += [_event_line(r, self.started_at) for r in shown] or ["  (nothing yet)"]
        return lines

    def done(self) -> None:
        """Leaves the last frame on screen (a terminal) before the summary."""
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def summary_table(results: list[PhaseResult]) -> str:
    """A plain-text table: each fault, when it was detected, what healed it, how fast."""
    header = (
        "phase",
        "fault",
        "detected after",
        "detected by",
        "healed by",
        "time to recovery",
        "requests",
        "failed",
        "verdict",
    )
    rows = [header]
    for r in results:
        verdict = "healed" if r.healed else "NOT HEALED"
        if r.fault == "none":
            verdict = "ok" if r.healed else "FAILED"
        rows.append(
            (
                r.name,
                r.fault,
                _seconds(r.detected_after_s),
                r.detected_by or "-",
                r.healed_by or "-",
                _seconds(r.recovery_s),
                str(r.requests),
                str(r.failed),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {2, 5, 6, 7}

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [fmt(rows[0]), rule, *(fmt(row) for row in rows[1:])]
    notes = [f"  {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(out + (["", "notes:", *notes] if notes else []))
