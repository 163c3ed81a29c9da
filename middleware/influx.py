"""Background shipping of feature statistics to InfluxDB (the v2 write API).

This module owns the path from a :class:`~mlwarden.middleware.drift.DriftReport` to InfluxDB:
turning a report into line-protocol points, holding them in a bounded buffer, and writing them
in the background without ever blocking the event loop or a request.

Point schema (the dashboards query these names; in VictoriaMetrics measurement ``m`` with
field ``f`` becomes the series ``m_f`` and tags become labels):

``{measurement}`` (default ``mlwarden_feature``), one point per feature and report
    tags ``feature``, ``kind``, ``model``, ``version``; fields ``rows`` (int), ``null_ratio``,
    ``mean`` (numeric features with a value), one field per drift score named after its method
    (``psi``, ``ks``, ``chi2``), ``ks_pvalue`` / ``chi2_pvalue`` (raw) and
    ``ks_pvalue_adjusted`` / ``chi2_pvalue_adjusted`` (after the multiple-testing correction,
    the one the verdict compares) where a test gives them, ``drifted`` (int 0/1).
``{measurement}_summary``, one point per report
    tags ``model``, ``version``; fields ``rows``, ``features``, ``drifted_features``,
    ``drift_detected`` (0/1), ``enough_data`` (0/1), all ints.

Every point carries the report's ``evaluated_at`` as its timestamp (ns precision, rounded to the
microsecond, which is all a float ``time.time()`` holds). Float fields carry 12 significant
digits; non-finite ones are left out, since line protocol cannot carry them. Categories are
tags, never string fields (VictoriaMetrics stores a string field as 0).

How writes behave:

- One write at a time, in a dedicated thread, through ``influxdb_client``'s synchronous
  WriteApi (no batching threads of its own, no retries of its own: ``retries=False``), with
  the client's timeout set from ``timeout_s``. The awaiting side also gives up after
  ``timeout_s`` plus a grace period, so that even a hang the socket timeout cannot see (DNS)
  cannot stall ``flush``; the thread's result is still accounted for when it arrives.
- Connection errors, timeouts and every HTTP error other than 400/422 keep the points buffered
  for the next interval and count ``influx_write_errors``; a warning is logged at most once a
  minute. 400/422 mean the points themselves are bad: that batch is dropped and counted as
  ``influx_points_dropped{reason="rejected"}``.
- The buffer holds at most ``max_buffer_points`` points, the batch being written included;
  when it is full the oldest buffered points make room and are counted as
  ``reason="buffer_full"``. Points still buffered when the shipper closes are counted as
  ``reason="shutdown"``.
- ``influxdb_client`` is imported in the writer thread on the first write: the import takes
  about half a second, which a model server should not spend on its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from mlwarden.middleware.drift import DriftReport
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.health_report import InfluxStatus
from mlwarden.middleware.metrics import MonitorMetrics
from mlwarden.middleware.throttle import Throttle

__all__ = [
    "REJECTED_STATUSES",
    "TOKEN_ENV",
    "InfluxSettings",
    "InfluxShipper",
    "InfluxWriteClient",
    "escape",
    "status_of",
]

log = logging.getLogger("mlwarden.influx")

#: Environment variable that supplies the token when the configuration does not.
TOKEN_ENV = "MLWARDEN_INFLUX_TOKEN"

_KEY = "influx"
_MEASUREMENT_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Statuses that say the points themselves are bad: retrying them can never succeed.
REJECTED_STATUSES = frozenset({400, 422})
_LOG_EVERY_S = 60.0
# How much longer than the client's own timeout the event loop waits for a write.
_GRACE_S = 0.5
# Bound on the caches of escaped names (feature names come from the baseline: it stays small).
_CACHE_MAX = 4096


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True, slots=True)
class InfluxSettings:
    """Where and how to ship feature statistics; validated on creation.

    ``org`` may stay empty for servers that take the organisation from the token (InfluxDB
    Cloud, VictoriaMetrics); InfluxDB OSS 2.x needs it. The token is left out of ``repr``.
    """

    url: str
    bucket: str
    token: str = field(default="", repr=False)
    org: str = ""
    measurement: str = "mlwarden_feature"
    interval_s: float = 10.0
    timeout_s: float = 5.0
    max_buffer_points: int = 10_000
    max_batch_points: int = 5_000

    def __post_init__(self) -> None:
        problems = _problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ConfigError(problems)

    @property
    def summary_measurement(self) -> str:
        """The model-level measurement; derived, so that one setting renames both."""
        return f"{self.measurement}_summary"

    @classmethod
    def from_mapping(
        cls, d: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
    ) -> InfluxSettings:
        """Settings from a configuration mapping (the ``influx:`` block of the YAML file).

        Unknown keys are rejected by name, so that a typo does not silently fall back to a
        default. When ``token`` is absent, null or empty, the environment variable
        ``MLWARDEN_INFLUX_TOKEN`` supplies it: the token is a secret and belongs in the
        environment, not in a configuration file. ``environ`` defaults to ``os.environ``.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{_KEY}: expected a mapping, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        problems = [
            f"{_KEY}.{k}: unknown key (allowed: {', '.join(allowed)})"
            for k in d
            if k not in allowed
        ]
        values = {k: v for k, v in d.items() if k in allowed}
        if values.get("token") in (None, ""):
            values.pop("token", None)
            env_token = (os.environ if environ is None else environ).get(TOKEN_ENV)
            if env_token:
                values["token"] = env_token
        for name in ("url", "bucket"):
            if values.get(name) is None:
                values.pop(name, None)
                problems.append(f"{_KEY}.{name}: required")
        problems += _problems(values)
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def _problems(v: Mapping[str, Any]) -> list[str]:
    """Every problem with the given settings values (absent keys are not checked)."""
    out: list[str] = []

    def bad(name: str, what: str) -> None:
        out.append(f"{_KEY}.{name}: {what}")

    if "url" in v:
        url = v["url"]
        if not isinstance(url, str):
            bad("url", f"must be a string, got {type(url).__name__}")
        else:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError as exc:
                bad("url", f"must be an http(s) URL, got {url!r} ({exc})")
            else:
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    bad("url", f"must be an http:// or https:// URL with a host, got {url!r}")
                elif parts.username is not None or parts.password is not None:
                    bad("url", "must not contain credentials; set influx.token instead")
                elif parts.query or parts.fragment:
                    bad("url", f"must not have a query or fragment, got {url!r}")
    if "bucket" in v:
        b = v["bucket"]
        if not isinstance(b, str) or not b.strip():
            bad("bucket", f"must be a non-empty string, got {b!r}")
    for name in ("token", "org"):
        if name in v and not isinstance(v[name], str):
            bad(name, f"must be a string, got {type(v[name]).__name__}")
    if "measurement" in v:
        m = v["measurement"]
        if not isinstance(m, str) or not _MEASUREMENT_RE.fullmatch(m):
            bad(
                "measurement",
                "must start with a letter and hold only letters, digits and "
                f"'_' (it also names the VictoriaMetrics/Prometheus series), got {m!r}",
            )
    for name, floor in (("interval_s", 0.0), ("timeout_s", 0.001)):
        if name not in v:
            continue
        x = v[name]
        if not _is_number(x) or not math.isfinite(x):
            bad(name, f"must be a finite number of seconds, got {x!r}")
        elif x <= 0:
            bad(name, f"must be > 0, got {x!r}")
        elif x < floor:
            bad(name, f"must be >= {floor} (1 ms), got {x!r}")
    for name in ("max_buffer_points", "max_batch_points"):
        if name in v:
            x = v[name]
            if not isinstance(x, int) or isinstance(x, bool):
                bad(name, f"must be an integer, got {x!r}")
            elif x < 1:
                bad(name, f"must be >= 1, got {x!r}")
    # max_batch_points > max_buffer_points is allowed: a batch is taken from the buffer, so
    # it is never larger than the buffer, and lowering one setting should not force the other.
    return out


