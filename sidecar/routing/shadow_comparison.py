"""How a shadow's answer is judged against the primary's, and the agreement rate over verdicts.

This module owns the comparison rules and the window that turns verdicts into the
``shadow_agreement`` signal; the mirror (:mod:`mlwarden.sidecar.routing.shadow`) decides when
a pair of answers is ready and calls :func:`judge` once per pair, off the client's path.

Comparison rules (what :func:`judge` returns; the mirror settles a failed primary, a 5xx or a
failed shadow before asking, as *uncompared*):

- both 2xx: both bodies are read with the :class:`~mlwarden.middleware.predictions.PredictionReader`
  as JSON. Class labels agree when equal; numeric predictions agree when
  ``|a - b| <= abs_tol`` or ``|a - b| <= rel_tol * |a|`` (``a`` the primary's). A response
  with several predictions (a batch) is one comparison: it agrees only when every element
  agrees. Confidences are not compared (they say how sure the model is, not what it answered).
  ``incomparable``: a body that is not JSON or holds no prediction, or different numbers of
  predictions (or classes on one side only); ``too_large``: a body not captured (above
  ``max_body_bytes``), an uncompared reason;
- otherwise the statuses decide: the same status agrees (both refused the input alike), a
  different one disagrees (e.g. 200 against 422).

The agreement rate (:class:`AgreementWindow`) is agree / (agree + disagree) over the last
``size`` verdicts no older than ``max_age_s``; incomparable answers do not count toward it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.predictions import PredictionReader, Predictions

__all__ = ["COMPARISON_RESULTS", "AgreementWindow", "compare_predictions", "judge"]

#: The verdict of one comparison.
COMPARISON_RESULTS = ("agree", "disagree", "incomparable")


def compare_predictions(
    primary: Predictions, shadow: Predictions, *, abs_tol: float, rel_tol: float
) -> str:
    """``agree``, ``disagree`` or ``incomparable``: the rules in the module docstring."""
    if not (primary.classes or primary.values) or not (shadow.classes or shadow.values):
        return "incomparable"
    if len(primary.classes) != len(shadow.classes) or len(primary.values) != len(shadow.values):
        return "incomparable"
    if primary.classes != shadow.classes:
        return "disagree"
    for a, b in zip(primary.values, shadow.values, strict=True):
        diff = abs(a - b)
        if diff > abs_tol and diff > rel_tol * abs(a):
            return "disagree"
    return "agree"


def judge(
    primary_status: int,
    primary_body: bytes | None,
    shadow_status: int,
    shadow_body: bytes | None,
    *,
    reader: PredictionReader,
    abs_tol: float,
    rel_tol: float,
) -> tuple[str, dict[str, Any] | None]:
    """The verdict on two answers below 500 (a body None when not captured), and on a
    disagreement what each side said (for the admin), else None."""
    if 200 <= primary_status < 300 and 200 <= shadow_status < 300:
        if primary_body is None or shadow_body is None:
            return "too_large", None
        try:
            primary = reader.read(primary_body, None)
            shadow = reader.read(shadow_body, None)
        except PayloadError:
            return "incomparable", None
        result = compare_predictions(primary, shadow, abs_tol=abs_tol, rel_tol=rel_tol)
        if result == "disagree":
            return result, {"primary": _summary(primary), "shadow": _summary(shadow)}
        return result, None
    if primary_status == shadow_status:
        return "agree", None
    return "disagree", {"primary": {"status": primary_status}, "shadow": {"status": shadow_status}}


def _summary(predictions: Predictions, limit: int = 10) -> dict[str, Any]:
    """The first few predictions, for the admin's view of the last disagreement."""
    out: dict[str, Any] = {}
    if predictions.classes:
        out["classes"] = predictions.classes[:limit]
    if predictions.values:
        out["values"] = predictions.values[:limit]
    out["count"] = predictions.count
    return out


class AgreementWindow:
    """The last ``size`` agree/disagree verdicts no older than ``max_age_s``.

    Locked: the comparator appends on the event loop while a scrape may read from another
    thread.
    """

    __slots__ = ("_agreed", "_clock", "_entries", "_lock", "_max_age_s", "_size")

    def __init__(self, size: int, max_age_s: float, clock: Callable[[], float]) -> None:
        self._size = size
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: deque[tuple[float, bool]] = deque()
        self._agreed = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AgreementWindow(size={self._size}, max_age_s={self._max_age_s})"

    @property
    def size(self) -> int:
        return self._size

    @property
    def max_age_s(self) -> float:
        return self._max_age_s

    def add(self, agreed: bool) -> None:
        now = self._clock()
        with self._lock:
            if len(self._entries) >= self._size:
                self._agreed -= self._entries.popleft()[1]
            self._entries.append((now, agreed))
            self._agreed += agreed
            self._evict(now)

    def counts(self) -> tuple[int, int]:
        """(agreed, total) within the window."""
        with self._lock:
            self._evict(self._clock())
            return self._agreed, len(self._entries)

    def _evict(self, now: float) -> None:
        entries = self._entries
        oldest_allowed = now - self._max_age_s
        while entries and entries[0][0] < oldest_allowed:
            self._agreed -= entries.popleft()[1]
