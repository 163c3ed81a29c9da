"""One InfluxDB write at a time: the synchronous write client, and what a failed write says.

:class:`InfluxWriteClient` wraps ``influxdb_client``'s synchronous WriteApi, imported and
opened on the first write (the import takes about half a second, which a model server should
not spend on its event loop), with no retries of its own. :func:`status_of` and
:data:`REJECTED_STATUSES` tell a server that refused the points (never worth retrying) from
one that failed. Shared by the feature-statistics shipper and the sidecar's ledger sink.
``influxdb_client`` is an extra (``mlwarden[influx]``): :func:`missing_client` lets start-up
fail on a setting that needs it, instead of every write failing later.
"""

from __future__ import annotations

import contextlib
import math
from importlib.util import find_spec
from typing import Any

from mlwarden.middleware.influx.settings import InfluxSettings

__all__ = ["REJECTED_STATUSES", "InfluxWriteClient", "describe", "missing_client", "status_of"]

#: Statuses that say the points themselves are bad: retrying them can never succeed.
REJECTED_STATUSES = frozenset({400, 422})


def missing_client(key: str) -> str | None:
    """The configuration problem of setting ``key`` when ``influxdb_client`` is not installed,
    else None. Looked up without importing it: the import is slow, and happens in the writer
    thread on the first write."""
    if find_spec("influxdb_client") is not None:
        return None
    return f"{key}: writing to InfluxDB needs influxdb-client: pip install 'mlwarden[influx]'"


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


def describe(exc: BaseException) -> str:
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
