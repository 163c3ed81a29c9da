"""The proxy's per-request metrics, counted by a listener on the request path.

:class:`ProxyMetrics` hears the proxy's :class:`~mlwarden.sidecar.listeners.Listener` hooks
and records them in the middleware's lean collectors (:mod:`mlwarden.middleware.fastmetrics`):
``mlwarden_proxy_requests_total``, ``mlwarden_proxy_request_duration_seconds``,
``mlwarden_upstream_requests_total``, ``mlwarden_upstream_request_duration_seconds``,
``mlwarden_retries_total``, ``mlwarden_fallbacks_total`` and
``mlwarden_proxy_paths_refused_total`` (see
:mod:`mlwarden.sidecar.metrics` for every name the sidecar exports).
"""

from __future__ import annotations

from mlwarden.middleware.fastmetrics import FastCounter, FastFamilies, FastHistogram
from mlwarden.sidecar.listeners import Listener
from mlwarden.sidecar.operational_paths import REFUSED_LABELS
from mlwarden.sidecar.signals.outcomes import status_class

__all__ = ["PROXY_LATENCY_BUCKETS", "ProxyMetrics"]

#: Proxy and upstream latencies: 0.5 ms (the proxy's own cost) to 30 s (the default deadline).
PROXY_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_SELF = "none"


class ProxyMetrics(Listener):
    """The proxy's per-request metrics: what :class:`Listener` hooks report, counted.

    Children are cached per label set so that a hook costs a dict lookup and one locked add.
    """

    def __init__(self, families: FastFamilies) -> None:
        self.requests = FastCounter(
            "mlwarden_proxy_requests_total",
            "Client requests by the upstream that answered ('none': the sidecar itself) and "
            "the status class sent.",
            ("upstream", "code"),
        )
        self.duration = FastHistogram(
            "mlwarden_proxy_request_duration_seconds",
            "Client request time in the sidecar, arrival to last byte, retries and fallbacks "
            "included.",
            ("upstream",),
            PROXY_LATENCY_BUCKETS,
        )
        self.attempts = FastCounter(
            "mlwarden_upstream_requests_total",
            "Requests sent to each upstream (every attempt), by outcome: the status class, "
            "or connect_error, timeout, reset.",
            ("upstream", "outcome"),
        )
        self.attempt_duration = FastHistogram(
            "mlwarden_upstream_request_duration_seconds",
            "Time of each attempt on an upstream, from sending to the last byte relayed or "
            "the decision to retry.",
            ("upstream",),
            PROXY_LATENCY_BUCKETS,
        )
        self.retries = FastCounter(
            "mlwarden_retries_total",
            "Retries on the same upstream, by the retriable outcome that caused them.",
            ("upstream", "reason"),
        )
        self.fallbacks = FastCounter(
            "mlwarden_fallbacks_total",
            "Requests moved on from one upstream to the next, and why.",
            ("from", "to", "reason"),
        )
        self.refused = FastCounter(
            "mlwarden_proxy_paths_refused_total",
            "Requests for the model's operational paths (/metrics, /-/health, /-/feedback, "
            "other /-/ paths) answered 404 on the public port instead of forwarded.",
            ("path",),
        )
        for family in (
            self.refused,
            self.requests,
            self.duration,
            self.attempts,
            self.attempt_duration,
            self.retries,
            self.fallbacks,
        ):
            families.add(family)
        self._children: dict[tuple[str, ...], object] = {}

    def prepare(self, upstreams: list[str]) -> None:
        """Create the common series at 0, so that ``rate()`` sees their first increase."""
        for name in upstreams:
            for code in ("2xx", "4xx", "5xx"):
                self.requests.labels(name, code)
            self.duration.labels(name)
            for outcome in ("2xx", "5xx", "connect_error", "timeout"):
                self.attempts.labels(name, outcome)
            self.attempt_duration.labels(name)
        self.requests.labels(_SELF, "5xx")
        for path in REFUSED_LABELS:
            self.refused.labels(path)

    def request_finished(self, upstream: str | None, status: int, duration_s: float) -> None:
        who = upstream or _SELF
        cache = self._children
        key = ("r", who, status_class(status))
        counter = cache.get(key)
        if counter is None:
            counter = cache[key] = self.requests.labels(who, key[2])
        counter.inc()  # type: ignore[attr-defined]
        key = ("d", who)
        histogram = cache.get(key)
        if histogram is None:
            histogram = cache[key] = self.duration.labels(who)
        histogram.observe(duration_s)  # type: ignore[attr-defined]

    def attempt_finished(self, upstream: str, outcome: str, duration_s: float) -> None:
        cache = self._children
        key = ("a", upstream, outcome)
        counter = cache.get(key)
        if counter is None:
            counter = cache[key] = self.attempts.labels(upstream, outcome)
        counter.inc()  # type: ignore[attr-defined]
        key = ("ad", upstream)
        histogram = cache.get(key)
        if histogram is None:
            histogram = cache[key] = self.attempt_duration.labels(upstream)
        histogram.observe(duration_s)  # type: ignore[attr-defined]

    def path_refused(self, path: str) -> None:
        self.refused.labels(path).inc()  # type: ignore[attr-defined]

    def retried(self, upstream: str, reason: str) -> None:
        self.retries.labels(upstream, reason).inc()  # type: ignore[attr-defined]

    def fell_back(self, source: str, target: str, reason: str) -> None:
        self.fallbacks.labels(source, target, reason).inc()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return "ProxyMetrics()"
