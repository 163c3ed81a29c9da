"""The blocks of the network: listen, admin, upstreams, routing, timeouts, limits, and the
degraded response (what a client gets when no upstream can answer).

Also how ``upstreams`` (a mapping of names to URLs or to blocks) and ``routing`` (whose
defaults derive from the upstreams) are read from the file.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mlwarden.sidecar.config.checks import (
    Bad,
    host_name,
    http_url,
    number,
    optional,
    pem_file,
    port_number,
    seconds,
    secret_token,
    sequence,
    show,
    text,
    upstream_names,
    url_path,
)
from mlwarden.sidecar.config.schema import Block, Problems, setting

__all__ = [
    "AdminConfig",
    "DegradedResponseConfig",
    "LimitsConfig",
    "ListenConfig",
    "RoutingConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
    "load_routing",
    "load_upstreams",
    "operational_path",
]

# Names become metric labels, header values and env-variable segments.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenConfig(Block):
    """Where clients reach the proxy. 0.0.0.0 by default: a pod sidecar is called from outside
    the pod; on a shared host, set 127.0.0.1."""

    _key: ClassVar[str] = "listen"
    host: str = setting("0.0.0.0", host_name)
    port: int = setting(8080, port_number)


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminConfig(Block):
    """The admin port: /metrics and status for Prometheus and people, mutations only with a
    bearer ``token``; without one, mutations are off. 127.0.0.1 by default: status and events
    are readable without a token, so reaching them from outside the host (a pod's Prometheus
    scrape) is a choice written in the file (``host: 0.0.0.0``), as the Kubernetes example
    does."""

    _key: ClassVar[str] = "admin"
    host: str = setting("127.0.0.1", host_name)
    port: int = setting(9901, port_number)
    token: str = setting("", secret_token, repr=False)

    @property
    def mutations_enabled(self) -> bool:
        return bool(self.token)

    def __repr__(self) -> str:
        return (
            f"AdminConfig(host={self.host!r}, port={self.port!r}, "
            f"token={'<set>' if self.token else '<unset>'})"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamConfig(Block):
    """One named model version behind the proxy. ``url`` is the base URL: its path, if any,
    is prefixed to every forwarded path. An ``https://`` URL is verified against the system's
    trust store, or against ``ca_file`` (PEM) for a private CA."""

    _key: ClassVar[str] = "upstreams"
    name: str = setting(check=text)
    url: str = setting(check=http_url)
    health_path: str = setting("/-/health", url_path)
    max_connections: int = setting(100, number(int, ge=1, le=100_000))
    connect_timeout_s: float = setting(1.0, seconds(gt=0, le=300))
    ca_file: str | None = setting(None, optional(pem_file))

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


def operational_path(path: str) -> str | None:
    """``path`` as a model server would route it (repeated slashes and dot segments
    resolved, lower case) when it is one of the model's operational paths: ``/metrics``
    (and below it) or any ``/-/`` path; else None.

    These are the middleware's endpoints (``/-/health``, ``/-/feedback``, ``/metrics``) and
    the like: for the sidecar and Prometheus, not for the sidecar's clients.
    """
    lowered = path.lower()
    if "/-" not in lowered and "/metrics" not in lowered:  # the common case, one scan each
        return None
    segments: list[str] = []
    for segment in lowered.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    if not segments or segments[0] not in ("-", "metrics"):
        return None
    return "/" + "/".join(segments)


def operational_paths(value: Any) -> tuple[str, ...]:
    """A list of operational paths (see :func:`operational_path`), each normalised once."""
    items = sequence(value, "paths")
    out = []
    for item in items:
        if not isinstance(item, str) or not item.startswith("/"):
            raise Bad(f"expected paths starting with '/', got {show(item)}")
        normal = operational_path(item)
        if normal is None:
            raise Bad(
                f"{show(item)} is not an operational path: only /metrics and /-/... paths are "
                f"held back, every other path is forwarded already"
            )
        if normal not in out:
            out.append(normal)
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutingConfig(Block):
    """Which upstream takes traffic first, and where it goes, in order, when that one cannot.

    The model's operational paths (``/metrics``, ``/-/health``, ``/-/feedback``, any ``/-/``
    path) are answered 404 on the public port, never forwarded: a client must not read the
    model's metrics or post labels through the sidecar. ``forward_operational_paths`` lists
    those to forward anyway (e.g. ``[/-/feedback]`` when labelling clients only reach the
    sidecar; the model still wants its feedback token). The sidecar's own health checks go to
    each upstream directly and are not affected.
    """

    _key: ClassVar[str] = "routing"
    primary: str = setting(check=text)
    fallbacks: tuple[str, ...] = setting((), upstream_names)
    forward_operational_paths: tuple[str, ...] = setting((), operational_paths)

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
class TimeoutsConfig(Block):
    """Deadlines: one attempt, and the whole request with its retries and fallbacks; the
    client's whole request body (``request_body_timeout_s``: past it, 408 and the connection
    closed; the request was not counted in flight meanwhile); and the drain on SIGTERM
    (requests in flight may finish for ``drain_timeout_s``, below Kubernetes' default grace
    period of 30 s, so the process exits before it is killed)."""

    _key: ClassVar[str] = "timeouts"
    per_try_timeout_s: float = setting(10.0, seconds(gt=0, le=3600))
    total_timeout_s: float = setting(30.0, seconds(gt=0, le=3600))
    request_body_timeout_s: float = setting(30.0, seconds(gt=0, le=3600))
    request_head_timeout_s: float = setting(10.0, seconds(gt=0, le=3600))
    keep_alive_idle_s: float = setting(60.0, seconds(gt=0, le=3600))
    drain_timeout_s: float = setting(25.0, seconds(gt=0, le=3600))

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
class LimitsConfig(Block):
    """Bounds that keep one client or one upstream from exhausting the sidecar's memory. A
    request head is at most ``max_header_bytes`` (request line and headers) with at most
    ``max_headers`` headers, Envoy's defaults (larger: 431); at most ``max_connections``
    client connections are served at once (beyond: 503)."""

    _key: ClassVar[str] = "limits"
    max_request_bytes: int = setting(16 * 2**20, number(int, ge=1, le=2**40))
    max_response_bytes: int = setting(64 * 2**20, number(int, ge=1, le=2**40))
    max_concurrent_requests: int = setting(1024, number(int, ge=1, le=1_000_000))
    max_header_bytes: int = setting(60 * 1024, number(int, ge=1024, le=2**24))
    max_headers: int = setting(100, number(int, ge=8, le=10_000))
    max_connections: int = setting(4096, number(int, ge=1, le=1_000_000))


def _body(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected a string (use a YAML block scalar for JSON), got {show(value)}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradedResponseConfig(Block):
    """A static answer for when no upstream can answer (a default prediction, a maintenance
    note). Absent, the proxy answers a 503 JSON error that names what failed."""

    _key: ClassVar[str] = "degraded_response"
    status: int = setting(503, number(int, ge=200, le=599))
    body: str = setting(check=_body)
    content_type: str = setting("application/json", text)

    @classmethod
    def _cross(cls, v: Mapping[str, Any]) -> list[tuple[str, str]]:
        ctype = v["content_type"].split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                json.loads(v["body"])
            except ValueError as exc:
                return [("body", f"must be valid JSON for content_type {ctype!r} ({exc})")]
        return []


def load_upstreams(
    raw: Any,
    problems: Problems,
) -> tuple[tuple[UpstreamConfig, ...], list[str]]:
    """The valid upstreams, and every well-formed name declared (valid or not)."""
    if not isinstance(raw, Mapping) or not raw:
        got = "nothing" if raw is None else show(raw)
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
            problems.add(path, f"expected a URL or a mapping with 'url', got {show(spec)}")
            continue
        u = UpstreamConfig._load(spec, path, problems, name=name)
        if u is not None:
            out.append(u)
    return tuple(out), declared


def load_routing(
    raw: Any,
    names: list[str],
    problems: Problems,
    *,
    on_trial: frozenset[str] | set[str] = frozenset(),
) -> RoutingConfig | None:
    """``routing``: the primary defaults to the first upstream, the fallbacks to the others in
    file order, except versions on trial (a canary candidate, a shadow target)."""
    if raw is not None and not isinstance(raw, Mapping):
        problems.add("routing", f"expected a mapping (primary, fallbacks), got {show(raw)}")
        return None
    raw = dict(raw or {})
    if "primary" not in raw:
        raw["primary"] = names[0]
    if "fallbacks" not in raw and isinstance(raw.get("primary"), str):
        raw["fallbacks"] = [n for n in names if n != raw["primary"] and n not in on_trial]
    return RoutingConfig._load(raw, "routing", problems)
