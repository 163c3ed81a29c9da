"""The canary: a candidate version on a growing share of traffic, promoted or rolled back.

Two parts:

- **the split** (:meth:`CanaryController.routes`, on the request path): a request goes to the
  candidate first with probability ``weight`` percent. With ``sticky_header`` or
  ``sticky_cookie`` the choice is a hash of the client's key, so one client keeps seeing one
  version while the weight holds (and keeps it as the weight grows: a key below 5% is below
  25% too). The stable version and the fallbacks stay behind the candidate, so a failing
  candidate costs a client a retry, not an error.
- **the analysis** (:meth:`CanaryController.tick`, every ``interval_s``): the candidate's
  attempts over the last interval against the stable version's, from the proxy's own windows
  (:class:`~mlwarden.sidecar.signals.windows.WindowSignals`) or, with ``source:
  prometheus``, from PromQL over every replica's metrics
  (:class:`~mlwarden.sidecar.signals.prometheus.PrometheusSignals`): error
  rate (absolute and above the stable's), p99 latency ratio, and the drift score of the
  candidate's health report where the middleware reports it. Fewer than ``min_requests``
  attempts for either version decide nothing ("inconclusive"); inconclusive for
  ``inconclusive_deadline_s``, ``on_deadline`` decides (rollback, promote, or hold and say so
  again after another deadline).

States: ``analysing`` (stepping through ``steps_percent``) → ``promoted`` (the candidate is
the primary, the stable version its first fallback, watched for ``guard_s``) → ``done``; or
``rolled_back`` (weight 0, the configured order restored) from either. A rollback is
immediate: on a failed analysis, on the candidate's breaker opening (a breaker listener, not
the next tick), or on the guard seeing the promoted version fail. Every decision is reported
through ``record`` (the healing ledger) with the figures that caused it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlwarden.sidecar.config import CanaryConfig
from mlwarden.sidecar.listeners import FanOut, Listener
from mlwarden.sidecar.routing.router import Router
from mlwarden.sidecar.signals.source import SignalSource

__all__ = ["CanaryController", "CanaryVerdict", "sticky_bucket"]

log = logging.getLogger("mlwarden.sidecar.canary")

#: A p99 above the stable's by less than this is noise, whatever the ratio.
MIN_LATENCY_DIFFERENCE_S = 0.005
_HISTORY = 50

Record = Callable[..., Any]


Figures = dict[str, float | None]


def sticky_bucket(key: bytes) -> float:
    """A stable position in [0, 100) for a client key."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    """One analysis: ``pass``, ``fail`` or ``inconclusive``, why, and the figures used."""

    at: float
    verdict: str
    reason: str
    weight_percent: float
    signals: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "verdict": self.verdict,
            "reason": self.reason,
            "weight_percent": self.weight_percent,
            "signals": self.signals,
        }


class CanaryController(Listener):
    """Runs one canary; see the module docstring.

    ``local`` reads this sidecar's signals (its windows of attempts, and ``drift_score`` from
    the health reports); ``fleet``, when given (``source: prometheus``), replaces it for the
    analysis's traffic figures (``requests``, ``error_rate``, ``p99_latency_seconds``) and is
    refreshed before each analysis. ``breaker_state(name)`` gives a breaker's state;
    ``record(action=, target=, reason=, signals=, outcome=, severity=)`` writes the ledger.
    """

    def __init__(
        self,
        config: CanaryConfig,
        *,
        local: SignalSource,
        fleet: SignalSource | None = None,
        router: Router,
        breaker_state: Callable[[str], str],
        record: Record = lambda **kw: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        assert config.stable is not None  # filled in by the configuration loader
        self.config = config
        self.candidate = config.candidate
        self.stable = config.stable
        self.local = local
        self.fleet = fleet
        self._router = router
        self._breaker_state = breaker_state
        self._record = record
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._configured_order = router.order
        self._sticky: bytes | None = None
        self._cookie: str | None = None
        if config.sticky_header:
            self._sticky = config.sticky_header.lower().encode("latin-1")
        elif config.sticky_cookie:
            self._cookie = config.sticky_cookie
        self.state = "analysing"
        self.step = 0
        self.weight = config.steps_percent[0]
        self.history: deque[CanaryVerdict] = deque(maxlen=_HISTORY)
        #: Analyses by verdict (pass, fail, inconclusive) since start.
        self.verdicts: dict[str, int] = {"pass": 0, "fail": 0, "inconclusive": 0}
        self._conclusive_at = clock()
        self._guard_until: float | None = None
        self._listeners = FanOut()

    # -- the split (request path) --------------------------------------------------------------

    def routes(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether this request tries the candidate first."""
        weight = self.weight
        if weight <= 0 or self.state != "analysing":
            return False
        if weight >= 100:
            return True
        key = self._key(headers)
        position = sticky_bucket(key) if key is not None else self._rng() * 100.0
        return position < weight

    def _key(self, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        if self._sticky is not None:
            for name, value in headers:
                if name == self._sticky:
                    return value
            return None
        if self._cookie is not None:
            for name, value in headers:
                if name == b"cookie":
                    for part in value.decode("latin-1").split(";"):
                        k, _, v = part.strip().partition("=")
                        if k == self._cookie:
                            return v.encode("latin-1")
        return None

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Analyse every interval until the canary is over (done or rolled back) or cancelled."""
        try:
            while self.state in ("analysing", "promoted"):
                await self._sleep(self.config.interval_s)
                if self.fleet is not None and self.state == "analysing":
                    await self.fleet.refresh((self.candidate, self.stable), self.config.interval_s)
                self.tick()
        finally:
            closing = getattr(self.fleet, "aclose", None)
            if closing is not None:
                await closing()

    def tick(self) -> CanaryVerdict | None:
        """One analysis (or one guard check after promotion)."""
        if self.state == "analysing":
            return self._analyse()
        if self.state == "promoted":
            return self._guard()
        return None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener.canary_changed(canary)`` after each step, promotion or rollback."""
        self._listeners.add(listener)

    def breaker_changed(self, name: str, old: str, new: str, reason: str) -> None:
        """As a breaker's listener: the candidate's breaker opening rolls back at once."""
        if name == self.candidate and new == "open" and self.state in ("analysing", "promoted"):
            self.rollback(f"breaker of {name} opened ({reason})", {"breaker_open": 1.0})

    # -- decisions -------------------------------------------------------------------------

    def _figures(self) -> tuple[dict[str, float | None], int, int]:
        window = self.config.interval_s
        traffic = self.fleet if self.fleet is not None else self.local
        cand = traffic.read(self.candidate, window)
        stable = traffic.read(self.stable, window)
        signals: dict[str, float | None] = {
            "candidate_requests": cand["requests"],
            "stable_requests": stable["requests"],
            "candidate_error_rate": cand["error_rate"],
            "stable_error_rate": stable["error_rate"],
            "candidate_p99_latency_seconds": cand["p99_latency_seconds"],
            "stable_p99_latency_seconds": stable["p99_latency_seconds"],
            "candidate_drift_score": self.local.read(self.candidate, window).get("drift_score"),
        }
        return signals, int(cand["requests"] or 0), int(stable["requests"] or 0)

    def _analyse(self) -> CanaryVerdict:
        c = self.config
        signals, n_cand, n_stable = self._figures()
        now = self._clock()
        if n_cand < c.min_requests or n_stable < c.min_requests:
            reason = (
                f"too few requests to decide: candidate {n_cand}, stable {n_stable} "
                f"(min_requests {c.min_requests})"
            )
            verdict = self._verdict("inconclusive", reason, signals)
            if now - self._conclusive_at >= c.inconclusive_deadline_s:
                self._deadline(signals)
            return verdict
        self._conclusive_at = now
        failure = self._failure(signals)
        if failure is not None:
            verdict = self._verdict("fail", failure, signals)
            self.rollback(failure, signals)
            return verdict
        verdict = self._verdict("pass", "within every bound", signals)
        self._step_up(signals)
        return verdict

    def _failure(self, s: Mapping[str, float | None]) -> str | None:
        c = self.config
        err, base = s["candidate_error_rate"], s["stable_error_rate"] or 0.0
        if err is not None and err > c.max_error_rate:
            return f"candidate error rate {err:.3f} above max_error_rate {c.max_error_rate:g}"
        if err is not None and err > base + c.max_error_rate_increase:
            return (
                f"candidate error rate {err:.3f} above the stable's {base:.3f} by more than "
                f"{c.max_error_rate_increase:g}"
            )
        p99, base_p99 = s["candidate_p99_latency_seconds"], s["stable_p99_latency_seconds"]
        if (
            p99 is not None
            and base_p99 is not None
            and math.isfinite(p99)
            and p99 > base_p99 * c.max_latency_p99_ratio
            and p99 - base_p99 > MIN_LATENCY_DIFFERENCE_S
        ):
            return (
                f"candidate p99 {p99 * 1e3:.1f} ms above {c.max_latency_p99_ratio:g}x the "
                f"stable's {base_p99 * 1e3:.1f} ms"
            )
        drift = s["candidate_drift_score"]
        if c.max_drift_score is not None and drift is not None and drift > c.max_drift_score:
            return f"candidate drift score {drift:.3f} above max_drift_score {c.max_drift_score:g}"
        return None

    def _verdict(
        self, verdict: str, reason: str, signals: dict[str, float | None]
    ) -> CanaryVerdict:
        previous = self.history[-1].verdict if self.history else None
        v = CanaryVerdict(time.time(), verdict, reason, self.weight, dict(signals))
        self.history.append(v)
        self.verdicts[verdict] += 1
        log.info("canary %s at %g%%: %s (%s)", self.candidate, self.weight, verdict, reason)
        # Recorded when a run of inconclusive analyses starts, not every interval of it (the
        # metrics count each one): thin traffic must not flood the ledger.
        if verdict == "inconclusive" and previous != "inconclusive":
            self._record(
                action="canary_inconclusive",
                target=self.candidate,
                reason=reason,
                signals=signals,
                outcome="pending",
                severity="info",
            )
        self._notify()
        return v

    def _deadline(self, signals: dict[str, float | None]) -> None:
        c = self.config
        why = f"inconclusive for {c.inconclusive_deadline_s:g}s: on_deadline is {c.on_deadline}"
        self._conclusive_at = self._clock()  # hold: say so again after another deadline
        if c.on_deadline == "rollback":
            self.rollback(why, signals)
        elif c.on_deadline == "promote":
            self.promote(why, signals)
        else:
            self._record(
                action="canary_hold",
                target=self.candidate,
                reason=why,
                signals=signals,
                outcome="ok",
                severity="warning",
            )

    def _step_up(self, signals: dict[str, float | None]) -> None:
        steps = self.config.steps_percent
        if self.step + 1 >= len(steps):
            self.promote(f"passed the analysis at every step up to {steps[-1]:g}%", signals)
            return
        self.step += 1
        before, self.weight = self.weight, steps[self.step]
        self._conclusive_at = self._clock()
        self._record(
            action="set_weight",
            target=self.candidate,
            reason=f"analysis passed: weight {before:g}% -> {self.weight:g}%",
            signals=signals,
            outcome="ok",
            severity="info",
        )
        self._notify()

    def promote(self, reason: str, signals: Mapping[str, float | None] | None = None) -> None:
        """Make the candidate the primary, the stable version its first fallback; guard it."""
        others = [n for n in self._configured_order if n not in (self.candidate, self.stable)]
        self._router.set_order(self.candidate, [self.stable, *others])
        self.state, self.weight = "promoted", 100.0
        self._guard_until = self._clock() + self.config.guard_s
        log.warning("canary %s promoted: %s", self.candidate, reason)
        self._record(
            action="promotion",
            target=self.candidate,
            reason=reason,
            signals=dict(signals or {}),
            outcome="ok",
            severity="info",
        )
        self._notify()

    def _guard(self) -> CanaryVerdict | None:
        c = self.config
        now = self._clock()
        if self._guard_until is not None and now >= self._guard_until:
            self.state = "done"
            self._notify()
            return None
        figures = self.local.read(self.candidate, c.interval_s)
        requests, err = figures["requests"] or 0.0, figures["error_rate"]
        signals = {"candidate_requests": requests, "candidate_error_rate": err}
        if self._breaker_state(self.candidate) == "open" or (
            requests >= c.min_requests and err is not None and err > c.max_error_rate
        ):
            reason = (
                f"promoted version failing within guard_s: error rate "
                f"{(err or 0):.3f}, breaker {self._breaker_state(self.candidate)}"
            )
            verdict = self._verdict("fail", reason, signals)
            self.rollback(reason, signals)
            return verdict
        return None

    def rollback(self, reason: str, signals: Mapping[str, float | None] | None = None) -> None:
        """Weight 0 and the configured order back, at once (idempotent)."""
        if self.state not in ("analysing", "promoted"):
            return
        was = self.state
        self.weight = 0.0
        self.state = "rolled_back"
        if was == "promoted":
            primary, *fallbacks = self._configured_order
            self._router.set_order(primary, fallbacks)
        log.warning("canary %s rolled back: %s", self.candidate, reason)
        self._record(
            action="rollback",
            target=self.candidate,
            reason=reason,
            signals=dict(signals or {}),
            outcome="ok",
            severity="critical" if was == "promoted" else "warning",
        )
        self._notify()

    def _notify(self) -> None:
        self._listeners.canary_changed(self)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready, for the admin ``/-/status``."""
        return {
            "candidate": self.candidate,
            "stable": self.stable,
            "state": self.state,
            "weight_percent": self.weight,
            "step": self.step,
            "steps_percent": list(self.config.steps_percent),
            "analyses": [v.to_dict() for v in list(self.history)[-10:]],
        }

    def __repr__(self) -> str:
        return (
            f"CanaryController(candidate={self.candidate!r}, stable={self.stable!r}, "
            f"state={self.state!r}, weight={self.weight:g})"
        )
