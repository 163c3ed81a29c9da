"""Active health checks of the upstreams: which model versions are in rotation, and why.

This module owns the probing of every upstream's health endpoint, the verdict of one probe, and
the thresholds that move an upstream out of and back into rotation. It reads nothing else of the
sidecar's state and routes nothing: the router asks :meth:`HealthChecker.is_healthy` and the
admin app shows :meth:`HealthChecker.snapshot`.

The verdict of one probe (``GET <base url><health_path>``):

- a body that is the middleware's health report (JSON with a ``status`` of ``ok``, ``degraded``
  or ``failing``) decides: ``failing`` fails (whatever the HTTP status, normally 503); ``ok`` and
  ``degraded`` pass if the HTTP status is 2xx. ``degraded`` passes because the version is still
  serving; the report (reasons, drift) is kept so that routing policies can act on it.
- any other body (plain text, another JSON health format such as ``{"status": "UP"}``, too
  large): the HTTP status decides, 2xx passes, anything else (3xx included) fails.
- a connect error, a timeout (the whole probe is bounded by ``timeout_s``) or any other
  transport error fails.

An upstream leaves rotation after ``unhealthy_threshold`` consecutive failed probes and comes
back only after ``healthy_threshold`` consecutive passes (Envoy's names and semantics).

Start state: every upstream starts *healthy* by default. A sidecar must not drop traffic the
moment it starts, and when an upstream really is down the breaker and fallbacks cover the first
``unhealthy_threshold`` intervals. With ``initial_healthy=False`` upstreams start out of
rotation and, as in Envoy, the first passing probe admits them (only a single pass is needed
while an upstream has never been checked), so start-up is not delayed by
``healthy_threshold`` intervals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.health import DEGRADED, FAILING, OK
from mlwarden.sidecar.config import SidecarConfig, UpstreamConfig
from mlwarden.sidecar.listeners import FanOut, Listener

__all__ = [
    "MAX_REPORT_BYTES",
    "PROBE_OUTCOMES",
    "HealthChecker",
    "HealthReportSummary",
    "HealthTransition",
    "ProbeResult",
    "UpstreamHealth",
]

log = logging.getLogger("mlwarden.sidecar.health_checks")

#: Listener of transitions: ``(upstream name, healthy, reason)``.
#: A larger body is not read as a report (the status code decides): a health endpoint that
#: streams megabytes is not the middleware's, and the checker's memory stays bounded.
MAX_REPORT_BYTES = 256 * 1024
_REPORT_STATUSES = frozenset({OK, DEGRADED, FAILING})
# Bounds on what one report may put into the snapshot (the admin page is read by people).
_MAX_REASONS = 20
_MAX_FEATURES = 100
_MAX_TEXT = 300
_HEADERS = {"accept": "application/json", "user-agent": "mlwarden-health-check"}


@dataclass(frozen=True, slots=True)
class HealthReportSummary:
    """What the checker keeps of the middleware's report: its verdict, why, and drift."""

    status: str
    reasons: tuple[str, ...] = ()
    drift_detected: bool = False
    drifted_features: tuple[str, ...] = ()
    #: The largest PSI over the report's features (None: no drift evaluated or no PSI).
    drift_score: float | None = None
    #: The middleware's window: error rate and p99 latency (None when not reported).
    error_rate: float | None = None
    p99_latency_seconds: float | None = None
    #: Live quality from labels (the middleware's ``quality`` block), when reported.
    accuracy: float | None = None
    f1: float | None = None
    mae: float | None = None
    rmse: float | None = None
    labelled_samples: float | None = None

    @classmethod
    def parse(cls, body: bytes) -> HealthReportSummary | None:
        """The summary of a middleware report, or None when ``body`` is not one."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
        if not isinstance(data, dict) or data.get("status") not in _REPORT_STATUSES:
            return None
        reasons = data.get("reasons")
        drift = data.get("drift")
        drift = drift if isinstance(drift, dict) else {}
        features = drift.get("drifted_features")
        window = data.get("window")
        window = window if isinstance(window, dict) else {}
        quality = data.get("quality")
        quality = quality if isinstance(quality, dict) else {}
        latency = window.get("latency_seconds")
        latency = latency if isinstance(latency, dict) else {}
        return cls(
            status=data["status"],
            reasons=_texts(reasons, _MAX_REASONS),
            drift_detected=drift.get("detected") is True,
            drifted_features=_texts(features, _MAX_FEATURES),
            drift_score=_max_psi(drift.get("features")),
            error_rate=_number_or_none(window.get("error_rate")),
            p99_latency_seconds=_number_or_none(latency.get("p99")),
            accuracy=_number_or_none(quality.get("accuracy")),
            f1=_number_or_none(quality.get("f1")),
            mae=_number_or_none(quality.get("mae")),
            rmse=_number_or_none(quality.get("rmse")),
            labelled_samples=_number_or_none(quality.get("labelled_samples")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "drift": {
                "detected": self.drift_detected,
                "drifted_features": list(self.drifted_features),
                "score": self.drift_score,
            },
            "error_rate": self.error_rate,
            "p99_latency_seconds": self.p99_latency_seconds,
            "quality": {
                "accuracy": self.accuracy,
                "f1": self.f1,
                "mae": self.mae,
                "rmse": self.rmse,
                "labelled_samples": self.labelled_samples,
            },
        }


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _max_psi(features: Any) -> float | None:
    """The largest ``scores.psi`` of a report's feature list (bounded: the first 100)."""
    if not isinstance(features, list):
        return None
    scores = []
    for feature in features[:_MAX_FEATURES]:
        if isinstance(feature, dict) and isinstance(feature.get("scores"), dict):
            psi = _number_or_none(feature["scores"].get("psi"))
            if psi is not None:
                scores.append(psi)
    return max(scores) if scores else None


