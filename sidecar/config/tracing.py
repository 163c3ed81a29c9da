"""The block of the sidecar's own traces; :mod:`mlwarden.sidecar.tracing` exports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlwarden.sidecar.config.checks import http_url, number, optional, text
from mlwarden.sidecar.config.schema import Block, setting

__all__ = ["TracingConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TracingConfig(Block):
    """Traces of the sidecar itself (a server span per request, a client span per attempt),
    sent over OTLP/HTTP in batches. Off unless ``otlp_endpoint`` is set here or the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``/``OTEL_EXPORTER_OTLP_ENDPOINT`` variable is; the
    exporter needs the ``otlp`` extra. ``otlp_endpoint`` is the collector's base URL
    (``http://collector:4318``; ``/v1/traces`` is appended) or its full traces URL."""

    _key: ClassVar[str] = "tracing"
    otlp_endpoint: str | None = setting(None, optional(http_url))
    service_name: str = setting("mlwarden-sidecar", text)
    sample_ratio: float = setting(1.0, number(float, ge=0, le=1))