# -- line protocol ---------------------------------------------------------------------------

_ESCAPE = str.maketrans(
    {
        "\\": "\\\\",
        ",": "\\,",
        "=": "\\=",
        " ": "\\ ",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
    }
)


def escape(name: object) -> str:
    """A tag key, tag value or field key escaped for line protocol."""
    return str(name).translate(_ESCAPE)


def _float(value: object) -> str | None:
    """A float field value, or None when there is none to send (None, NaN, inf, not a number).

    12 significant digits: far more than a drift statistic means, and 2-4x cheaper than the
    17 of repr() (measured: 0.3-0.9 us against 1.1-2 us a value here). Without an ``i``
    suffix, "0" and "3" are floats in line protocol, so a field's type never changes.
    """
    if type(value) is not float:
        try:
            value = float(value)  # type: ignore[arg-type]  # numpy scalars, ints
        except (TypeError, ValueError):
            return None
    # x - x is 0.0 exactly when x is finite (inf - inf and NaN give NaN); cheaper than isfinite.
    return "%.12g" % value if value - value == 0.0 else None  # noqa: UP031 - fastest here


class _LineBuilder:
    """Turns reports into line-protocol lines; the parts that repeat are built once and cached.

    Hand-built strings, not ``influxdb_client.Point``: measured several times cheaper per
    feature, and ``submit`` runs on the event loop. The caches are keyed by feature names and
    methods, which come from the baseline and the code, and are bounded all the same.
    """

    __slots__ = ("_feature_prefix", "_keys", "_mv", "_summary_prefix", "_tags")

    def __init__(self, measurement: str, summary: str, model: str, version: str) -> None:
        # Tags sorted by key (feature, kind, model, version), as InfluxDB prefers. Empty tag
        # values are left out: line protocol has no empty tag, the whole batch would fail.
        self._mv = "".join(
            f",{k}={escape(x)}" for k, x in (("model", model), ("version", version)) if x
        )
        self._feature_prefix = measurement
        self._summary_prefix = f"{summary}{self._mv} "
        self._tags: dict[tuple[str, str], str] = {}
        self._keys: dict[str, tuple[str, str, str]] = {}

    def _series(self, name: str, kind: str) -> str:
        """Measurement and tags of a feature's point, up to the space before the fields."""
        key = (name, kind)
        series = self._tags.get(key)
        if series is None:
            tags = "".join(f",{k}={escape(x)}" for k, x in (("feature", name), ("kind", kind)) if x)
            series = f"{self._feature_prefix}{tags}{self._mv} "
            if len(self._tags) < _CACHE_MAX:
                self._tags[key] = series
        return series

    def _field_keys(self, method: str) -> tuple[str, str, str]:
        """The field keys of a method's score, raw p-value and adjusted p-value."""
        keys = self._keys.get(method)
        if keys is None:
            m = escape(method)
            keys = (f",{m}=", f",{m}_pvalue=", f",{m}_pvalue_adjusted=")
            if len(self._keys) < _CACHE_MAX:
                self._keys[method] = keys
        return keys

    def lines(self, report: DriftReport) -> list[str]:
        ts = f" {round(report.evaluated_at * 1e6) * 1000}"
        out: list[str] = []
        drifted = 0
        keys = self._field_keys
        for f in report.features:
            rows = f.rows
            fv = f"rows={rows}i" if type(rows) is int else _int_field("rows=", rows)
            value = _float(f.null_ratio)
            if value is not None:
                fv += ",null_ratio=" + value
            if f.mean is not None:
                value = _float(f.mean)
                if value is not None:
                    fv += ",mean=" + value
            for method, score in f.scores.items():
                value = _float(score)
                if value is not None:
                    fv += keys(method)[0] + value
            for method, p in f.pvalues.items():
                value = _float(p)
                if value is not None:
                    fv += keys(method)[1] + value
            for method, p in f.adjusted_pvalues.items():
                value = _float(p)
                if value is not None:
                    fv += keys(method)[2] + value
            if f.drifted:
                drifted += 1
                fv += ",drifted=1i"
            else:
                fv += ",drifted=0i"
            if fv[0] == ",":  # no valid rows value
                fv = fv[1:]
            out.append(self._series(f.name, f.kind) + fv + ts)
        out.append(
            f"{self._summary_prefix}rows={int(report.rows)}i,features={len(report.features)}i,"
            f"drifted_features={drifted}i,drift_detected={1 if drifted else 0}i,"
            f"enough_data={1 if report.enough_data else 0}i{ts}"
        )
        return out