def _texts(value: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v)[:_MAX_TEXT] for v in value[:limit])


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe of one upstream."""

    passed: bool
    reason: str
    status_code: int | None = None
    report: HealthReportSummary | None = None
    error: str | None = None
    duration_s: float = 0.0

    @property
    def outcome(self) -> str:
        """One bounded word for metrics: ``ok``, ``degraded`` (both pass); ``failing`` (the
        report said so), ``bad_status``, ``timeout``, ``connect_error``, ``error``."""
        if self.passed:
            degraded = self.report is not None and self.report.status == DEGRADED
            return "degraded" if degraded else "ok"
        if self.status_code is not None:
            failing = self.report is not None and self.report.status == FAILING
            return "failing" if failing else "bad_status"
        if self.error == "timeout":
            return "timeout"
        if self.error is not None and self.error.startswith("connect error"):
            return "connect_error"
        return "error"


#: Every value of :attr:`ProbeResult.outcome`.
PROBE_OUTCOMES = ("ok", "degraded", "failing", "bad_status", "timeout", "connect_error", "error")


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """One entry of an upstream's history: at (clock seconds), the new state and why."""

    at: float
    name: str
    healthy: bool
    reason: str


@dataclass(slots=True)
class UpstreamHealth:
    """The checker's view of one upstream; mutated only by :class:`HealthChecker`."""

    name: str
    url: str
    healthy: bool
    history_size: int = 50
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    checks: int = 0
    last_status_code: int | None = None
    last_report: HealthReportSummary | None = None
    last_error: str | None = None
    last_reason: str | None = None
    last_checked_at: float | None = None
    last_duration_s: float | None = None
    history: deque[HealthTransition] = field(init=False)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)

    @property
    def degraded(self) -> bool:
        """In rotation, but its last report says degraded (drift, slow, erroring)."""
        return self.last_report is not None and self.last_report.status == DEGRADED

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready; times are ages in seconds, since the clock is monotonic."""
        return {
            "url": self.url,
            "healthy": self.healthy,
            "checked": self.checks > 0,
            "degraded": self.degraded,
            "checks": self.checks,
            "consecutive_successes": self.consecutive_successes,
            "consecutive_failures": self.consecutive_failures,
            "last_status_code": self.last_status_code,
            "last_reason": self.last_reason,
            "last_error": self.last_error,
            "last_report": self.last_report.to_dict() if self.last_report else None,
            "last_duration_s": (
                None if self.last_duration_s is None else round(self.last_duration_s, 6)
            ),
            "seconds_since_check": (
                None if self.last_checked_at is None else round(now - self.last_checked_at, 3)
            ),
            "transitions": [
                {"healthy": t.healthy, "reason": t.reason, "seconds_ago": round(now - t.at, 3)}
                for t in self.history
            ],
        }


class HealthChecker:
    """Probes every upstream each ``interval_s`` and keeps each one's rotation state.

    ``upstreams`` is a mapping of name to base URL (probed at ``health_path``), a mapping of
    name to :class:`UpstreamConfig`, or an iterable of :class:`UpstreamConfig` (each probed at
    its own ``health_path``). ``client`` is used as given and left open; without one, the
    checker creates (and closes in :meth:`aclose`) an ``httpx.AsyncClient`` that ignores
    proxy variables (the upstreams are local). ``clock`` and ``sleep`` are injectable so that
    tests step the loop without waiting. ``verify`` is the TLS verification of https
    upstreams (``from_config`` adds the upstreams' ``ca_file`` to the system's trust store).
    """

    def __init__(
        self,
        upstreams: Mapping[str, str | UpstreamConfig] | Iterable[UpstreamConfig],
        *,
        interval_s: float = 5.0,
        timeout_s: float = 1.0,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 3,
        read_health_report: bool = True,
        health_path: str = "/-/health",
        initial_healthy: bool = True,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        listeners: Iterable[Listener] = (),
        history_size: int = 50,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        problems: list[str] = []
        for key, value, low in (
            ("healthy_threshold", healthy_threshold, 1),
            ("unhealthy_threshold", unhealthy_threshold, 1),
            ("history_size", history_size, 1),
        ):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                problems.append(f"{key}: {value!r}, expected an integer >= {low}")
        times_valid = True
        for key, value in (("interval_s", interval_s), ("timeout_s", timeout_s)):
            if not (isinstance(value, int | float) and 0 < value < float("inf")):
                problems.append(f"{key}: {value!r}, expected a number of seconds > 0")
                times_valid = False
        if times_valid and timeout_s >= interval_s:
            # Otherwise probes of one upstream overlap and pile up against a hanging server.
            problems.append(f"timeout_s: {timeout_s!r}, expected < interval_s ({interval_s!r})")
        if not (isinstance(health_path, str) and health_path.startswith("/")):
            problems.append(f"health_path: {health_path!r}, expected a path starting with '/'")
        targets = _targets(upstreams, health_path, problems)
        if problems:
            raise ConfigError(problems, source="health checks")
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.read_health_report = read_health_report
        self._clock = clock
        self._sleep = sleep
        self._listeners = FanOut(listeners)
        self._states: dict[str, UpstreamHealth] = {
            name: UpstreamHealth(name, url, initial_healthy, history_size) for name, url in targets
        }
        self._owns_client = client is None
        self._client = (
            client
            if client is not None
            else httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(
                    max_connections=2 * len(targets), max_keepalive_connections=len(targets)
                ),
                trust_env=False,
                follow_redirects=False,
                verify=verify,
            )
        )

    @classmethod
    def from_config(cls, config: SidecarConfig, **kwargs: Any) -> Self:
        """A checker for every upstream of ``config`` with its ``health_checks`` block."""
        hc = config.health_checks
        options: dict[str, Any] = {
            "interval_s": hc.interval_s,
            "timeout_s": hc.timeout_s,
            "healthy_threshold": hc.healthy_threshold,
            "unhealthy_threshold": hc.unhealthy_threshold,
            "read_health_report": hc.read_health_report,
        }
        ca_files = [u.ca_file for u in config.upstreams if u.ca_file is not None]
        if ca_files:
            # One client probes every upstream: it trusts the system's CAs and each private one.
            context = ssl.create_default_context()
            for ca_file in dict.fromkeys(ca_files):
                context.load_verify_locations(cafile=ca_file)
            options["verify"] = context
        return cls(config.upstreams, **{**options, **kwargs})

    # -- reading ------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._states)

    def is_healthy(self, name: str) -> bool:
        """Whether ``name`` is in rotation; KeyError for an unknown name (a routing bug)."""
        return self._states[name].healthy

    def state(self, name: str) -> UpstreamHealth:
        return self._states[name]

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state of every upstream, for the admin ``/-/status``."""
        now = self._clock()
        return {
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "healthy_threshold": self.healthy_threshold,
            "unhealthy_threshold": self.unhealthy_threshold,
            "read_health_report": self.read_health_report,
            "upstreams": {name: s.to_dict(now) for name, s in self._states.items()},
        }

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener.health_changed(name, healthy, reason)`` on each transition and
        ``listener.probe_finished(name, result)`` after every probe; errors are logged."""
        self._listeners.add(listener)

    # -- probing ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe every interval until cancelled; the interval counts from each round's start."""
        while True:
            started = self._clock()
            await self.check_once()
            await self._sleep(max(0.0, self.interval_s - (self._clock() - started)))

    async def check_once(self) -> dict[str, ProbeResult]:
        """Probe every upstream once, concurrently; returns within about ``timeout_s``."""
        states = list(self._states.values())
        results = await asyncio.gather(*(self._probe(s.url) for s in states))
        for state, result in zip(states, results, strict=True):
            self._record(state, result)
        return {s.name: r for s, r in zip(states, results, strict=True)}

    async def _probe(self, url: str) -> ProbeResult:
        started = self._clock()

        def failed(reason: str, error: str) -> ProbeResult:
            return ProbeResult(False, reason, error=error, duration_s=self._clock() - started)

        try:
            # httpx's timeout bounds each read, not the whole exchange: a server that trickles
            # bytes would hold the probe; asyncio.timeout bounds all of it.
            async with asyncio.timeout(self.timeout_s):
                async with self._client.stream("GET", url, headers=_HEADERS) as response:
                    code = response.status_code
                    body = await _read_capped(response) if self.read_health_report else None
        except (TimeoutError, httpx.TimeoutException):
            return failed(f"timeout after {self.timeout_s:g}s", "timeout")
        except httpx.ConnectError as exc:
            return failed("connect error", f"connect error: {exc or type(exc).__name__}")
        except httpx.HTTPError as exc:
            return failed(type(exc).__name__, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a health checker that dies stops healing; record, go on
            log.exception("health check of %s failed unexpectedly", url)
            return failed("error", f"{type(exc).__name__}: {exc}")
        report = HealthReportSummary.parse(body) if body is not None else None
        passed, reason = _verdict(code, report)
        return ProbeResult(passed, reason, code, report, duration_s=self._clock() - started)

    def _record(self, state: UpstreamHealth, result: ProbeResult) -> None:
        first = state.checks == 0
        state.checks += 1
        state.last_checked_at = self._clock()
        state.last_status_code = result.status_code
        state.last_report = result.report
        state.last_error = result.error
        state.last_reason = result.reason
        state.last_duration_s = result.duration_s
        self._listeners.probe_finished(state.name, result)
        if result.passed:
            state.consecutive_successes += 1
            state.consecutive_failures = 0
            needed = 1 if first else self.healthy_threshold
            if not state.healthy and state.consecutive_successes >= needed:
                n = state.consecutive_successes
                self._transition(state, True, f"{n} consecutive passed checks: {result.reason}")
        else:
            state.consecutive_failures += 1
            state.consecutive_successes = 0
            if state.healthy and state.consecutive_failures >= self.unhealthy_threshold:
                n = state.consecutive_failures
                self._transition(state, False, f"{n} consecutive failed checks: {result.reason}")

    def _transition(self, state: UpstreamHealth, healthy: bool, reason: str) -> None:
        state.healthy = healthy
        state.history.append(HealthTransition(self._clock(), state.name, healthy, reason))
        log.log(
            logging.INFO if healthy else logging.WARNING,
            "upstream %s is %s (%s)",
            state.name,
            "healthy" if healthy else "unhealthy",
            reason,
            extra={"upstream": state.name, "healthy": healthy, "reason": reason},
        )
        self._listeners.health_changed(state.name, healthy, reason)

    # -- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client if this checker created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"HealthChecker(upstreams={list(self._states)!r}, interval_s={self.interval_s:g}, "
            f"timeout_s={self.timeout_s:g}, healthy_threshold={self.healthy_threshold}, "
            f"unhealthy_threshold={self.unhealthy_threshold}, "
            f"read_health_report={self.read_health_report})"
        )


