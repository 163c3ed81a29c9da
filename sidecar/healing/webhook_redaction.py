"""What of a webhook URL may be logged: secrets taken out of URLs, and out of httpx's log line.

Webhook URLs often are credentials: ``https://user:pass@host/``, ``?token=...``, or the path
itself (Slack's ``/services/T…/B…/<secret>``). Only :func:`redact_url` forms ever reach a log
line or a :class:`~mlwarden.sidecar.healing.webhook_delivery.WebhookResult`: scheme, host, port
and path, without userinfo, query or fragment, and with token-like path segments (16 or more
characters with a digit or both letter cases, or 32 or more of anything) replaced by ``***``.
httpx logs every request's full URL at INFO; a filter on the ``httpx`` logger redacts that line
for the requests made inside :func:`httpx_log_redacted` only (a context variable marks them), so
other httpx users' logs are untouched. Error texts carry exception class names, never exception
messages, which may quote the URL.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

__all__ = ["httpx_log_redacted", "install_httpx_filter", "redact_url"]


def _looks_like_token(segment: str) -> bool:
    # Words such as "retraining-pipeline" stay readable; random tokens almost surely hold a
    # digit or both cases (a 24-character one has neither with odds below 1e-8).
    n = len(segment)
    if n >= 32:
        return True
    if n < 16:
        return False
    return any(c.isdigit() for c in segment) or (
        any(c.isupper() for c in segment) and any(c.islower() for c in segment)
    )


def redact_url(url: str) -> str:
    """``url`` as it may be logged: ``scheme://host[:port]/path``, secrets removed.

    Userinfo, query and fragment are dropped; path segments that look like tokens (see the
    module docstring) become ``***``. Never raises: an unparseable URL becomes ``<invalid url>``.
    """
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    path = "/".join("***" if _looks_like_token(seg) else seg for seg in parts.path.split("/"))
    return f"{parts.scheme}://{netloc}{path}"


_IN_WEBHOOK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mlwarden_webhook_request", default=False
)


@contextlib.contextmanager
def httpx_log_redacted() -> Iterator[None]:
    """httpx's request log line shows :func:`redact_url` forms for requests made inside."""
    token = _IN_WEBHOOK.set(True)
    try:
        yield
    finally:
        _IN_WEBHOOK.reset(token)


class _RedactHttpxRequestLog(logging.Filter):
    """Rewrites httpx's ``HTTP Request: POST <url> ...`` line for the marked requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _IN_WEBHOOK.get() and isinstance(record.args, tuple) and len(record.args) >= 2:
            args = list(record.args)
            args[1] = redact_url(str(args[1]))
            record.args = tuple(args)
        return True


_httpx_filter_lock = threading.Lock()


def install_httpx_filter() -> None:
    """Add the redacting filter to the ``httpx`` logger, once per process."""
    with _httpx_filter_lock:
        logger = logging.getLogger("httpx")
        if not any(isinstance(f, _RedactHttpxRequestLog) for f in logger.filters):
            logger.addFilter(_RedactHttpxRequestLog())
