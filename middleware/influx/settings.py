"""The ``influx:`` settings: where and how feature statistics are shipped, validated.

:class:`InfluxSettings` checks every value on creation and collects every problem into one
:class:`~mlwarden.middleware.errors.ConfigError`; :meth:`InfluxSettings.from_mapping` reads
the configuration block, rejects unknown keys by name and takes the token from
``MLWARDEN_INFLUX_TOKEN`` when the block has none (a secret belongs in the environment).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from mlwarden.middleware.errors import ConfigError

__all__ = ["TOKEN_ENV", "InfluxSettings"]

#: Environment variable that supplies the token when the configuration does not.
TOKEN_ENV = "MLWARDEN_INFLUX_TOKEN"

_KEY = "influx"
_MEASUREMENT_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


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