def _verdict(code: int, report: HealthReportSummary | None) -> tuple[bool, str]:
    """Pass or fail of one answered probe, and why."""
    ok_code = 200 <= code < 300
    if report is None:
        return ok_code, f"HTTP {code}"
    why = f"report {report.status}" + (f": {'; '.join(report.reasons)}" if report.reasons else "")
    if report.status == FAILING:
        return False, why
    if not ok_code:
        # A report that says fine on an error status: something between us and the middleware
        # (or the app) is failing; do not trust the body over the status.
        return False, f"{why} but HTTP {code}"
    return True, why


async def _read_capped(response: httpx.Response) -> bytes | None:
    """The body, or None once it passes MAX_REPORT_BYTES (then the status code decides)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_REPORT_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _targets(
    upstreams: Mapping[str, str | UpstreamConfig] | Iterable[UpstreamConfig],
    health_path: str,
    problems: list[str],
) -> list[tuple[str, str]]:
    """(name, health URL) of each upstream; problems appended, not raised."""
    if isinstance(upstreams, Mapping):
        items = list(upstreams.items())
    else:
        items = []
        for u in upstreams:
            if not isinstance(u, UpstreamConfig):
                problems.append(f"upstreams: expected UpstreamConfig objects, got {u!r}")
                continue
            items.append((u.name, u))
    if not items:
        problems.append("upstreams: expected at least one upstream")
    targets: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, target in items:
        if not isinstance(name, str) or not name or name in seen:
            problems.append(f"upstreams: {name!r}, expected a unique non-empty name")
            continue
        seen.add(name)
        if isinstance(target, UpstreamConfig):
            base, path = target.url, target.health_path
        elif isinstance(target, str):
            base, path = target, health_path
            try:
                parts = urlsplit(base)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                valid = False
            if not valid:
                problems.append(f"upstreams.{name}: {base!r}, expected an http(s) URL")
                continue
        else:
            problems.append(f"upstreams.{name}: {target!r}, expected a URL or UpstreamConfig")
            continue
        targets.append((name, base.rstrip("/") + path))
    return targets
