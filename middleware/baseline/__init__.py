"""The baseline profile: what the training data looked like, and the drift tests' reference.

- :mod:`~mlwarden.middleware.baseline.profile`: the profile's types, saving and loading, and
  :func:`category_key`;
- :mod:`~mlwarden.middleware.baseline.schema`: the file format and its checks (every problem
  with a profile file is collected and raised once as a :class:`BaselineError` that names
  each key, so that an operator fixes a broken file in one pass);
- :mod:`~mlwarden.middleware.baseline.build`: profiling training data;
- :mod:`~mlwarden.middleware.baseline.tables`: reading CSV, Parquet and ``.npz`` tables.
"""

from mlwarden.middleware.baseline.build import build_baseline, build_baseline_file
from mlwarden.middleware.baseline.profile import (
    BaselineProfile,
    CategoricalProfile,
    FeatureProfile,
    NumericProfile,
    category_key,
    load_baseline,
)
from mlwarden.middleware.baseline.schema import BASELINE_VERSION
from mlwarden.middleware.baseline.tables import read_table

__all__ = [
    "BASELINE_VERSION",
    "BaselineProfile",
    "CategoricalProfile",
    "FeatureProfile",
    "NumericProfile",
    "build_baseline",
    "build_baseline_file",
    "category_key",
    "load_baseline",
    "read_table",
]
