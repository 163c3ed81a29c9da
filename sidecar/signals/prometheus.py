"""Signals of the whole fleet, from PromQL over every replica's metrics.

With ``canary.source: prometheus`` the canary analysis reads an upstream's requests, error
rate and p99 latency from a Prometheus server that scrapes every sidecar replica, so the
verdict is the fleet's, not one sidecar's. Queries run in :meth:`PrometheusSignals.refresh`
(the analysis loop awaits it); :meth:`~PrometheusSignals.read` answers from what the last
refresh fetched. A query that fails, times out or returns nothing gives None: the analysis is
then inconclusive, never decided on missing data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import httpx

from mlwarden.sidecar.signals.outcomes import ERROR_OUTCOMES
from mlwarden.sidecar.signals.source import SignalSource

__all__ = ["PROMQL", "PrometheusSignals"]

log = logging.getLogger("mlwarden.sidecar.signals")

_ERRORS_RE = "|".join(sorted(ERROR_OUTCOMES))

#: PromQL of each figure; ``$upstream`` and ``$window`` are filled in. Errors are what the
#: sidecar's own windows count (:data:`~mlwarden.sidecar.signals.outcomes.ERROR_OUTCOMES`).
PROMQL: dict[str, str] = {
    "requests": 'sum(increase(mlwarden_upstream_requests_total{upstream="$upstream"}[$window]))',
    "error_rate": (
        'sum(rate(mlwarden_upstream_requests_total{upstream="$upstream",'
        f'outcome=~"{_ERRORS_RE}"}}[$window]))'
        ' / sum(rate(mlwarden_upstream_requests_total{upstream="$upstream"}[$window]))'
    ),
    "p99_latency_seconds": (
        "histogram_quantile(0.99, sum by (le) (rate("
        'mlwarden_upstream_request_duration_seconds_bucket{upstream="$upstream"}[$window])))'
    ),
}


#: The fleet's latency histogram of an upstream over the window: cumulative counts by ``le``.
HISTOGRAM_PROMQL = (
    "sum by (le) (increase("
    'mlwarden_upstream_request_duration_seconds_bucket{upstream="$upstream"}[$window]))'
)
#: At most this many buckets are kept from an answer (the sidecar exports 15).
MAX_BUCKETS = 64


class PrometheusSignals(SignalSource):
    """Fleet-wide figures of an upstream from the Prometheus at ``url``.

    Declares no signals of its own for the policy language: it answers the same names as the
    local windows (``requests``, ``error_rate``, ``p99_latency_seconds``) for the fleet.
    """

    SIGNALS = ()
    NAMES = tuple(PROMQL)

    def __init__(
        self, url: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/query"
        self._owns = client is None
        self._client = client  # made on first use, in the loop that closes it
        self._timeout_s = timeout_s
        self._fetched: dict[tuple[str, float], dict[str, float | None]] = {}
        self.errors_total = 0

    async def query(self, promql: str) -> float | None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, trust_env=False)
        try:
            response = await self._client.get(self.url, params={"query": promql})
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.errors_total += 1
            log.warning("Prometheus query failed (%s): %s", type(exc).__name__, promql)
            return None
        result = data.get("data", {}).get("result") if isinstance(data, dict) else None
        if data.get("status") != "success" or not result:
            return None
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    async def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Every series of an instant vector (labels, value); [] when the query fails."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, trust_env=False)
        try:
            response = await self._client.get(self.url, params={"query": promql})
            data = response.json()
            result = data["data"]["result"] if data.get("status") == "success" else []
            out = []
            for item in result[:MAX_BUCKETS]:
                value = float(item["value"][1])
                if math.isfinite(value):
                    out.append((dict(item["metric"]), value))
            return out
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.errors_total += 1
            log.warning("Prometheus query failed (%s): %s", type(exc).__name__, promql)
            return []

    async def histogram(self, target: str, window: str) -> tuple[list[float], list[float]]:
        """(upper bounds, counts per bucket) of ``target``'s attempt latencies, from the
        fleet's cumulative buckets; empty when unknown."""
        promql = HISTOGRAM_PROMQL.replace("$upstream", target).replace("$window", window)
        pairs = []
        for labels, value in await self.query_vector(promql):
            try:
                pairs.append((float(labels["le"]), value))
            except (KeyError, ValueError):
                continue
        pairs.sort()
        bounds, counts, previous = [], [], 0.0
        for bound, cumulative in pairs:
            bounds.append(bound)
            counts.append(max(0.0, cumulative - previous))
            previous = max(previous, cumulative)
        return bounds, counts

    async def refresh(self, targets: Iterable[str], window_s: float) -> None:
        window = f"{max(1, math.ceil(window_s))}s"
        fetched: dict[tuple[str, float], dict[str, Any]] = {}
        for target in targets:
            values: dict[str, Any] = {}
            for name, template in PROMQL.items():
                promql = template.replace("$upstream", target).replace("$window", window)
                values[name] = await self.query(promql)
            requests = values["requests"]
            values["requests"] = float(round(requests)) if requests is not None else 0.0
            values["latency_histogram"] = await self.histogram(target, window)
            fetched[(target, window_s)] = values
        self._fetched = fetched  # bounded: the targets of the last refresh only

    def read(self, target: str, window_s: float) -> dict[str, Any]:
        """The figures of the last refresh (``latency_histogram``: bounds and counts)."""
        return dict(
            self._fetched.get((target, window_s))
            or {**dict.fromkeys(PROMQL), "latency_histogram": ([], [])}
        )

    async def aclose(self) -> None:
        if self._owns and self._client is not None:
            await self._client.aclose()
            self._client = None
