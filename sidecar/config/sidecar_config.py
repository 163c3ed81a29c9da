"""The whole file: :class:`SidecarConfig`, its top-level keys, the rules between blocks, and
:func:`load_config` (read, override, validate).

Every problem of the file is collected in one pass and raised once. The ``policies`` entries
are parsed by a :data:`PolicyParser` the caller passes in (the healing layer's, through
:func:`mlwarden.sidecar.settings.load_sidecar_config`), inside the same pass, so that their
problems are listed with the others while this package imports nothing from the healing layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.config.checks import show
from mlwarden.sidecar.config.fleet import FleetConfig
from mlwarden.sidecar.config.healing import (
    HealingConfig,
    LedgerConfig,
    load_healing,
    load_policy_entries,
)
from mlwarden.sidecar.config.loader import apply_env, read_document
from mlwarden.sidecar.config.network import (
    AdminConfig,
    DegradedResponseConfig,
    LimitsConfig,
    ListenConfig,
    RoutingConfig,
    TimeoutsConfig,
    UpstreamConfig,
    load_routing,
    load_upstreams,
)
from mlwarden.sidecar.config.release import (
    CanaryConfig,
    ShadowTrafficConfig,
    check_canary,
    check_shadow,
)
from mlwarden.sidecar.config.resilience import BreakerConfig, HealthChecksConfig, RetryConfig
from mlwarden.sidecar.config.schema import Block, Problems
from mlwarden.sidecar.config.tracing import TracingConfig

__all__ = ["PolicyParser", "SidecarConfig", "load_config"]

#: Parses the ``policies`` entries (as written, the list's shape checked) against the declared
#: upstream names, adding each problem to the collection; returns the parsed policies.
PolicyParser = Callable[[tuple[Any, ...], Sequence[str], Problems], tuple[Any, ...]]

# The blocks that are always there (their defaults when absent), by top-level key.
_BLOCKS: dict[str, type[Block]] = {
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
# The blocks that are off unless written.
_OPTIONAL_BLOCKS: dict[str, type[Block]] = {
    "degraded_response": DegradedResponseConfig,
    "canary": CanaryConfig,
    "shadow": ShadowTrafficConfig,
    "fleet": FleetConfig,
}
_TOP_KEYS = ["upstreams", "routing", *_BLOCKS, *_OPTIONAL_BLOCKS, "healing", "policies"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SidecarConfig:
    """The sidecar's whole configuration, validated; build it with
    :func:`mlwarden.sidecar.settings.load_sidecar_config` (policies parsed) or, without the
    healing layer, :func:`load_config` / :meth:`from_mapping`. ``upstreams`` keeps the file's
    order.

    ``policies`` holds what the :data:`PolicyParser` returned (the healing layer's
    ``PolicyConfig`` objects); without a parser, the entries as written.
    """

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
    fleet: FleetConfig | None = None
    healing: HealingConfig = field(default_factory=HealingConfig)
    policies: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        problems = Problems()
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
        parse_policies: PolicyParser | None = None,
    ) -> SidecarConfig:
        """Validate a parsed YAML document after applying the environment overrides.

        Raises ConfigError with every problem found. ``environ`` defaults to ``os.environ``.
        """
        env = os.environ if environ is None else environ
        if not isinstance(data, Mapping):
            got = "an empty document" if data is None else f"{type(data).__name__} {show(data)}"
            raise ConfigError(
                [f"top level: expected a mapping with 'upstreams', got {got}"], source=source
            )
        problems = Problems()
        data = apply_env(data, env, problems)
        for key in data:
            if key not in _TOP_KEYS:
                problems.unknown("", key, _TOP_KEYS)
        upstreams, names = load_upstreams(data.get("upstreams"), problems)
        blocks = {key: block._load(data.get(key), key, problems) for key, block in _BLOCKS.items()}
        optional = {
            key: block._load(data[key], key, problems) if data.get(key) is not None else None
            for key, block in _OPTIONAL_BLOCKS.items()
        }
        canary, shadow = optional["canary"], optional["shadow"]
        # Versions on trial are not fallbacks by default: a fallback must be a stable version.
        on_trial = ({canary.candidate} if canary else set()) | (
            {shadow.target} if shadow else set()
        )
        # Routing is checked against every declared name, also those whose block has problems,
        # so that one bad URL does not show up again as an unknown upstream in routing.
        routing = (
            load_routing(data.get("routing"), names, problems, on_trial=on_trial) if names else None
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
                optional["canary"] = check_canary(canary, names, routing, problems)
            if shadow:
                check_shadow(shadow, names, routing, problems)
            fleet = optional["fleet"]
            if fleet and fleet.drift_upstream and fleet.drift_upstream not in names:
                problems.add(
                    "fleet.drift_upstream",
                    f"unknown upstream {fleet.drift_upstream!r} (known: {', '.join(names)})",
                )
        healing = load_healing(data.get("healing"), problems)
        policies = load_policy_entries(data.get("policies"), problems)
        if parse_policies is not None and names:
            policies = parse_policies(policies, names, problems)
        if problems.items:
            raise ConfigError(problems.items, source=source)
        return cls(
            upstreams=upstreams,
            routing=routing,  # type: ignore[arg-type]
            healing=healing,
            policies=policies,
            **blocks,
            **optional,
        )


def _check_whole(
    names: list[str],
    upstreams: tuple[UpstreamConfig, ...],
    routing: RoutingConfig,
    listen: ListenConfig | None,
    admin: AdminConfig | None,
    timeouts: TimeoutsConfig | None,
    problems: Problems,
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


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    parse_policies: PolicyParser | None = None,
) -> SidecarConfig:
    """Read, override and validate the sidecar's YAML file; ConfigError names every problem."""
    data = read_document(path)
    return SidecarConfig.from_mapping(
        data, source=os.fspath(path), environ=environ, parse_policies=parse_policies
    )
