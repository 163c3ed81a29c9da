"""Which outcomes are retriable (:class:`RetryOn`, Envoy's ``retry_on`` words) and how long a
``Retry-After`` asks to wait."""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import parsedate_to_datetime

from mlwarden.sidecar.config import RETRY_ON, RetryConfig
from mlwarden.sidecar.config.schema import check_arguments, field_check
from mlwarden.sidecar.resilience.retry.state import Outcome

__all__ = ["RETRY_ON_CONDITIONS", "RetryOn", "parse_retry_after"]

_RETRY = RetryConfig()  # the defaults
#: Envoy's ``retry_on`` words (:data:`mlwarden.sidecar.config.RETRY_ON`).
RETRY_ON_CONDITIONS: frozenset[str] = RETRY_ON
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def _listed(values: Iterable[object]) -> object:
    """A list from any iterable (a set, a generator); a string is passed on as it is (a
    comma-separated list of words to the word checks)."""
    return values if isinstance(values, str) else list(values)


class RetryOn:
    """Which outcomes are retriable, in Envoy's words, and the reason label of each.

    The defaults are ``retry.retry_on``'s and ``retry.retriable_status_codes``'s.

    ``connect-failure``, ``reset``, ``timeout``: the attempt got no response of that kind.
    ``retriable-status-codes``: the status is in ``retriable_status_codes``.
    ``5xx``: any 5xx status, and no response at all (connect failure, reset, timeout), as Envoy.
    ``gateway-error``: 502, 503, 504, a connect failure or a reset. Unlike Envoy, not a
    timeout: a model that is slow would get more load exactly when it is slow, so retrying a
    timeout on the same upstream takes ``timeout`` (or ``5xx``) by name; the proxy moves a
    timed-out request to the fallback instead.
    """

    def __init__(
        self,
        conditions: Iterable[str] = _RETRY.retry_on,
        *,
        retriable_status_codes: Iterable[int] = _RETRY.retriable_status_codes,
    ) -> None:
        v = check_arguments(
            {
                "retry_on": (field_check(RetryConfig, "retry_on"), _listed(conditions)),
                "retriable_status_codes": (
                    field_check(RetryConfig, "retriable_status_codes"),
                    _listed(retriable_status_codes),
                ),
            },
            source="retry policy",
        )
        self.conditions: frozenset[str] = frozenset(v["retry_on"])
        self.retriable_status_codes: frozenset[int] = frozenset(v["retriable_status_codes"])
        no_response = bool(self.conditions & {"5xx", "gateway-error"})
        self._errors: dict[str, bool] = {
            "connect_error": no_response or "connect-failure" in self.conditions,
            "reset": no_response or "reset" in self.conditions,
            "timeout": bool(self.conditions & {"5xx", "timeout"}),
        }
        self._named_statuses = self.retriable_status_codes | _GATEWAY_STATUSES

    @property
    def reason_labels(self) -> frozenset[str]:
        """Every reason label :meth:`classify` can return (for metrics set up front)."""
        labels = {kind for kind, on in self._errors.items() if on}
        if "retriable-status-codes" in self.conditions:
            labels |= {f"status_{code}" for code in self.retriable_status_codes}
        if self.conditions & {"5xx", "gateway-error"}:
            labels |= {f"status_{code}" for code in _GATEWAY_STATUSES}
        if "5xx" in self.conditions:
            labels.add("status_5xx")
        return frozenset(labels)

    def classify(self, outcome: Outcome) -> str | None:
        """The reason label if ``outcome`` is retriable, else ``None``."""
        if outcome.error is not None:
            return outcome.error if self._errors[outcome.error] else None
        status = outcome.status
        assert status is not None
        if (
            ("retriable-status-codes" in self.conditions and status in self.retriable_status_codes)
            or ("gateway-error" in self.conditions and status in _GATEWAY_STATUSES)
            or ("5xx" in self.conditions and 500 <= status <= 599)
        ):
            return f"status_{status}" if status in self._named_statuses else "status_5xx"
        return None

    def __repr__(self) -> str:
        return (
            f"RetryOn({sorted(self.conditions)!r}, "
            f"retriable_status_codes={sorted(self.retriable_status_codes)!r})"
        )


def parse_retry_after(value: str | None, *, now_epoch_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or ``None``.

    Dates in the past mean "now" (0.0); anything unparseable is ignored rather than trusted.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is malformed
        return None
    return max(0.0, when.timestamp() - now_epoch_s)
