"""The sidecar's configuration: one YAML file plus environment overrides → frozen, validated config.

This module owns reading, overriding and validating the configuration; nothing else in the
sidecar parses YAML or reads ``MLWARDEN__*`` variables. Every problem is collected first and
then raised once as :class:`~mlwarden.middleware.errors.ConfigError`, each entry naming the key
path, the bad value and what is allowed, so that one start-up shows all of them.

The smallest configuration is two URLs (the first upstream is the primary, the others are its
fallbacks, in order)::

    upstreams:
      primary: http://127.0.0.1:8001
      stable: http://127.0.0.1:8002

Names follow Envoy's (``num_retries``, ``retry_on``, ``per_try_timeout``, ``consecutive_5xx``,
``base_interval``) with the unit in the name (``_s`` seconds, ``_bytes``, ``_percent``).

Environment overrides, applied to the file's content before validation:

- ``MLWARDEN__<SEGMENT>__<SEGMENT>...=<value>`` sets one key; ``__`` separates the path
  segments, which match existing keys case-insensitively (new keys are lower-cased), e.g.
  ``MLWARDEN__RETRY__NUM_RETRIES=3`` or ``MLWARDEN__UPSTREAMS__STABLE__URL=http://10.0.0.7:80``.
  Values are parsed as YAML (``3``, ``2.5``, ``true``, ``null``, ``[5xx, reset]``), except text
  settings (URLs, hosts, names, tokens, paths, bodies), which are taken verbatim so that a
  token such as ``0123`` stays a string. ``retry_on`` and ``retriable_methods`` also take
  Envoy's comma-separated spelling (``5xx,reset``). A problem a variable caused names it.
- ``MLWARDEN_ADMIN_TOKEN`` supplies ``admin.token`` when the file and overrides leave it unset:
  a secret belongs in the environment (a Kubernetes Secret), not in a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import yaml

from mlwarden.middleware.errors import ConfigError

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ENV_PREFIX",
    "RETRY_ON",
    "AdminConfig",
    "BreakerConfig",
    "CanaryConfig",
    "DegradedResponseConfig",
    "EscalationConfig",
    "HealingConfig",
    "HealthChecksConfig",
    "LedgerConfig",
    "LimitsConfig",
    "ListenConfig",
    "PolicyAction",
    "PolicyConfig",
    "RetryConfig",
    "RoutingConfig",
    "ShadowTrafficConfig",
    "SidecarConfig",
    "TimeoutsConfig",
    "TracingConfig",
    "UpstreamConfig",
    "load_config",
]

#: Prefix of the variables that override single keys (``MLWARDEN__RETRY__NUM_RETRIES=3``).
ENV_PREFIX = "MLWARDEN__"
#: Variable that supplies ``admin.token`` when the configuration leaves it unset.
ADMIN_TOKEN_ENV = "MLWARDEN_ADMIN_TOKEN"
#: The retry conditions, Envoy's words: ``5xx`` is any 5xx status and connect failures,
#: ``gateway-error`` is 502/503/504, ``retriable-status-codes`` is ``retry.retriable_status_codes``.
RETRY_ON = frozenset(
    {"connect-failure", "reset", "timeout", "retriable-status-codes", "5xx", "gateway-error"}
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOST_RE = re.compile(r"[A-Za-z0-9_.:\[\]-]+")
_MIN_TOKEN_CHARS = 16
# Words other tools use for our keys: a typo hint cannot find these by spelling.
_SYNONYMS = {
    "fail_max": "consecutive_5xx",
    "max_retries": "num_retries",
    "retries": "num_retries",
    "attempts": "num_retries",
    "per_try_timeout": "per_try_timeout_s",
    "timeout": "total_timeout_s",
    "base_interval": "base_interval_s",
    "max_interval": "max_interval_s",
    "reset_timeout": "reset_timeout_s",
    "interval": "interval_s",
}
# Leaf keys whose environment values are text, taken verbatim rather than parsed as YAML.
_TEXT_KEYS = frozenset(
    {
        "url",
        "host",
        "token",
        "redis_url",
        "primary",
        "health_path",
        "body",
        "content_type",
        "otlp_endpoint",
        "service_name",
        "ca_file",
        "path",
        "influx_url",
        "influx_bucket",
        "influx_org",
        "influx_token",
    }
)


class _Bad(Exception):
    """One value is invalid; the message says what was expected and what was found."""


# --------------------------------------------------------------------------- value checks
# A check takes a raw value and returns it normalised (lists become tuples, ints floats where a
# float is expected) or raises _Bad. Checks accept their own output, since __post_init__ runs
# them again on direct construction.

Check = Callable[[Any], Any]


def _show(value: Any) -> str:
    """The value as a message quotes it, cut short: a message is read, not a data dump."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bound(x: float) -> str:
    return f"{x:_}" if isinstance(x, int) and x >= 100_000 else f"{x:g}"


def _number(
    kind: type[int] | type[float],
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    unit: str = "",
) -> Check:
    bounds = [
        f"> {_bound(gt)}" if gt is not None else "",
        f">= {_bound(ge)}" if ge is not None else "",
        f"< {_bound(lt)}" if lt is not None else "",
        f"<= {_bound(le)}" if le is not None else "",
    ]
    noun = "a whole number" if kind is int else "a number"
    want = " ".join(p for p in (noun + unit, " and ".join(b for b in bounds if b)) if p)

    def check(value: Any) -> Any:
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if (
            not ok_type
            or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise _Bad(f"expected {want}, got {_show(value)}")
        if (
            (gt is not None and value <= gt)
            or (ge is not None and value < ge)
            or (lt is not None and value >= lt)
            or (le is not None and value > le)
        ):
            raise _Bad(f"expected {want}, got {_show(value)}")
        try:
            return kind(value)
        except OverflowError:  # an int beyond float's range, where there is no upper bound
            raise _Bad(f"expected {want}, got an integer too large") from None

    return check


def _seconds(**bounds: float) -> Check:
    return _number(float, unit=" of seconds", **bounds)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


def _port(value: Any) -> int:
    return _number(int, ge=0, le=65535)(value)  # 0: an OS-assigned port (tests)


def _host(value: Any) -> str:
    if not isinstance(value, str) or not _HOST_RE.fullmatch(value):
        raise _Bad(f"expected a host name or IP address such as 0.0.0.0, got {_show(value)}")
    return value


def _url_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " ?#"):
        raise _Bad(f"expected a URL path starting with '/', without query, got {_show(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a non-empty string, got {_show(value)}")
    return value


