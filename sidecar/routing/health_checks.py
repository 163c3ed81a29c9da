"""Active health checks of the upstreams: which model versions are in rotation, and why.

This module owns the probing of every upstream's health endpoint, the verdict of one probe, and
the thresholds that move an upstream out of and back into rotation (what it keeps of each
upstream is :mod:`~mlwarden.sidecar.routing.health_state`). It reads nothing else of the
sidecar's state and routes nothing: the router asks :meth:`HealthChecker.is_healthy` and the
admin app shows :meth:`HealthChecker.snapshot`.

The verdict of one probe (``GET <base url><health_path>``):

- a body that is the middleware's health report (JSON with a ``status`` of ``ok``, ``degraded``
  or ``failing``, read into the typed and bounded
  :class:`~mlwarden.middleware.health_report.HealthReport`) decides: ``failing`` fails
  (whatever the HTTP status, normally 503); ``ok`` and ``degraded`` pass if the HTTP status is
  2xx. ``degraded`` passes because the version is still
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
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.health_report import FAILING, MAX_REPORT_BYTES, HealthReport
from mlwarden.sidecar.config import HealthChecksConfig, UpstreamConfig
from mlwarden.sidecar.listeners import FanOut, Listener
from mlwarden.sidecar.routing.health_state import (
    HISTORY_SIZE,
    PROBE_OUTCOMES,
    HealthTransition,
    ProbeResult,
    UpstreamHealth,
)

__all__ = [
    "MAX_REPORT_BYTES",
    "PROBE_OUTCOMES",
    "HealthChecker",
    "HealthTransition",
    "ProbeResult",
    "UpstreamHealth",
]

log = logging.getLogger("mlwarden.sidecar.health_checks")

_HEADERS = {"accept": "application/json", "user-agent": "mlwarden-health-check"}
# The plain constructor's defaults are the configuration's (one default per key).
_DEFAULTS = HealthChecksConfig()
_HEALTH_PATH = next(f.default for f in fields(UpstreamConfig) if f.name == "health_path")


class HealthChecker:
    """Probes every upstream each ``interval_s`` and keeps each one's rotation state.

    ``upstreams`` is a mapping of name to base URL (probed at ``health_path``), a mapping of
    name to :class:`UpstreamConfig`, or an iterable of :class:`UpstreamConfig` (each probed at
    its own ``health_path``). ``client`` is used as given and left open; without one, the
    checker creates (and closes in :meth:`aclose`) an ``httpx.AsyncClient`` that ignores
    proxy variables (the upstreams are local). ``clock`` and ``sleep`` are injectable so that
    tests step the loop without waiting. ``verify`` is the TLS verification of https
    upstreams (``from_config`` adds the upstreams' ``ca_file`` to the system's trust store).

    The sidecar builds it with :meth:`from_config` from its validated blocks; the constructor
    checks the options it is given by hand (tests), with the configuration's defaults.
    """

    def __init__(
        self,
        upstreams: Mapping[str, str | UpstreamConfig] | Iterable[UpstreamConfig],
        *,
        interval_s: float = _DEFAULTS.interval_s,
        timeout_s: float = _DEFAULTS.timeout_s,
        healthy_threshold: int = _DEFAULTS.healthy_threshold,
        unhealthy_threshold: int = _DEFAULTS.unhealthy_threshold,
        read_health_report: bool = _DEFAULTS.read_health_report,
        health_path: str = _HEALTH_PATH,
        initial_healthy: bool = True,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        listeners: Iterable[Listener] = (),
        history_size: int = HISTORY_SIZE,
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
        self._setup(
            targets,
            interval_s=interval_s,
            timeout_s=timeout_s,
            healthy_threshold=healthy_threshold,
            unhealthy_threshold=unhealthy_threshold,
            read_health_report=read_health_report,
            initial_healthy=initial_healthy,
            client=client,
            clock=clock,
            sleep=sleep,
            listeners=listeners,
            history_size=history_size,
            verify=verify,
        )

    @classmethod
    def from_config(
        cls,
        health_checks: HealthChecksConfig,
        upstreams: Iterable[UpstreamConfig],
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        listeners: Iterable[Listener] = (),
    ) -> Self:
        """A checker of ``upstreams`` (each at its own ``health_path``) as ``health_checks``
        says; both blocks are validated already and trusted: nothing is checked again."""
        upstreams = tuple(upstreams)
        verify: ssl.SSLContext | bool = True
        ca_files = [u.ca_file for u in upstreams if u.ca_file is not None]
        if ca_files:
            # One client probes every upstream: it trusts the system's CAs and each private one.
            verify = ssl.create_default_context()
            for ca_file in dict.fromkeys(ca_files):
                verify.load_verify_locations(cafile=ca_file)
        checker = cls.__new__(cls)  # not __init__: that one validates hand-given options
        checker._setup(
            [(u.name, u.url.rstrip("/") + u.health_path) for u in upstreams],
            interval_s=health_checks.interval_s,
            timeout_s=health_checks.timeout_s,
            healthy_threshold=health_checks.healthy_threshold,
            unhealthy_threshold=health_checks.unhealthy_threshold,
            read_health_report=health_checks.read_health_report,
            initial_healthy=True,
            client=client,
            clock=clock,
            sleep=sleep,
            listeners=listeners,
            history_size=HISTORY_SIZE,
            verify=verify,
        )
        return checker

    def _setup(
        self,
        targets: list[tuple[str, str]],
        *,
        interval_s: float,
        timeout_s: float,
        healthy_threshold: int,
        unhealthy_threshold: int,
        read_health_report: bool,
        initial_healthy: bool,
        client: httpx.AsyncClient | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[Any]],
        listeners: Iterable[Listener],
        history_size: int,
        verify: ssl.SSLContext | bool,
    ) -> None:
        """Set the checker up for ``targets``, (name, health URL) pairs, as given."""
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
        report = HealthReport.from_json(body) if body is not None else None
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


def _verdict(code: int, report: HealthReport | None) -> tuple[bool, str]:
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
