"""The middleware's options: keyword arguments → one frozen, validated object.

Every problem is collected and reported at once, naming the option, the bad value and what is
allowed, so that one start-up shows everything that is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlwarden.middleware.baseline import BaselineProfile
from mlwarden.middleware.drift import DriftThresholds
from mlwarden.middleware.errors import ConfigError
from mlwarden.middleware.health import HealthThresholds
from mlwarden.middleware.influx import InfluxSettings, missing_client
from mlwarden.middleware.metrics import PREDICTION_BUCKETS
from mlwarden.middleware.models import (
    BUILTIN_MODEL_PATHS,
    OTHER_MODEL,
    BaselineSource,
    ModelPaths,
    baseline_profile,
)

__all__ = ["DEFAULT_ENDPOINT_SUFFIXES", "FEEDBACK_TOKEN_VARIABLE", "MonitorOptions"]

#: The environment variable the feedback token is read from when ``feedback_token`` is None.
FEEDBACK_TOKEN_VARIABLE = "MLWARDEN_FEEDBACK_TOKEN"
_MIN_TOKEN_CHARS = 16

DEFAULT_ENDPOINT_SUFFIXES = ("/predict", "/invocations", "/infer", ":predict")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class MonitorOptions:
    """What ``InferenceMonitor`` takes; see the README's configuration reference."""

    model_name: str
    model_version: str = "unknown"
    baseline: BaselineProfile | None = None

    # Several models behind one app (multi-model servers): each request's model is read from
    # its path, each model has its own baseline, windows, drift, health and quality.
    model_paths: tuple[str, ...] | None = None  # None: one model (model_name)
    baselines: Any = None  # a BaselineSource: a directory, a mapping or a callable
    max_models: int = 32
    baseline_recheck_s: float = 30.0

    # Which requests are model endpoints (the rest are only timed and counted).
    endpoint_suffixes: tuple[str, ...] = DEFAULT_ENDPOINT_SUFFIXES
    endpoint_paths: tuple[str, ...] = ()
    endpoint_methods: tuple[str, ...] = ("POST",)

    # Reading payloads and predictions.
    feature_extractor: Callable[[Any], Any] | None = None
    prediction_path: str | Callable[[Any], Any] | None = None
    confidence_path: str | Callable[[Any], Any] | None = None
    prediction_classes: tuple[str, ...] = ()
    prediction_buckets: tuple[float, ...] = PREDICTION_BUCKETS
    max_body_bytes: int = 4 * _MiB
    max_response_bytes: int = 4 * _MiB
    max_rows: int = 10_000

    # Exposition.
    registry: Any = None  # a prometheus_client CollectorRegistry; None = the default registry
    metrics_path: str | None = "/metrics"
    health_path: str | None = "/-/health"
    # The drift windows as mergeable counts ({drift_path}/counts, {drift_path}/baseline): what
    # a fleet of sidecars sums to judge drift on every replica's rows at once.
    drift_path: str | None = "/-/drift"

    # Tracing: the given provider, else the global one (a no-op until the app sets an SDK).
    tracing: bool = True
    tracer_provider: Any = None

    # Windows and drift.
    window_rows: int = 10_000
    window_seconds: float | None = 600.0
    drift_interval_s: float = 10.0
    drift_every_rows: int | None = None  # None: a fifth of the smallest scale (50 rows)
    drift_min_interval_s: float = 0.1
    drift: DriftThresholds = field(default_factory=DriftThresholds)
    health: HealthThresholds = field(default_factory=HealthThresholds)
    influx: InfluxSettings | None = None

    # Ground truth: request ids, remembered predictions, labels at /-/feedback, live quality.
    request_id_header: str | None = "x-request-id"  # None: no ids, nothing remembered
    feedback_path: str | None = "/-/feedback"
    # None: from MLWARDEN_FEEDBACK_TOKEN (read by from_kwargs); without either the endpoint
    # refuses labels (403) unless feedback_anonymous is spelled out.
    feedback_token: str | None = field(default=None, repr=False)
    feedback_anonymous: bool = False
    feedback_max_body_bytes: int = 16 * _MiB
    feedback_max_batch: int = 10_000
    quality_task: str | None = None  # "classification" | "regression"; None: from the answers
    positive_class: str | None = None  # None: F1 etc. macro-averaged over the classes seen
    decision_threshold: float = 0.5  # classification: a probability >= it predicts positive
    quality_window_s: float = 3600.0
    quality_max_samples: int = 10_000
    remember_max_predictions: int = 100_000
    remember_max_age_s: float = 7 * 86_400.0

    @classmethod
    def from_kwargs(
        cls, options: Mapping[str, Any], *, environ: Mapping[str, str] = os.environ
    ) -> MonitorOptions:
        """Build from ``add_middleware`` keyword arguments; raise one ``ConfigError`` for all.

        Without a ``feedback_token``, the token is read from ``MLWARDEN_FEEDBACK_TOKEN`` in
        ``environ``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        problems: list[str] = []
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{key}: unknown option{hint}")
        values = {k: v for k, v in options.items() if k in names}
        multi = options.get("model_paths") is not None or options.get("baselines") is not None
        if multi:
            if "model_name" in options:
                problems.append(
                    "model_name: not with model_paths or baselines (each request's model is "
                    "named by its path)"
                )
            if options.get("baseline") is not None:
                problems.append(
                    "baseline: not with model_paths or baselines (give each model's baseline "
                    "in baselines: a directory of <model>.json, a mapping or a callable)"
                )
            values["model_name"] = OTHER_MODEL
            if values.get("model_paths") is None:
                values["model_paths"] = BUILTIN_MODEL_PATHS
            _multi_model(values, problems)
        elif "model_name" not in options:
            problems.append("model_name: required (the model's name, a short string)")
        for key, convert in (
            ("baseline", _baseline),
            ("drift", _thresholds(DriftThresholds, "drift")),
            ("health", _thresholds(HealthThresholds, "health")),
            ("influx", _influx),
        ):
            if key in values:
                try:
                    values[key] = convert(values[key])
                except ConfigError as exc:
                    problems.extend(exc.problems)
                    values.pop(key)
        _feedback_credential(values, environ, problems)
        if "decision_threshold" in options and options.get("quality_task") != "classification":
            problems.append(
                "decision_threshold: only with quality_task='classification' (a probability "
                "output is scored as a regression otherwise)"
            )
        for key in (
            "model_paths",
            "endpoint_suffixes",
            "endpoint_paths",
            "endpoint_methods",
            "prediction_classes",
            "prediction_buckets",
        ):
            value = values.get(key)
            if isinstance(value, list):
                values[key] = tuple(value)
        try:
            options = cls(**{"model_name": "?", **values})
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return options

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_str("model_name", self.model_name, problems)
        _check_str("model_version", self.model_version, problems)
        for key in ("endpoint_suffixes", "endpoint_paths"):
            value = getattr(self, key)
            if not isinstance(value, tuple) or not all(isinstance(s, str) and s for s in value):
                problems.append(f"{key}: expected a list of non-empty strings, got {value!r}")
        if not isinstance(self.endpoint_methods, tuple) or not all(
            isinstance(m, str) and m.upper() in _HTTP_METHODS for m in self.endpoint_methods
        ):
            problems.append(
                f"endpoint_methods: expected HTTP methods from {sorted(_HTTP_METHODS)}, "
                f"got {self.endpoint_methods!r}"
            )
        for key in ("feature_extractor",):
            value = getattr(self, key)
            if value is not None and not callable(value):
                problems.append(f"{key}: expected a callable or None, got {value!r}")
        if self.prediction_path is not None and not (
            callable(self.prediction_path)
            or (isinstance(self.prediction_path, str) and self.prediction_path)
        ):
            problems.append(
                f"prediction_path: expected a dotted path or a callable, got "
                f"{self.prediction_path!r}"
            )
        if self.confidence_path is not None and not (
            callable(self.confidence_path)
            or (isinstance(self.confidence_path, str) and self.confidence_path)
        ):
            problems.append(
                f"confidence_path: expected a dotted path or a callable, got "
                f"{self.confidence_path!r}"
            )
        classes = self.prediction_classes
        if not isinstance(classes, tuple) or not all(isinstance(c, str) for c in classes):
            problems.append(f"prediction_classes: expected a list of strings, got {classes!r}")
        elif len(classes) > 100:
            problems.append(
                f"prediction_classes: at most 100 classes (each is a metric label), "
                f"got {len(classes)}"
            )
        buckets = self.prediction_buckets
        if (
            not isinstance(buckets, tuple)
            or not buckets
            or not all(isinstance(b, int | float) and math.isfinite(b) for b in buckets)
            or any(a >= b for a, b in itertools.pairwise(buckets))
        ):
            problems.append(
                f"prediction_buckets: expected finite numbers in increasing order, got {buckets!r}"
            )
        for key, low in (
            ("max_body_bytes", 1024),
            ("max_response_bytes", 1024),
            ("max_rows", 1),
            ("window_rows", 10),
            ("feedback_max_body_bytes", 1024),
            ("feedback_max_batch", 1),
            ("quality_max_samples", 10),
            ("remember_max_predictions", 1),
            ("max_models", 1),
        ):
            _check_int(key, getattr(self, key), low, problems)
        for key in ("quality_window_s", "remember_max_age_s", "baseline_recheck_s"):
            _check_positive(key, getattr(self, key), problems)
        if self.request_id_header is not None and not (
            isinstance(self.request_id_header, str)
            and re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.request_id_header)
        ):
            problems.append(
                f"request_id_header: expected a header name or None, got {self.request_id_header!r}"
            )
        if self.quality_task not in (None, "classification", "regression"):
            problems.append(
                f"quality_task: expected 'classification', 'regression' or None, "
                f"got {self.quality_task!r}"
            )
        for key in ("feedback_token", "positive_class"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and value):
                problems.append(f"{key}: expected a non-empty string or None")
        if self.quality_task == "regression" and self.positive_class is not None:
            problems.append("positive_class: only for quality_task 'classification'")
        if isinstance(self.feedback_token, str) and len(self.feedback_token) < _MIN_TOKEN_CHARS:
            problems.append(
                f"feedback_token: at least {_MIN_TOKEN_CHARS} characters (it guards the labels)"
            )
        if not isinstance(self.feedback_anonymous, bool):
            problems.append(
                f"feedback_anonymous: expected true or false, got {self.feedback_anonymous!r}"
            )
        elif self.feedback_anonymous and self.feedback_token is not None:
            problems.append(
                "feedback_anonymous: not with a feedback token (a token is wanted, or labels "
                "are anonymous: choose one)"
            )
        threshold = self.decision_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold < 1
        ):
            problems.append(
                f"decision_threshold: expected a probability between 0 and 1 (exclusive), "
                f"got {threshold!r}"
            )
        _check_positive("drift_interval_s", self.drift_interval_s, problems)
        _check_positive("drift_min_interval_s", self.drift_min_interval_s, problems)
        if self.drift_every_rows is not None:
            _check_int("drift_every_rows", self.drift_every_rows, 1, problems)
        if (
            isinstance(self.drift, DriftThresholds)
            and isinstance(self.window_rows, int)
            and self.drift.largest_scale > self.window_rows
        ):
            if self.drift.scales == DriftThresholds().scales:
                # The default scales, in a smaller window: the window is the largest scale.
                fitted = [s for s in self.drift.scales if s < self.window_rows]
                scales = (*fitted, self.window_rows)
                if scales[0] >= self.drift.min_rows:
                    object.__setattr__(
                        self, "drift", dataclasses.replace(self.drift, scales=scales)
                    )
                else:
                    problems.append(
                        f"window_rows: must be >= drift.min_rows ({self.drift.min_rows}) "
                        f"to judge drift, got {self.window_rows}"
                    )
            else:
                problems.append(
                    f"drift.scales: the largest scale ({self.drift.largest_scale}) must fit in "
                    f"window_rows ({self.window_rows})"
                )
        if self.window_seconds is not None:
            _check_positive("window_seconds", self.window_seconds, problems)
        for key in ("metrics_path", "health_path", "feedback_path", "drift_path"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and value.startswith("/")):
                problems.append(f"{key}: expected a path starting with '/' or None, got {value!r}")
        if self.influx is not None and self.baseline is None:
            problems.append(
                "influx: needs a baseline (the statistics shipped are the baseline features')"
            )
        if self.influx is not None and (problem := missing_client("influx")) is not None:
            problems.append(problem)
        if self.metrics_path is not None and self.metrics_path == self.health_path:
            problems.append("health_path: must differ from metrics_path")
        if not isinstance(self.tracing, bool):
            problems.append(f"tracing: expected true or false, got {self.tracing!r}")
        if self.registry is not None and not hasattr(self.registry, "register"):
            problems.append(
                f"registry: expected a prometheus_client CollectorRegistry, got {self.registry!r}"
            )
        if self.tracer_provider is not None and not hasattr(self.tracer_provider, "get_tracer"):
            problems.append(
                f"tracer_provider: expected an OpenTelemetry TracerProvider, got "
                f"{self.tracer_provider!r}"
            )
        if problems:
            raise ConfigError(problems)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.baseline.names if self.baseline is not None else ()

    @property
    def multi_model(self) -> bool:
        """Several models, each named by its request's path (``model_paths``)."""
        return self.model_paths is not None


