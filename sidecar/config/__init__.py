"""The sidecar's configuration: one YAML file plus environment overrides → frozen, validated config.

This package owns reading, overriding and validating the configuration; nothing else in the
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
``deploy/examples/sidecar-full.yaml`` lists every key with its default.

Where things are:

- :mod:`~mlwarden.sidecar.config.checks`: the value checks (one message shape);
- :mod:`~mlwarden.sidecar.config.schema`: blocks, settings, problem collection;
- :mod:`~mlwarden.sidecar.config.loader`: the YAML file and the environment overrides;
- the blocks, by family: :mod:`~mlwarden.sidecar.config.network` (listen, admin, upstreams,
  routing, timeouts, limits, degraded response), :mod:`~mlwarden.sidecar.config.resilience`
  (retry, breaker, health checks), :mod:`~mlwarden.sidecar.config.release` (canary, shadow),
  :mod:`~mlwarden.sidecar.config.healing` (ledger, healing, the shape of ``policies``),
  :mod:`~mlwarden.sidecar.config.tracing`, :mod:`~mlwarden.sidecar.config.fleet`;
- :mod:`~mlwarden.sidecar.config.sidecar_config`: the whole file and the rules between blocks.

The ``policies`` are parsed by the healing layer (this package imports nothing from it):
:func:`mlwarden.sidecar.settings.load_sidecar_config` loads the file with them parsed, in the
same single pass, and is what the sidecar starts from.
"""

from mlwarden.sidecar.config.fleet import FleetConfig
from mlwarden.sidecar.config.healing import EscalationConfig, HealingConfig, LedgerConfig
from mlwarden.sidecar.config.loader import ADMIN_TOKEN_ENV, ENV_PREFIX
from mlwarden.sidecar.config.network import (
    AdminConfig,
    DegradedResponseConfig,
    LimitsConfig,
    ListenConfig,
    RoutingConfig,
    TimeoutsConfig,
    UpstreamConfig,
)
from mlwarden.sidecar.config.release import CanaryConfig, ShadowTrafficConfig
from mlwarden.sidecar.config.resilience import (
    HTTP_METHODS,
    RETRY_ON,
    BreakerConfig,
    HealthChecksConfig,
    RetryConfig,
)
from mlwarden.sidecar.config.sidecar_config import PolicyParser, SidecarConfig, load_config
from mlwarden.sidecar.config.tracing import TracingConfig

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ENV_PREFIX",
    "HTTP_METHODS",
    "RETRY_ON",
    "AdminConfig",
    "BreakerConfig",
    "CanaryConfig",
    "DegradedResponseConfig",
    "EscalationConfig",
    "FleetConfig",
    "HealingConfig",
    "HealthChecksConfig",
    "LedgerConfig",
    "LimitsConfig",
    "ListenConfig",
    "PolicyParser",
    "RetryConfig",
    "RoutingConfig",
    "ShadowTrafficConfig",
    "SidecarConfig",
    "TimeoutsConfig",
    "TracingConfig",
    "UpstreamConfig",
    "load_config",
]