def _int_field(prefix: str, value: object) -> str:
    """``prefix`` + an integer field value, or "" when ``value`` is not an integer."""
    try:
        return f"{prefix}{int(value)}i"  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return ""


# -- the shipper -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    duration_s: float
    error: BaseException | None = None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a failed write, when the server answered."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and status > 0 else None


class InfluxWriteClient:
    """``influxdb_client``'s synchronous write API, opened on the first write.

    ``retries=False``: one attempt per call, the caller's buffer is the retry; the client's
    timeout comes from ``timeout_s``. Imported and opened on the first :meth:`write`, in the
    caller's writer thread (the import is slow). One caller at a time: not thread-safe.
    """

    __slots__ = ("_api", "_client", "settings")

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._api: Any = None

    def write(self, lines: list[str]) -> None:
        """Write ``lines`` (line protocol, ns timestamps); raises what the client raises."""
        api = self._api if self._api is not None else self._open()
        api.write(
            bucket=self.settings.bucket,
            org=self.settings.org,
            record="\n".join(lines).encode(),
            write_precision="ns",
        )

    def _open(self) -> Any:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        s = self.settings
        self._client = InfluxDBClient(
            url=s.url,
            token=s.token,
            org=s.org,
            timeout=max(1, math.ceil(s.timeout_s * 1000)),  # ms; 0 would mean "no timeout"
            retries=False,
            enable_gzip=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        return self._api

    def close(self) -> None:
        """Close the client (it is opened again by the next write); never raises."""
        api, client = self._api, self._client
        self._api = self._client = None
        with contextlib.suppress(Exception):
            if api is not None:
                api.close()
        with contextlib.suppress(Exception):
            if client is not None:
                client.close()


def _describe(exc: BaseException) -> str:
    """A one-line description of a write error (ApiException's str spans many lines)."""
    status = status_of(exc)
    if status is not None:
        body = getattr(exc, "body", None) or ""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        reason = getattr(exc, "reason", "") or ""
        text = f"HTTP {status} {reason}".strip()
        return f"{text}: {str(body).strip()[:300]}" if body else text
    return f"{type(exc).__name__}: {str(exc)[:300]}"


class InfluxShipper:
    """Ships drift reports as points to InfluxDB from a bounded buffer, in the background.

    ``submit`` is called on the event loop and only appends to the buffer; ``run`` (its own
    task) writes a batch every ``interval_s``; ``aclose`` stops it after one last bounded
    flush. All buffer bookkeeping happens on the event loop; only the HTTP write runs in the
    shipper's single writer thread.
    """

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        model: str,
        version: str,
        metrics: MonitorMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.model = model
        self.version = version
        self._clock = clock
        self._lines = _LineBuilder(
            settings.measurement, settings.summary_measurement, model, version
        )
        self._buffer: deque[str] = deque()
        self._inflight = 0
        self._inflight_fut: asyncio.Future[_Outcome] | None = None
        self._lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

        self._written = metrics.influx_points_written.labels(model, version)
        self._dropped_full = metrics.influx_points_dropped.labels(model, version, "buffer_full")
        self._dropped_rejected = metrics.influx_points_dropped.labels(model, version, "rejected")
        self._dropped_shutdown = metrics.influx_points_dropped.labels(model, version, "shutdown")
        self._errors = metrics.influx_write_errors.labels(model, version)
        self._buffered_gauge = metrics.influx_buffer_points.labels(model, version)
        self._duration = metrics.influx_write_duration.labels(model, version)
        self._buffered_gauge.set(0)

        self._error_log = Throttle(clock, _LOG_EVERY_S)
        self._reject_log = Throttle(clock, _LOG_EVERY_S)
        self._submit_log = Throttle(clock, _LOG_EVERY_S)
        self._recovery_log = Throttle(clock, _LOG_EVERY_S)
        self._failures = 0
        self._last_success_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None

        # Opened lazily in the writer thread (see the module docstring).
        self._writer = InfluxWriteClient(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlwarden-influx")
        self._executor_used = False

    def __repr__(self) -> str:
        return (
            f"InfluxShipper(url={self.settings.url!r}, bucket={self.settings.bucket!r}, "
            f"model={self.model!r}, version={self.version!r}, buffered={self.buffered})"
        )

    @property
    def buffered(self) -> int:
        """Points waiting to be written, the batch being written included."""
        return len(self._buffer) + self._inflight

    def status(self) -> InfluxStatus:
        """The health report's ``influx`` block (no secrets)."""
        return InfluxStatus(
            buffered_points=self.buffered,
            max_buffer_points=self.settings.max_buffer_points,
            write_in_flight=self._inflight_fut is not None,
            consecutive_failures=self._failures,
            last_success_at=self._last_success_at,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
        )

    # -- producer side (event loop) ------------------------------------------------------------

    def submit(self, report: DriftReport) -> None:
        """Buffer the report's points; never blocks, never raises.

        Called on the event loop after each drift evaluation. When the buffer is full the
        oldest buffered points are dropped and counted: recent statistics are worth more.
        """
        try:
            if self._closed:
                self._dropped_shutdown.inc(len(report.features) + 1)
                return
            lines = self._lines.lines(report)
            buf = self._buffer
            buf.extend(lines)
            excess = len(buf) + self._inflight - self.settings.max_buffer_points
            if excess > 0:
                popleft = buf.popleft
                for _ in range(excess):
                    popleft()
                self._dropped_full.inc(excess)
            self._buffered_gauge.set(len(buf) + self._inflight)
        except Exception:
            if self._submit_log.ready():
                log.warning(
                    "mlwarden: could not turn a drift report into InfluxDB points", exc_info=True
                )

    # -- writer side ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Write a batch of up to ``max_batch_points`` every ``interval_s`` until cancelled.

        Meant to be its own task. ``aclose`` stops it (run then returns normally) without
        cancelling the task that awaits it.
        """
        if self._runner is not None and not self._runner.done():
            raise RuntimeError("InfluxShipper.run() is already running")
        if self._closing:
            return
        self._runner = asyncio.get_running_loop().create_task(
            self._run_forever(), name="mlwarden-influx-writer"
        )
        try:
            await self._runner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and (current is None or current.cancelling() == 0):
                return
            raise

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.interval_s
        next_at = loop.time() + interval
        # Checked on every round as well as cancelled: on Python 3.11, wait_for can swallow a
        # cancellation that arrives just as the awaited future completes.
        while not self._closing:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            # A fixed schedule that skips ticks rather than bunching them after a slow write.
            next_at = max(next_at + interval, loop.time())
            try:
                async with self._lock:
                    await self._write_batch(self.settings.max_batch_points)
            except Exception:  # a bug here must not end shipping for the process's lifetime
                log.exception("mlwarden: InfluxDB shipping tick failed")

    async def flush(self) -> None:
        """Write what is buffered now, batch by batch; stop at the first failed batch.

        Waits for a write already in flight first (at most one at a time), so it returns within
        about two write timeouts at worst, one when nothing else is writing.
        """
        async with self._lock:
            if self._inflight_fut is not None:  # a write whose waiter gave up or was cancelled
                await asyncio.wait({self._inflight_fut}, timeout=self._wait_s)
            remaining = len(self._buffer)
            while remaining > 0:
                n = min(remaining, self.settings.max_batch_points)
                if await self._write_batch(n) != "ok":
                    return
                remaining = min(remaining - n, len(self._buffer))

    @property
    def _wait_s(self) -> float:
        return self.settings.timeout_s + _GRACE_S

    async def _write_batch(self, limit: int) -> str:
        """Write up to ``limit`` of the oldest points; the caller holds the lock.

        Returns "ok", "rejected", "error", "timeout", "busy", "empty" or "closed". The outcome
        is accounted for by ``_settle`` when the thread finishes, even if this wait gave up.
        """
        if self._closed:
            return "closed"
        if self._inflight_fut is not None:
            return "busy"
        buf = self._buffer
        n = min(limit, len(buf))
        if n == 0:
            return "empty"
        popleft = buf.popleft
        batch = [popleft() for _ in range(n)]
        self._inflight = n
        self._executor_used = True
        fut = asyncio.wrap_future(self._executor.submit(self._post, batch))
        self._inflight_fut = fut
        fut.add_done_callback(partial(self._settle, batch))
        # asyncio.wait, not wait_for: giving up must not cancel the future (the write goes on
        # in the thread and _settle still accounts for it), and a cancellation of this task
        # must never be swallowed.
        await asyncio.wait({fut}, timeout=self._wait_s)
        if not fut.done():
            return "timeout"  # the thread's own timeout will end it
        outcome = fut.result()
        if outcome.error is None:
            return "ok"
        return "rejected" if status_of(outcome.error) in REJECTED_STATUSES else "error"

    def _post(self, batch: list[str]) -> _Outcome:
        """The blocking write, in the writer thread: returns the outcome, never raises."""
        start = time.perf_counter()
        try:
            self._writer.write(batch)
        except Exception as exc:
            return _Outcome(time.perf_counter() - start, exc)
        return _Outcome(time.perf_counter() - start)

    def _settle(self, batch: list[str], fut: asyncio.Future[_Outcome]) -> None:
        """Account for a finished write, on the event loop."""
        self._inflight = 0
        self._inflight_fut = None
        # Cancelled cannot happen (nothing cancels it), but never lose points silently.
        outcome = _Outcome(0.0, asyncio.CancelledError()) if fut.cancelled() else fut.result()
        self._duration.observe(outcome.duration_s)
        exc = outcome.error
        n = len(batch)
        if exc is None:
            self._written.inc(n)
            self._last_success_at = self._clock()
            if self._failures:
                if self._recovery_log.ready():
                    log.info(
                        "mlwarden: InfluxDB writes to %s recovered after %d failed attempts",
                        self.settings.url,
                        self._failures,
                    )
                self._failures = 0
        elif status_of(exc) in REJECTED_STATUSES:
            self._dropped_rejected.inc(n)
            self._last_error, self._last_error_at = _describe(exc), self._clock()
            if self._reject_log.ready():
                log.warning(
                    "mlwarden: InfluxDB at %s rejected %d points, dropped (%s)%s",
                    self.settings.url,
                    n,
                    _describe(exc),
                    _suppressed_note(self._reject_log.take_suppressed()),
                )
        else:
            self._errors.inc()
            if self._closed:
                self._dropped_shutdown.inc(n)
            else:
                # Back to the front: these are the oldest points. The buffer's bound holds,
                # since submit kept room for them while they were in flight.
                self._buffer.extendleft(reversed(batch))
            self._note_error(_describe(exc))
        self._buffered_gauge.set(len(self._buffer) + self._inflight)

    def _note_error(self, description: str) -> None:
        self._failures += 1
        self._last_error, self._last_error_at = description, self._clock()
        if self._error_log.ready():
            log.warning(
                "mlwarden: writing to InfluxDB at %s failed, %d points kept for the next "
                "attempt (%s)%s",
                self.settings.url,
                self.buffered,
                description,
                _suppressed_note(self._error_log.take_suppressed()),
            )

    async def aclose(self, *, timeout_s: float = 2.0) -> None:
        """Stop ``run``, make one last flush attempt within ``timeout_s``, close the client.

        Points that could not be written by then are dropped and counted (reason
        ``shutdown``). A write still hanging in the thread is left to its own timeout.
        """
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        try:
            runner = self._runner
            if runner is not None and not runner.done():
                runner.cancel()
                await asyncio.wait({runner}, timeout=max(0.0, deadline - loop.time()))
            left = deadline - loop.time()
            if left > 0 and (self._buffer or self._inflight_fut is not None):
                last = loop.create_task(self.flush(), name="mlwarden-influx-last-flush")
                try:
                    await asyncio.wait({last}, timeout=left)
                finally:
                    if not last.done():
                        last.cancel()  # it only waits on the lock or the thread: ends at once
                        await asyncio.wait({last}, timeout=1.0)
        finally:
            self._closed = True
            lost = len(self._buffer)
            self._buffer.clear()
            if lost:
                self._dropped_shutdown.inc(lost)
                log.warning(
                    "mlwarden: %d points for InfluxDB were not written before shutdown", lost
                )
            self._buffered_gauge.set(self._inflight)
            if self._executor_used:
                # Queued behind a hanging write, if any, so the client is never closed under it.
                closing = asyncio.wrap_future(self._executor.submit(self._writer.close))
                left = deadline - loop.time()
                if left > 0:
                    await asyncio.wait({closing}, timeout=left)
            self._executor.shutdown(wait=False)


def _suppressed_note(n: int) -> str:
    return f"; {n} similar messages suppressed in the last minute" if n else ""
