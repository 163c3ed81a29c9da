"""Inference payloads → rows of named features; model responses → predictions.

(contract stub; the parser is being written)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeatureBatch", "Predictions"]


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Feature rows of one request, by column.

    ``columns`` holds only features the baseline names (never names from the payload), each a
    list of ``rows`` raw values as they came (int, float, str, bool or None for missing).
    """

    rows: int
    columns: dict[str, list[object]]
    format: str
    unknown_features: int = 0


@dataclass(frozen=True, slots=True)
class Predictions:
    """What a model response said: numeric values, class labels and confidences in [0, 1]."""

    values: list[float]
    classes: list[str]
    confidences: list[float]

    @property
    def count(self) -> int:
        return max(len(self.values), len(self.classes))
