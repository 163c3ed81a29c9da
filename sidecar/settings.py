"""The sidecar's settings: the configuration file with its policies parsed, in one pass.

:mod:`mlwarden.sidecar.config` reads and validates the file but knows nothing of the healing
layer; :mod:`mlwarden.sidecar.healing.policy_config` parses the ``policies`` against the
healing vocabulary. This module, above both, runs them together so that an invalid file stops
start-up with one :class:`~mlwarden.middleware.errors.ConfigError` listing every problem,
policy problems among the others'. It is where the sidecar (``mlwarden sidecar``, its
``--check``, the demo) gets its configuration from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mlwarden.sidecar.config import SidecarConfig, load_config
from mlwarden.sidecar.healing.policy_config import parse_policies

__all__ = ["load_sidecar_config", "sidecar_config_from_mapping"]


def load_sidecar_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Read, override and validate the file; ``policies`` holds parsed ``PolicyConfig``s.

    ``environ`` defaults to ``os.environ``. ConfigError names every problem of the file.
    """
    return load_config(path, environ=environ, parse_policies=parse_policies)


def sidecar_config_from_mapping(
    data: Any, *, source: str | None = None, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """The same for an already parsed document (tests, the demo's generated configuration)."""
    return SidecarConfig.from_mapping(
        data, source=source, environ=environ, parse_policies=parse_policies
    )