def _multi_model(values: dict[str, Any], problems: list[str]) -> None:
    """Check the model path templates and load the baselines' source, in ``values``."""
    paths = values.get("model_paths")
    if isinstance(paths, str) or not isinstance(paths, list | tuple):
        problems.append(f"model_paths: expected a list of path templates, got {paths!r}")
        values.pop("model_paths", None)
    else:
        try:
            ModelPaths(tuple(paths))
        except ConfigError as exc:
            problems.extend(exc.problems)
    source = values.get("baselines")
    if source is not None and not isinstance(source, BaselineSource):
        recheck = values.get("baseline_recheck_s", 30.0)
        try:
            values["baselines"] = BaselineSource(
                source, recheck_s=recheck if isinstance(recheck, int | float) else 30.0
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
            values.pop("baselines")


def _check_str(key: str, value: object, problems: list[str]) -> None:
    if not isinstance(value, str) or not value or len(value) > 200:
        problems.append(
            f"{key}: expected a non-empty string of at most 200 characters, got {value!r}"
        )


def _check_int(key: str, value: object, low: int, problems: list[str]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(f"{key}: expected a whole number >= {low}, got {value!r}")


def _check_positive(key: str, value: object, problems: list[str]) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        problems.append(f"{key}: expected a number > 0, got {value!r}")


def _feedback_credential(
    values: dict[str, Any], environ: Mapping[str, str], problems: list[str]
) -> None:
    """The feedback token from the environment when the options name none."""
    if values.get("feedback_token") is None:
        token = environ.get(FEEDBACK_TOKEN_VARIABLE, "")
        if token and len(token) < _MIN_TOKEN_CHARS:
            problems.append(
                f"{FEEDBACK_TOKEN_VARIABLE}: at least {_MIN_TOKEN_CHARS} characters "
                f"(it guards the labels)"
            )
        elif token and values.get("feedback_anonymous") is True:
            problems.append(
                f"feedback_anonymous: not with a feedback token ({FEEDBACK_TOKEN_VARIABLE} is "
                f"set): a token is wanted, or labels are anonymous, choose one"
            )
        elif token:
            values["feedback_token"] = token


def _baseline(value: Any) -> BaselineProfile | None:
    if value is None:
        return None
    try:
        return baseline_profile(value)
    except ConfigError as exc:
        if isinstance(value, BaselineProfile | str | os.PathLike | Mapping):
            raise  # the file's or the dict's own problems
        raise ConfigError(
            f"baseline: expected a path to a baseline JSON file, a BaselineProfile or None, "
            f"got {type(value).__name__}"
        ) from exc


def _thresholds(cls: type, key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        raise ConfigError(f"{key}: expected a mapping of thresholds, got {value!r}")

    return convert


def _influx(value: Any) -> InfluxSettings | None:
    if value is None or isinstance(value, InfluxSettings):
        return value
    if isinstance(value, Mapping):
        return InfluxSettings.from_mapping(value)
    raise ConfigError(f"influx: expected a mapping (url, bucket, token, org, ...), got {value!r}")
