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

import numpy as np

from mlwarden.sidecar.config import CanaryConfig
from mlwarden.sidecar.listeners import FanOut, Listener
from mlwarden.sidecar.routing.canary_judge import (
    Evidence,
    judge_errors,
    judge_latency,
    judge_latency_binned,
)
from mlwarden.sidecar.routing.router import Router
from mlwarden.sidecar.signals.samples import IntervalSamples
from mlwarden.sidecar.signals.source import SignalSource

__all__ = ["CanaryController", "CanaryVerdict", "sticky_bucket"]

log = logging.getLogger("mlwarden.sidecar.canary")

#: A p99 above the stable's by less than this is noise, whatever the ratio.
MIN_LATENCY_DIFFERENCE_S = 0.005
_HISTORY = 50

Record = Callable[..., Any]


Figures = dict[str, float | None]


def _details(evidence: tuple[Evidence, ...]) -> dict[str, Any] | None:
    """The tests' evidence as a ledger record's details."""
    return {"evidence": [e.to_dict() for e in evidence]} if evidence else None


def _quantile(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


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
    #: Each test's evidence (metric, test, statistic, p-value, sample sizes, effect size).
    evidence: tuple[Evidence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "verdict": self.verdict,
            "reason": self.reason,
            "weight_percent": self.weight_percent,
            "signals": self.signals,
            "evidence": [e.to_dict() for e in self.evidence],
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
        samples: IntervalSamples | None = None,
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
        self.samples = samples
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
        #: Failed analyses in a row (a pass starts again at 0; inconclusive ones do not count).
        self.failures = 0
        #: Whether this sidecar takes the canary's decisions (a fleet's follower does not: it
        #: adopts its leader's, :meth:`adopt`).
        self.decides: Callable[[], bool] = lambda: True
        self._bootstrap = np.random.default_rng()

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
        if (
            name == self.candidate
            and new == "open"
            and self.state in ("analysing", "promoted")
            and self.decides()
        ):
            self.rollback(f"breaker of {name} opened ({reason})", {"breaker_open": 1.0})

    # -- decisions -------------------------------------------------------------------------

    def _figures(self) -> tuple[dict[str, float | None], int, int, tuple[Evidence, ...]]:
        """The analysis's figures, their sample sizes and the tests' evidence."""
        c = self.config
        window = c.interval_s
        drift = self.local.read(self.candidate, window).get("drift_score")
        if self.samples is not None and self.fleet is None:
            cand, stable = self.samples.read(self.candidate), self.samples.read(self.stable)
            n_c, n_s = cand.attempts, stable.attempts
            errors_c, errors_s = cand.errors, stable.errors
            evidence: list[Evidence] = []
            if n_c >= c.min_requests and n_s >= c.min_requests:
                evidence.append(self._judge_errors(errors_c, n_c, errors_s, n_s))
                evidence.append(
                    judge_latency(
                        cand.latencies_s,
                        stable.latencies_s,
                        alpha=c.alpha,
                        max_latency_ratio=c.max_latency_ratio,
                        max_latency_p99_ratio=c.max_latency_p99_ratio,
                        rng=self._bootstrap,
                    )
                )
            signals: dict[str, float | None] = {
                "candidate_requests": float(n_c),
                "stable_requests": float(n_s),
                "candidate_error_rate": errors_c / n_c if n_c else None,
                "stable_error_rate": errors_s / n_s if n_s else None,
                "candidate_median_latency_seconds": _quantile(cand.latencies_s, 0.5),
                "stable_median_latency_seconds": _quantile(stable.latencies_s, 0.5),
                "candidate_p99_latency_seconds": _quantile(cand.latencies_s, 0.99),
                "stable_p99_latency_seconds": _quantile(stable.latencies_s, 0.99),
                "candidate_drift_score": drift,
            }
            return signals, n_c, n_s, tuple(evidence)
        # The fleet's figures (PromQL): counts for the error test; latency from histograms.
        traffic = self.fleet if self.fleet is not None else self.local
        cand_f, stable_f = traffic.read(self.candidate, window), traffic.read(self.stable, window)
        n_c, n_s = int(cand_f["requests"] or 0), int(stable_f["requests"] or 0)
        signals = {
            "candidate_requests": float(n_c),
            "stable_requests": float(n_s),
            "candidate_error_rate": cand_f["error_rate"],
            "stable_error_rate": stable_f["error_rate"],
            "candidate_p99_latency_seconds": cand_f["p99_latency_seconds"],
            "stable_p99_latency_seconds": stable_f["p99_latency_seconds"],
            "candidate_drift_score": drift,
        }
        evidence = []
        if n_c >= c.min_requests and n_s >= c.min_requests:
            errors_c = round((cand_f["error_rate"] or 0.0) * n_c)
            errors_s = round((stable_f["error_rate"] or 0.0) * n_s)
            evidence.append(self._judge_errors(errors_c, n_c, errors_s, n_s))
            bounds_c, counts_c = cand_f.get("latency_histogram") or ([], [])
            bounds_s, counts_s = stable_f.get("latency_histogram") or ([], [])
            if bounds_c and bounds_c == bounds_s:
                evidence.append(
                    judge_latency_binned(
                        bounds_c,
                        counts_c,
                        counts_s,
                        alpha=c.alpha,
                        max_latency_ratio=c.max_latency_ratio,
                        rng=self._bootstrap,
                    )
                )
        return signals, n_c, n_s, tuple(evidence)

    def _judge_errors(self, errors_c: int, n_c: int, errors_s: int, n_s: int) -> Evidence:
        c = self.config
        return judge_errors(
            errors_c,
            n_c,
            errors_s,
            n_s,
            alpha=c.alpha,
            max_error_rate=c.max_error_rate,
            max_error_rate_increase=c.max_error_rate_increase,
        )

    def _analyse(self) -> CanaryVerdict:
        c = self.config
        signals, n_cand, n_stable, evidence = self._figures()
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
        failures = [e for e in evidence if e.failed]
        other = self._failure(signals)
        if failures or other is not None:
            self._conclusive_at = now
            self.failures += 1
            reason = "; ".join([*(e.reason for e in failures), *([other] if other else [])])
            verdict = self._verdict("fail", reason, signals, evidence)
            unmistakable = any(e.unmistakable for e in failures)
            if unmistakable or self.failures >= c.failure_limit:
                why = (
                    "beyond any noise"
                    if unmistakable and self.failures < c.failure_limit
                    else f"{self.failures} failed analyses in a row "
                    f"(failure_limit {c.failure_limit})"
                )
                self.rollback(f"{reason} ({why})", signals, evidence)
            return verdict
        if evidence and not all(e.passed for e in evidence):
            # Neither test failed, but the samples do not yet show the candidate is within the
            # tolerances: keep them (and the failure count) and look again next interval.
            reason = "not enough evidence yet: " + "; ".join(
                e.reason for e in evidence if not e.passed
            )
            verdict = self._verdict("inconclusive", reason, signals, evidence)
            if now - self._conclusive_at >= c.inconclusive_deadline_s:
                self._deadline(signals)
            return verdict
        self._conclusive_at = now
        self.failures = 0
        verdict = self._verdict("pass", "within every bound", signals, evidence)
        self._step_up(signals, evidence)
        return verdict

    def _failure(self, s: Mapping[str, float | None]) -> str | None:
        """What fails the candidate besides the tests: its drift, and (the fleet's figures,
        without samples to rank) a p99 above ``max_latency_p99_ratio`` times the stable's."""
        c = self.config
        drift = s["candidate_drift_score"]
        if c.max_drift_score is not None and drift is not None and drift > c.max_drift_score:
            return f"candidate drift score {drift:.3f} above max_drift_score {c.max_drift_score:g}"
        if self.samples is not None and self.fleet is None:
            return None
        if self.fleet is not None:
            return None  # the fleet's histograms are ranked (judge_latency_binned)
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
        return None

    def _verdict(
        self,
        verdict: str,
        reason: str,
        signals: dict[str, float | None],
        evidence: tuple[Evidence, ...] = (),
    ) -> CanaryVerdict:
        previous = self.history[-1].verdict if self.history else None
        v = CanaryVerdict(time.time(), verdict, reason, self.weight, dict(signals), evidence)
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

    def _step_up(
        self, signals: dict[str, float | None], evidence: tuple[Evidence, ...] = ()
    ) -> None:
        if self.samples is not None:
            self.samples.reset()  # the next step is judged on its own samples
        steps = self.config.steps_percent
        if self.step + 1 >= len(steps):
            self.promote(
                f"passed the analysis at every step up to {steps[-1]:g}%", signals, evidence
            )
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
            details=_details(evidence),
        )
        self._notify()

    def promote(
        self,
        reason: str,
        signals: Mapping[str, float | None] | None = None,
        evidence: tuple[Evidence, ...] = (),
    ) -> None:
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
            details=_details(evidence),
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

    def rollback(
        self,
        reason: str,
        signals: Mapping[str, float | None] | None = None,
        evidence: tuple[Evidence, ...] = (),
    ) -> None:
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
            details=_details(evidence),
        )
        self._notify()

    def adopt(self, state: str, weight: float, step: int) -> bool:
        """Take a decision made elsewhere (the fleet's leader) as this canary's state, routing
        included, without recording it (the leader did); whether anything changed."""
        if (state, weight, step) == (self.state, self.weight, self.step):
            return False
        was = self.state
        if step != self.step and self.samples is not None:
            self.samples.reset()
        self.step, self.weight = step, weight
        if state in ("promoted", "done") and was not in ("promoted", "done"):
            others = [n for n in self._configured_order if n not in (self.candidate, self.stable)]
            self._router.set_order(self.candidate, [self.stable, *others])
            self._guard_until = self._clock() + self.config.guard_s
        elif state in ("analysing", "rolled_back") and was in ("promoted", "done"):
            primary, *fallbacks = self._configured_order
            self._router.set_order(primary, fallbacks)
        self.state = state
        self._conclusive_at = self._clock()
        log.info("canary %s: %s at %g%% (the fleet's decision)", self.candidate, state, weight)
        self._notify()
        return True

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