def _http_url(value: Any) -> str:
    want = "expected an http(s) URL with a host"
    if not isinstance(value, str):
        raise _Bad(f"{want}, got {_show(value)}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _Bad(f"{want}, got {_show(value)} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad(f"{want}, got {_show(value)}")
    if parts.username is not None or parts.password is not None:
        # The URL lands in logs and /-/status; credentials there would leak.
        raise _Bad("must not contain credentials (user:password@)")
    if parts.query or parts.fragment:
        raise _Bad(f"{want} and no query or fragment, got {_show(value)}")
    return value


def _optional_http_url(value: Any) -> str | None:
    return None if value is None else _http_url(value)


def _optional_pem_file(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected the path of a PEM file of CA certificates, got {_show(value)}")
    try:
        ssl.create_default_context(cafile=value)
    except FileNotFoundError:
        raise _Bad(f"no such file: {value!r}") from None
    except (OSError, ssl.SSLError) as exc:
        raise _Bad(f"{value!r} is not a readable PEM file of CA certificates ({exc})") from None
    return value


def _redis_url(value: Any) -> str | None:
    if value is None:
        return None
    want = "expected a redis://, rediss:// or unix:// URL"
    if not isinstance(value, str):
        raise _Bad(f"{want}, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError:
        raise _Bad(f"{want} (value hidden: it may hold a password)") from None
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise _Bad(f"{want} (value hidden: it may hold a password)")
    return value


def _token(value: Any) -> str:
    # Never echo the value: it is a secret.
    if value == "":
        return ""
    if (
        not isinstance(value, str)
        or len(value) < _MIN_TOKEN_CHARS
        or any(c.isspace() for c in value)
    ):
        raise _Bad(
            f"expected a string of at least {_MIN_TOKEN_CHARS} characters without "
            f"whitespace (value hidden)"
        )
    return value


def _sequence(value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _Bad(f"expected a list of {what}, got {_show(value)}")
    return tuple(value)


def _names(value: Any) -> tuple[str, ...]:
    items = _sequence(value, "upstream names")
    bad = [i for i in items if not isinstance(i, str)]
    if bad:
        raise _Bad(f"expected a list of upstream names, got {', '.join(map(repr, bad))}")
    return items


def _status_codes(low: int, high: int) -> Check:
    def check(value: Any) -> tuple[int, ...]:
        items = _sequence(value, f"status codes {low}-{high}")
        bad = [
            c
            for c in items
            if not isinstance(c, int) or isinstance(c, bool) or not low <= c <= high
        ]
        if bad:
            raise _Bad(f"expected status codes {low}-{high}, got {', '.join(map(repr, bad))}")
        return tuple(sorted(set(items)))

    return check


def _words(allowed: frozenset[str], *, upper: bool = False) -> Check:
    def check(value: Any) -> tuple[str, ...]:
        # Envoy writes these as one comma-separated string; accept that spelling too.
        if isinstance(value, str):
            value = [w.strip() for w in value.split(",")]
        items = _sequence(value, "strings")
        norm = [i.upper() if upper and isinstance(i, str) else i for i in items]
        bad = [i for i in norm if i not in allowed]
        if bad:
            hints = []
            for b in bad:
                close = (
                    difflib.get_close_matches(b, sorted(allowed), n=1) if isinstance(b, str) else []
                )
                hints.append(f"{b!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise _Bad(f"unknown {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")
        return tuple(dict.fromkeys(norm))

    return check


def _setting(default: Any = dataclasses.MISSING, check: Check = _text, **kw: Any) -> Any:
    """A dataclass field that carries its value check."""
    return field(default=default, metadata={"check": check}, **kw)


# --------------------------------------------------------------------------- problem collection


class _Problems:
    """Collects problems; one caused by an environment variable names that variable."""

    def __init__(self, origins: Mapping[str, str] | None = None) -> None:
        self.items: list[str] = []
        self.origins: dict[str, str] = dict(origins or {})

    def add(self, path: str, message: str) -> None:
        var = next((self.origins[p] for p in _prefixes(path) if p in self.origins), None)
        self.items.append(f"{path}: {message}" + (f" (from {var})" if var else ""))

    def unknown(self, path: str, key: Any, allowed: list[str]) -> None:
        if not isinstance(key, str):
            self.add(path, f"keys must be strings, got {key!r}")
            return
        close = (
            [_SYNONYMS[key]]
            if _SYNONYMS.get(key) in allowed
            else difflib.get_close_matches(key, allowed, n=1)
        )
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.add(
            f"{path}.{key}" if path else key, f"unknown key ({hint}allowed: {', '.join(allowed)})"
        )


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


# --------------------------------------------------------------------------- blocks


class _Block:
    """Shared by the blocks: validation from field metadata, on mapping load and on construction."""

    __slots__ = ()
    _key: ClassVar[str]

    def _path(self) -> str:
        return self._key

    def __post_init__(self) -> None:
        problems = _Problems()
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        type(self)._check(values, self._path(), problems)
        if problems.items:
            raise ConfigError(problems.items)

    @classmethod
    def _check(cls, raw: Mapping[str, Any], path: str, problems: _Problems) -> dict[str, Any]:
        """Checked, normalised values of the keys present in ``raw``, then the cross-field rules."""
        valid: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        before = len(problems.items)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if f.name not in raw:
                if f.default is not dataclasses.MISSING:
                    defaults[f.name] = f.default
                elif check is not None:
                    problems.add(f"{path}.{f.name}", "required")
                continue
            if check is None:
                valid[f.name] = raw[f.name]
                continue
            try:
                valid[f.name] = check(raw[f.name])
            except _Bad as exc:
                problems.add(f"{path}.{f.name}", str(exc))
        if len(problems.items) == before:
            for name, message in cls._cross({**defaults, **valid}):
                problems.add(f"{path}.{name}", message)
        return valid

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Rules between keys of one block, as (key, message); only run when each key is valid."""
        return []

    @classmethod
    def _load(cls, raw: Any, path: str, problems: _Problems, **extra: Any) -> Any:
        """An instance from a YAML block, or None after adding its problems."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.add(path, f"expected a mapping, got {type(raw).__name__} {_show(raw)}")
            return None
        allowed = [f.name for f in dataclasses.fields(cls) if f.name not in extra]  # type: ignore[arg-type]
        before = len(problems.items)
        for key in raw:
            if key not in allowed:
                problems.unknown(path, key, allowed)
        values = cls._check(
            {**{k: v for k, v in raw.items() if k in allowed}, **extra}, path, problems
        )
        if len(problems.items) != before:
            return None
        return cls(**values)


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenConfig(_Block):
    """Where clients reach the proxy. 0.0.0.0 by default: a pod sidecar is called from outside
    the pod; on a shared host, set 127.0.0.1."""

    _key: ClassVar[str] = "listen"
    host: str = _setting("0.0.0.0", _host)
    port: int = _setting(8080, _port)


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminConfig(_Block):
    """The admin port: /metrics and status for Prometheus and people (hence 0.0.0.0 by default),
    mutations only with a bearer ``token``; without one, mutations are off."""

    _key: ClassVar[str] = "admin"
    host: str = _setting("0.0.0.0", _host)
    port: int = _setting(9901, _port)
    token: str = _setting("", _token, repr=False)

    @property
    def mutations_enabled(self) -> bool:
        return bool(self.token)

    def __repr__(self) -> str:
        return (
            f"AdminConfig(host={self.host!r}, port={self.port!r}, "
            f"token={'<set>' if self.token else '<unset>'})"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamConfig(_Block):
    """One named model version behind the proxy. ``url`` is the base URL: its path, if any,
    is prefixed to every forwarded path. An ``https://`` URL is verified against the system's
    trust store, or against ``ca_file`` (PEM) for a private CA."""

    _key: ClassVar[str] = "upstreams"
    name: str = _setting(check=_text)
    url: str = _setting(check=_http_url)
    health_path: str = _setting("/-/health", _url_path)
    max_connections: int = _setting(100, _number(int, ge=1, le=100_000))
    connect_timeout_s: float = _setting(1.0, _seconds(gt=0, le=300))
    ca_file: str | None = _setting(None, _optional_pem_file)

    def _path(self) -> str:
        return f"upstreams.{self.name}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an https upstream with a private CA (else None: the default)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        if v["ca_file"] is not None and not v["url"].startswith("https://"):
            return [("ca_file", "applies to https:// URLs only; the url is plain http")]
        return []


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutingConfig(_Block):
    """Which upstream takes traffic first, and where it goes, in order, when that one cannot."""

    _key: ClassVar[str] = "routing"
    primary: str = _setting(check=_text)
    fallbacks: tuple[str, ...] = _setting((), _names)

    @property
    def order(self) -> tuple[str, ...]:
        return (self.primary, *self.fallbacks)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if v["primary"] in v["fallbacks"]:
            out.append(
                (
                    "fallbacks",
                    f"must not contain the primary {v['primary']!r}: an "
                    f"upstream cannot be its own fallback",
                )
            )
        dupes = sorted({n for n in v["fallbacks"] if v["fallbacks"].count(n) > 1}, key=str)
        if dupes:
            out.append(("fallbacks", f"lists {', '.join(map(repr, dupes))} more than once"))
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeoutsConfig(_Block):
    """Deadlines: one attempt, and the whole request with its retries and fallbacks."""

    _key: ClassVar[str] = "timeouts"
    per_try_timeout_s: float = _setting(10.0, _seconds(gt=0, le=3600))
    total_timeout_s: float = _setting(30.0, _seconds(gt=0, le=3600))

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        if v["per_try_timeout_s"] > v["total_timeout_s"]:
            return [
                (
                    "per_try_timeout_s",
                    f"must be <= timeouts.total_timeout_s "
                    f"({v['total_timeout_s']:g}), got "
                    f"{v['per_try_timeout_s']:g}",
                )
            ]
        return []


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryConfig(_Block):
    """When and how often to try again. POST is retried by default: a prediction is a pure
    function of its payload, so repeating it costs compute but changes nothing; the budget
    bounds that cost. ``timeout`` is not retried by default: a slow model would get more load
    exactly when it is slow. For endpoints with side effects, set ``retriable_methods``."""

    _key: ClassVar[str] = "retry"
    num_retries: int = _setting(2, _number(int, ge=0, le=10))
    retry_on: tuple[str, ...] = _setting(
        ("connect-failure", "reset", "gateway-error"), _words(RETRY_ON)
    )
    retriable_status_codes: tuple[int, ...] = _setting((), _status_codes(100, 599))
    retriable_methods: tuple[str, ...] = _setting(
        ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"), _words(_METHODS, upper=True)
    )
    base_interval_s: float = _setting(0.025, _seconds(gt=0, le=60))
    max_interval_s: float = _setting(0.25, _seconds(gt=0, le=600))
    backoff_multiplier: float = _setting(2.0, _number(float, ge=1, le=10))
    budget_percent: float = _setting(20.0, _number(float, ge=0, le=100))
    min_retries_per_s: float = _setting(10.0, _number(float, ge=0, le=1_000_000))

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if v["max_interval_s"] < v["base_interval_s"]:
            out.append(
                (
                    "max_interval_s",
                    f"must be >= retry.base_interval_s "
                    f"({v['base_interval_s']:g}), got "
                    f"{v['max_interval_s']:g}",
                )
            )
        listed = "retriable-status-codes" in v["retry_on"]
        if listed and not v["retriable_status_codes"]:
            out.append(
                (
                    "retriable_status_codes",
                    "must list at least one status code when retry_on has 'retriable-status-codes'",
                )
            )
        if v["retriable_status_codes"] and not listed:
            out.append(
                (
                    "retriable_status_codes",
                    "is ignored unless retry_on has 'retriable-status-codes'; add it there",
                )
            )
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig(_Block):
    """The circuit breaker of each upstream. Connect failures and timeouts always count as
    failures; ``failure_status_codes`` says which answers do too. ``redis_url`` shares state
    across replicas; it may hold a password, so it is left out of ``repr``.
    ``close_on_healthy``: health checks bringing an upstream back into rotation close its
    breaker (Envoy's ``successful_active_health_check_uneject_host``); otherwise a breaker
    that opened on a version now serving only as a fallback stays open until real traffic
    trials it, and then lets one request through at a time just when it is needed."""

    _key: ClassVar[str] = "breaker"
    consecutive_5xx: int = _setting(5, _number(int, ge=1, le=10_000))
    reset_timeout_s: float = _setting(30.0, _seconds(gt=0, le=86_400))
    half_open_max_calls: int = _setting(1, _number(int, ge=1, le=1000))
    failure_status_codes: tuple[int, ...] = _setting((500, 502, 503, 504), _status_codes(100, 599))
    redis_url: str | None = _setting(None, _redis_url, repr=False)
    close_on_healthy: bool = _setting(True, _boolean)


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthChecksConfig(_Block):
    """Active health checks of every upstream; with ``read_health_report`` the middleware's
    JSON verdict (drift, error rate) counts, not only the status code."""

    _key: ClassVar[str] = "health_checks"
    interval_s: float = _setting(5.0, _seconds(gt=0, le=3600))
    timeout_s: float = _setting(1.0, _seconds(gt=0, le=3600))
    healthy_threshold: int = _setting(2, _number(int, ge=1, le=100))
    unhealthy_threshold: int = _setting(3, _number(int, ge=1, le=100))
    read_health_report: bool = _setting(True, _boolean)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        if v["timeout_s"] >= v["interval_s"]:
            # Otherwise checks of one upstream overlap and pile up against a hanging server.
            return [
                (
                    "timeout_s",
                    f"must be < health_checks.interval_s ({v['interval_s']:g}), "
                    f"got {v['timeout_s']:g}",
                )
            ]
        return []


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig(_Block):
    """Bounds that keep one client or one upstream from exhausting the sidecar's memory."""

    _key: ClassVar[str] = "limits"
    max_request_bytes: int = _setting(16 * 2**20, _number(int, ge=1, le=2**40))
    max_response_bytes: int = _setting(64 * 2**20, _number(int, ge=1, le=2**40))
    max_concurrent_requests: int = _setting(1024, _number(int, ge=1, le=1_000_000))


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradedResponseConfig(_Block):
    """A static answer for when no upstream can answer (a default prediction, a maintenance
    note). Absent, the proxy answers a 503 JSON error that names what failed."""

    _key: ClassVar[str] = "degraded_response"
    status: int = _setting(503, _number(int, ge=200, le=599))
    body: str = _setting(check=lambda v: v if isinstance(v, str) else _bad_body(v))
    content_type: str = _setting("application/json", _text)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        ctype = v["content_type"].split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                json.loads(v["body"])
            except ValueError as exc:
                return [("body", f"must be valid JSON for content_type {ctype!r} ({exc})")]
        return []


@dataclass(frozen=True, kw_only=True, slots=True)
class TracingConfig(_Block):
    """Traces of the sidecar itself (a server span per request, a client span per attempt),
    sent over OTLP/HTTP in batches. Off unless ``otlp_endpoint`` is set here or the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``/``OTEL_EXPORTER_OTLP_ENDPOINT`` variable is; the
    exporter needs the ``otlp`` extra. ``otlp_endpoint`` is the collector's base URL
    (``http://collector:4318``; ``/v1/traces`` is appended) or its full traces URL."""

    _key: ClassVar[str] = "tracing"
    otlp_endpoint: str | None = _setting(None, _optional_http_url)
    service_name: str = _setting("mlwarden-sidecar", _text)
    sample_ratio: float = _setting(1.0, _number(float, ge=0, le=1))


def _one_of(allowed: tuple[str, ...]) -> Check:
    def check(value: Any) -> str:
        if value not in allowed:
            raise _Bad(f"expected one of {', '.join(allowed)}, got {_show(value)}")
        return str(value)

    return check


def _percent_steps(value: Any) -> tuple[float, ...]:
    items = _sequence(value, "percentages")
    bad = [
        i for i in items if isinstance(i, bool) or not isinstance(i, int | float) or not 0 < i < 100
    ]
    if bad or not items:
        # At 100% the stable version gets nothing to compare with: passing the last step
        # promotes, so 100 is never a step.
        raise _Bad(
            f"expected a non-empty list of percentages above 0 and below 100 (passing "
            f"the last one promotes), got {_show(value)}"
        )
    steps = tuple(float(i) for i in items)
    if list(steps) != sorted(set(steps)):
        raise _Bad(f"expected increasing percentages, got {_show(value)}")
    return steps


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _optional_fraction(value: Any) -> float | None:
    return None if value is None else _number(float, ge=0)(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class CanaryConfig(_Block):
    """A candidate version on a growing share of traffic, analysed against the stable one
    every ``interval_s``: passed, the weight steps up to the next of ``steps_percent`` (each
    below 100) and passing the last one promotes the candidate; failed (or its breaker
    open), it is rolled back to weight 0 at once. Too few requests (``min_requests`` per
    version per interval) decide nothing: "inconclusive", and ``on_deadline`` decides after
    ``inconclusive_deadline_s``. ``source: prometheus`` takes the figures from PromQL over
    every replica's metrics at ``prometheus_url`` (a fleet-wide verdict) instead of this
    sidecar's own windows. After promotion the new primary is watched for ``guard_s``
    and rolled back to the pinned stable version if it fails."""

    _key: ClassVar[str] = "canary"
    candidate: str = _setting(check=_text)
    stable: str | None = _setting(None, _optional_text)
    steps_percent: tuple[float, ...] = _setting((5.0, 25.0, 50.0), _percent_steps)
    sticky_header: str | None = _setting(None, _optional_text)
    sticky_cookie: str | None = _setting(None, _optional_text)
    interval_s: float = _setting(30.0, _seconds(gt=0, le=86_400))
    min_requests: int = _setting(50, _number(int, ge=1, le=10_000_000))
    max_error_rate: float = _setting(0.05, _number(float, ge=0, le=1))
    max_error_rate_increase: float = _setting(0.01, _number(float, ge=0, le=1))
    max_latency_p99_ratio: float = _setting(1.5, _number(float, ge=1, le=1000))
    max_drift_score: float | None = _setting(None, _optional_fraction)
    inconclusive_deadline_s: float = _setting(600.0, _seconds(gt=0, le=30 * 86_400))
    on_deadline: str = _setting("rollback", _one_of(("rollback", "promote", "hold")))
    guard_s: float = _setting(300.0, _seconds(ge=0, le=30 * 86_400))
    source: str = _setting("local", _one_of(("local", "prometheus")))
    prometheus_url: str | None = _setting(None, _optional_http_url)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if v["sticky_header"] is not None and v["sticky_cookie"] is not None:
            out.append(("sticky_cookie", "set sticky_header or sticky_cookie, not both"))
        if v["source"] == "prometheus" and v["prometheus_url"] is None:
            out.append(
                (
                    "prometheus_url",
                    "required when source is prometheus (the server "
                    "that scrapes every replica's admin port)",
                )
            )
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class ShadowTrafficConfig(_Block):
    """A copy of ``sample_percent`` of the requests sent to ``target`` beside the real one,
    its answer compared with the primary's and dropped: the client waits for nothing. At most
    ``max_concurrent`` copies in flight and ``max_queue`` waiting, beyond that shed; each
    copy bounded by ``timeout_s``. Numeric predictions agree within ``abs_tol`` or
    ``rel_tol``; classes when equal."""

    _key: ClassVar[str] = "shadow"
    target: str = _setting(check=_text)
    sample_percent: float = _setting(10.0, _number(float, ge=0, le=100))
    max_concurrent: int = _setting(4, _number(int, ge=1, le=1000))
    max_queue: int = _setting(64, _number(int, ge=1, le=100_000))
    timeout_s: float = _setting(5.0, _seconds(gt=0, le=3600))
    max_body_bytes: int = _setting(256 * 1024, _number(int, ge=1, le=64 * 2**20))
    abs_tol: float = _setting(1e-6, _number(float, ge=0))
    rel_tol: float = _setting(1e-3, _number(float, ge=0))


def _optional_path(value: Any) -> str | None:
    return None if value is None else _text(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerConfig(_Block):
    """The healing ledger: every automatic or manual action, one JSON line, fsynced, rotated
    at ``max_bytes`` keeping ``backups`` files. Without ``path`` it is kept in memory only
    (``/-/events`` still serves it). With ``influx_url`` each record is also written to
    InfluxDB (measurement ``mlwarden_healing``)."""

    _key: ClassVar[str] = "ledger"
    path: str | None = _setting(None, _optional_path)
    max_bytes: int = _setting(10 * 2**20, _number(int, ge=4096, le=2**40))
    backups: int = _setting(5, _number(int, ge=0, le=1000))
    fsync: bool = _setting(True, _boolean)
    recent: int = _setting(1000, _number(int, ge=1, le=100_000))
    influx_url: str | None = _setting(None, _optional_http_url)
    influx_bucket: str = _setting("mlwarden", _text)
    influx_org: str = _setting("", lambda v: v if isinstance(v, str) else _text(v))
    influx_token: str = _setting("", lambda v: v if isinstance(v, str) else _text(v), repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class EscalationConfig(_Block):
    """When healing repeats, tell a person: a policy firing more than ``threshold`` times
    within ``window_s`` (default 3 in 7 days), or a critical one, escalates once per window:
    a Slack-compatible JSON body POSTed to ``webhook_url`` (without one: recorded only)."""

    _key: ClassVar[str] = "healing.escalation"
    webhook_url: str | None = _setting(None, _optional_http_url, repr=False)
    threshold: int = _setting(3, _number(int, ge=1, le=10_000))
    window_s: float = _setting(7 * 86_400.0, _seconds(gt=0, le=366 * 86_400))


@dataclass(frozen=True, kw_only=True, slots=True)
class HealingConfig(_Block):
    """The policy loop: evaluated every ``interval_s``. ``default_policies`` (on when no
    ``policies`` are written) gives the tiered defaults; ``retrain_webhook_url`` is what their
    large tier calls (a retraining pipeline's REST endpoint)."""

    _key: ClassVar[str] = "healing"
    interval_s: float = _setting(5.0, _seconds(gt=0, le=3600))
    default_policies: bool | None = _setting(None, lambda v: None if v is None else _boolean(v))
    retrain_webhook_url: str | None = _setting(None, _optional_http_url, repr=False)
    escalation: EscalationConfig = field(default_factory=EscalationConfig, metadata={"check": None})


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
    does)."""

    name: str
    when: str
    condition: Any  # mlwarden.sidecar.healing.conditions.Condition
    actions: tuple[PolicyAction, ...] = ()
    severity: str = "warning"
    for_s: float = 0.0
    cooldown_s: float = 300.0
    window_s: float = 60.0
    target: str | None = None
    restore_after_s: float | None = None


_POLICY_KEYS = (
    "name",
    "when",
    "actions",
    "severity",
    "for_s",
    "cooldown_s",
    "window_s",
    "target",
    "restore_after_s",
)
_POLICY_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _load_policies(raw: Any, names: list[str], problems: _Problems) -> tuple[PolicyConfig, ...]:
    """The ``policies`` list, each condition parsed against the signal vocabulary."""
    from mlwarden.sidecar.healing.conditions import ConditionError, parse_condition
    from mlwarden.sidecar.healing.vocabulary import ACTION_KINDS, SIGNALS, function_specs

    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add("policies", f"expected a list of policies, got {_show(raw)}")
        return ()
    functions = function_specs(names)
    out: list[PolicyConfig] = []
    seen: set[str] = set()
    for i, spec in enumerate(raw[:100]):
        where = f"policies[{i}]"
        if not isinstance(spec, Mapping):
            problems.add(
                where, f"expected a mapping with name, when and actions, got {_show(spec)}"
            )
            continue
        name = spec.get("name")
        if isinstance(name, str) and _POLICY_NAME_RE.fullmatch(name):
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
            if key not in _POLICY_KEYS:
                problems.unknown(where, key, list(_POLICY_KEYS))
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
        for key, check, default in (
            ("severity", _one_of(("info", "warning", "critical")), "warning"),
            ("for_s", _seconds(ge=0, le=30 * 86_400), 0.0),
            ("cooldown_s", _seconds(ge=0, le=30 * 86_400), 300.0),
            ("window_s", _seconds(gt=0, le=3600), 60.0),
            ("restore_after_s", lambda v: None if v is None else _seconds(gt=0)(v), None),
        ):
            try:
                values[key] = check(spec.get(key, default))
            except _Bad as exc:
                problems.add(f"{where}.{key}", str(exc))
        target = spec.get("target")
        if target is not None and target not in names:
            problems.add(
                f"{where}.target", f"unknown upstream {target!r} (known: {', '.join(names)})"
            )
        actions = _load_actions(spec.get("actions", []), f"{where}.actions", ACTION_KINDS, problems)
        if condition is not None and actions is not None and isinstance(name, str):
            out.append(
                PolicyConfig(
                    name=name,
                    when=when,
                    condition=condition,  # type: ignore[arg-type]
                    actions=actions,
                    target=target,
                    **values,
                )
            )
    if len(raw) > 100:
        problems.add("policies", f"at most 100 policies, got {len(raw)}")
    return tuple(out)


def _load_actions(
    raw: Any, where: str, kinds: tuple[str, ...], problems: _Problems
) -> tuple[PolicyAction, ...] | None:
    if not isinstance(raw, list):
        problems.add(where, f"expected a list of actions, got {_show(raw)}")
        return None
    out = []
    before = len(problems.items)
    for j, item in enumerate(raw[:20]):
        at = f"{where}[{j}]"
        if isinstance(item, str):
            kind, arg = item, None
        elif isinstance(item, Mapping) and len(item) == 1:
            kind, arg = next(iter(item.items()))
        else:
            problems.add(at, f"expected an action name or a one-key mapping, got {_show(item)}")
            continue
        if kind not in kinds:
            close = difflib.get_close_matches(str(kind), kinds, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.add(at, f"unknown action {kind!r} ({hint}allowed: {', '.join(kinds)})")
            continue
        try:
            out.append(_action(kind, arg))
        except _Bad as exc:
            problems.add(f"{at}.{kind}", str(exc))
    return tuple(out) if len(problems.items) == before else None


def _action(kind: str, arg: Any) -> PolicyAction:
    if kind == "set_weight":
        return PolicyAction(kind, weight_percent=_number(float, ge=0, lt=100)(arg))
    if kind == "webhook":
        if not isinstance(arg, Mapping) or "url" not in arg:
            raise _Bad(f"expected {{url: ..., body: {{...}}}}, got {_show(arg)}")
        extra = set(arg) - {"url", "body", "headers"}
        if extra:
            raise _Bad(
                f"unknown key(s) {', '.join(sorted(map(str, extra)))} (allowed: url, body, headers)"
            )
        body = arg.get("body", {})
        headers = arg.get("headers", {})
        if not isinstance(body, Mapping):
            raise _Bad(f"body: expected a mapping (sent as JSON), got {_show(body)}")
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise _Bad("headers: expected a mapping of strings")
        return PolicyAction(kind, url=_http_url(arg["url"]), body=dict(body), headers=dict(headers))
    if arg is not None:
        raise _Bad(f"takes no argument, got {_show(arg)}")
    return PolicyAction(kind)


def _load_healing(raw: Any, problems: _Problems) -> HealingConfig:
    if raw is None:
        return HealingConfig()
    if not isinstance(raw, Mapping):
        problems.add("healing", f"expected a mapping, got {_show(raw)}")
        return HealingConfig()
    raw = dict(raw)
    escalation = EscalationConfig._load(
        raw.pop("escalation", None) or {}, "healing.escalation", problems
    )
    base = HealingConfig._load(raw, "healing", problems)
    if base is None or escalation is None:
        return HealingConfig()
    return dataclasses.replace(base, escalation=escalation)


def _bad_body(value: Any) -> str:
    raise _Bad(f"expected a string (use a YAML block scalar for JSON), got {_show(value)}")


# --------------------------------------------------------------------------- the whole file

_BLOCKS: dict[str, type[_Block]] = {
    "listen": ListenConfig,
    "admin": AdminConfig,
    "timeouts": TimeoutsConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "health_checks": HealthChecksConfig,
    "limits": LimitsConfig,
    "tracing": TracingConfig,
    "ledger": LedgerConfig,
}
_TOP_KEYS = [
    "upstreams",
    "routing",
    *_BLOCKS,
    "degraded_response",
    "canary",
    "shadow",
    "healing",
    "policies",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class SidecarConfig:
    """The sidecar's whole configuration, validated; build it with :func:`load_config` or
    :meth:`from_mapping`. ``upstreams`` keeps the file's order."""

    upstreams: tuple[UpstreamConfig, ...]
    routing: RoutingConfig
    listen: ListenConfig = field(default_factory=ListenConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    health_checks: HealthChecksConfig = field(default_factory=HealthChecksConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    degraded_response: DegradedResponseConfig | None = None
    canary: CanaryConfig | None = None
    shadow: ShadowTrafficConfig | None = None
    healing: HealingConfig = field(default_factory=HealingConfig)
    policies: tuple[PolicyConfig, ...] = ()

    def __post_init__(self) -> None:
        problems = _Problems()
        _check_whole(
            [u.name for u in self.upstreams],
            self.upstreams,
            self.routing,
            self.listen,
            self.admin,
            self.timeouts,
            problems,
        )
        if problems.items:
            raise ConfigError(problems.items)

    def upstream(self, name: str) -> UpstreamConfig:
        """The upstream called ``name`` (KeyError when there is none)."""
        for u in self.upstreams:
            if u.name == name:
                return u
        raise KeyError(name)

    @classmethod
    def from_mapping(
        cls,
        data: Any,
        *,
        source: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> SidecarConfig:
        """Validate a parsed YAML document after applying the environment overrides.

        Raises ConfigError with every problem found. ``environ`` defaults to ``os.environ``.
        """
        env = os.environ if environ is None else environ
        if not isinstance(data, Mapping):
            got = "an empty document" if data is None else f"{type(data).__name__} {_show(data)}"
            raise ConfigError(
                [f"top level: expected a mapping with 'upstreams', got {got}"], source=source
            )
        problems = _Problems()
        data = _apply_env(data, env, problems)
        for key in data:
            if key not in _TOP_KEYS:
                problems.unknown("", key, _TOP_KEYS)
        upstreams, names = _load_upstreams(data.get("upstreams"), problems)
        blocks: dict[str, Any] = {}
        for key, block in _BLOCKS.items():
            raw = data.get(key)
            if key == "admin" and isinstance(raw, Mapping | None):
                raw = dict(raw or {})
                if raw.get("token") in (None, "") and env.get(ADMIN_TOKEN_ENV):
                    raw["token"] = env[ADMIN_TOKEN_ENV]
                    problems.origins.setdefault("admin.token", ADMIN_TOKEN_ENV)
                elif raw.get("token") is None:
                    raw.pop("token", None)
            blocks[key] = block._load(raw, key, problems)
        degraded = data.get("degraded_response")
        if degraded is not None:
            degraded = DegradedResponseConfig._load(degraded, "degraded_response", problems)
        canary = data.get("canary")
        if canary is not None:
            canary = CanaryConfig._load(canary, "canary", problems)
        shadow = data.get("shadow")
        if shadow is not None:
            shadow = ShadowTrafficConfig._load(shadow, "shadow", problems)
        # Versions on trial are not fallbacks by default: a fallback must be a stable version.
        on_trial = ({canary.candidate} if canary else set()) | (
            {shadow.target} if shadow else set()
        )
        # Routing is checked against every declared name, also those whose block has problems,
        # so that one bad URL does not show up again as an unknown upstream in routing.
        routing = (
            _load_routing(data.get("routing"), names, problems, on_trial=on_trial)
            if names
            else None
        )
        if routing:
            _check_whole(
                names,
                upstreams,
                routing,
                blocks["listen"],
                blocks["admin"],
                blocks["timeouts"],
                problems,
            )
            if canary:
                canary = _check_canary(canary, names, routing, problems)
            if shadow and shadow.target not in names:
                problems.add(
                    "shadow.target",
                    f"unknown upstream {shadow.target!r} (known: {', '.join(names)})",
                )
            elif shadow and shadow.target == routing.primary:
                problems.add(
                    "shadow.target",
                    "is the routing primary: a shadow is a copy sent to another version",
                )
        if problems.items:
            raise ConfigError(problems.items, source=source)
        healing = _load_healing(data.get("healing"), problems)
        policies = _load_policies(data.get("policies"), names, problems)
        if problems.items:
            raise ConfigError(problems.items, source=source)
        return cls(
            upstreams=upstreams,
            routing=routing,
            degraded_response=degraded,  # type: ignore[arg-type]
            canary=canary,
            shadow=shadow,
            healing=healing,
            policies=policies,
            **blocks,
        )


def _load_upstreams(
    raw: Any,
    problems: _Problems,
) -> tuple[tuple[UpstreamConfig, ...], list[str]]:
    """The valid upstreams, and every well-formed name declared (valid or not)."""
    if not isinstance(raw, Mapping) or not raw:
        got = "nothing" if raw is None else _show(raw)
        problems.add(
            "upstreams",
            f"expected a mapping of at least one name to a URL (or to "
            f"a mapping with 'url'), got {got}",
        )
        return (), []
    out = []
    seen: dict[str, str] = {}
    declared: list[str] = []
    for name, spec in raw.items():
        path = f"upstreams.{name}"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            # Names become metric labels, header values and env-variable segments.
            problems.add(
                path,
                "the name must be 1-63 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
            continue
        if name.lower() in seen:
            problems.add(path, f"clashes with {seen[name.lower()]!r}: names differ only in case")
            continue
        seen[name.lower()] = name
        declared.append(name)
        if isinstance(spec, str):
            spec = {"url": spec}
        elif not isinstance(spec, Mapping):
            problems.add(path, f"expected a URL or a mapping with 'url', got {_show(spec)}")
            continue
        u = UpstreamConfig._load(spec, path, problems, name=name)
        if u is not None:
            out.append(u)
    return tuple(out), declared


def _check_canary(
    canary: CanaryConfig, names: list[str], routing: RoutingConfig, problems: _Problems
) -> CanaryConfig:
    """The canary against the upstreams and routing; its stable defaults to the primary."""
    known = ", ".join(names)
    if canary.candidate not in names:
        problems.add("canary.candidate", f"unknown upstream {canary.candidate!r} (known: {known})")
    elif canary.candidate == routing.primary:
        problems.add(
            "canary.candidate",
            f"is the routing primary {routing.primary!r}: the "
            f"candidate is tried against it, not instead of it",
        )
    stable = canary.stable or routing.primary
    if stable not in names:
        problems.add("canary.stable", f"unknown upstream {stable!r} (known: {known})")
    elif stable == canary.candidate:
        problems.add("canary.stable", "must differ from canary.candidate")
    return dataclasses.replace(canary, stable=stable)


def _load_routing(
    raw: Any,
    names: list[str],
    problems: _Problems,
    *,
    on_trial: frozenset[str] | set[str] = frozenset(),
) -> RoutingConfig | None:
    if raw is not None and not isinstance(raw, Mapping):
        problems.add("routing", f"expected a mapping (primary, fallbacks), got {_show(raw)}")
        return None
    raw = dict(raw or {})
    if "primary" not in raw:
        raw["primary"] = names[0]
    if "fallbacks" not in raw and isinstance(raw.get("primary"), str):
        raw["fallbacks"] = [n for n in names if n != raw["primary"] and n not in on_trial]
    return RoutingConfig._load(raw, "routing", problems)


def _check_whole(
    names: list[str],
    upstreams: tuple[UpstreamConfig, ...],
    routing: RoutingConfig,
    listen: ListenConfig | None,
    admin: AdminConfig | None,
    timeouts: TimeoutsConfig | None,
    problems: _Problems,
) -> None:
    """Rules between blocks."""
    if not names:
        problems.add("upstreams", "expected at least one upstream")
    known = f"known: {', '.join(names)}" if names else "no upstreams are defined"
    if routing.primary not in names:
        problems.add("routing.primary", f"unknown upstream {routing.primary!r} ({known})")
    for i, name in enumerate(routing.fallbacks):
        if name not in names:
            problems.add(f"routing.fallbacks[{i}]", f"unknown upstream {name!r} ({known})")
    if listen and admin and listen.port == admin.port != 0:
        problems.add("admin.port", f"must differ from listen.port, both are {admin.port}")
    if timeouts:
        for u in upstreams:
            if u.connect_timeout_s > timeouts.per_try_timeout_s:
                problems.add(
                    f"upstreams.{u.name}.connect_timeout_s",
                    f"must be <= timeouts.per_try_timeout_s "
                    f"({timeouts.per_try_timeout_s:g}), got {u.connect_timeout_s:g}",
                )


# --------------------------------------------------------------------------- environment


def _apply_env(
    data: Mapping[str, Any], environ: Mapping[str, str], problems: _Problems
) -> dict[str, Any]:
    """A copy of ``data`` with every ``MLWARDEN__…`` variable applied; records their origins."""
    out = dict(data)
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        segments = var[len(ENV_PREFIX) :].split("__")
        if not all(segments):
            problems.items.append(
                f"{var}: empty path segment; use '__' only between keys, "
                f"e.g. {ENV_PREFIX}RETRY__NUM_RETRIES"
            )
            continue
        node: dict[str, Any] = out
        path: list[str] = []
        for seg in segments[:-1]:
            key = _match_key(node, seg)
            child = node.get(key)
            if child is None:
                child = {}
            elif isinstance(child, str) and path == ["upstreams"]:
                child = {"url": child}  # the URL shorthand, opened up for one of its keys
            elif not isinstance(child, Mapping):
                where = ".".join([*path, key])
                problems.items.append(
                    f"{var}: cannot set a key inside {where}, which is "
                    f"{type(child).__name__} {_show(child)}, not a mapping"
                )
                break
            node[key] = child = dict(child)
            node = child
            path.append(key)
        else:
            leaf = _match_key(node, segments[-1])
            raw = environ[var]
            if leaf in _TEXT_KEYS or path == ["upstreams"]:
                node[leaf] = raw
            else:
                try:
                    node[leaf] = yaml.safe_load(raw) if raw.strip() else None
                except yaml.YAMLError as exc:
                    problems.items.append(f"{var}: not a YAML value ({_yaml_reason(exc)})")
                    continue
            problems.origins[".".join([*path, leaf])] = var
    return out


def _match_key(node: Mapping[str, Any], segment: str) -> str:
    for key in node:
        if isinstance(key, str) and key.lower() == segment.lower():
            return key
    return segment.lower()


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: YAML keeps the last one silently, which would
    hide a second upstream of the same name."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                f"while reading a mapping (line {node.start_mark.line + 1})",
                node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Read, override and validate the sidecar's YAML file; ConfigError names every problem."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], source=source) from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax: {_yaml_reason(exc)}"], source=source) from exc
    return SidecarConfig.from_mapping(data, source=source, environ=environ)
