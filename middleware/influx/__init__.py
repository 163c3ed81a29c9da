"""Feature statistics shipped to InfluxDB (the v2 write API), in the background.

- :mod:`~mlwarden.middleware.influx.settings`: the ``influx:`` settings and their checks;
- :mod:`~mlwarden.middleware.influx.lines`: drift reports as line-protocol points (the point
  schema the dashboards query);
- :mod:`~mlwarden.middleware.influx.client`: the synchronous write client, one write at a
  time, and how a failed write is classified (also used by the sidecar's ledger sink);
- :mod:`~mlwarden.middleware.influx.shipper`: the bounded buffer and the background writer.
"""

from mlwarden.middleware.influx.client import (
    REJECTED_STATUSES,
    InfluxWriteClient,
    missing_client,
    status_of,
)
from mlwarden.middleware.influx.lines import escape
from mlwarden.middleware.influx.settings import TOKEN_ENV, InfluxSettings
from mlwarden.middleware.influx.shipper import InfluxShipper

__all__ = [
    "REJECTED_STATUSES",
    "TOKEN_ENV",
    "InfluxSettings",
    "InfluxShipper",
    "InfluxWriteClient",
    "escape",
    "missing_client",
    "status_of",
]
