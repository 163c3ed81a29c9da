"""Several models behind one monitor: which model a request is for, and each model's own parts.

Multi-model servers (MLServer, KServe's ModelServer, Triton, Seldon) serve every model from one
app, at paths that name it: ``/v2/models/{name}[/versions/{version}]/infer`` (the Open Inference
Protocol) and ``/v1/models/{name}:predict`` (KServe v1). :class:`ModelPaths` reads the model's
name and version from such a path (built-in templates, or the user's own), and a
:class:`ModelTracker` per model holds what one monitor holds for one model: its health window,
feature windows against its own baseline, its drift worker, its remembered predictions and live
quality, and its series' ``model``/``version`` labels (its own :class:`MonitorOptions`, the
monitor's with the model's name, version and baseline put in).

Bounded: :class:`ModelRegistry` keeps at most ``max_models`` trackers. A tracker is made for a
model when its baseline is found or when a request for it is first answered 2xx (so a client
cannot fill the registry with names of models that do not exist); until then, and for every
model beyond the bound, requests are timed and counted under ``model="other"``, one tracker
without drift, never new series. A model without a baseline is tracked without drift, and its
baseline is looked for again at most every ``baseline_recheck_s``: a model loaded at run time
is picked up when its ``<name>.json`` appears.

Baselines (:class:`BaselineSource`): a directory of ``<model>.json`` files, a mapping of model
name to a baseline (a path, a profile or its dict), or a callable ``name -> profile | None``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlwarden.middleware.baseline import BaselineProfile, load_baseline
from mlwarden.middleware.errors import ConfigError

__all__ = [
    "BUILTIN_MODEL_PATHS",
    "OTHER_MODEL",
    "BaselineSource",
    "ModelPaths",
    "baseline_profile",
]

log = logging.getLogger("mlwarden.middleware.models")

#: The paths of the Open Inference Protocol (v2) and of KServe's v1 protocol.
BUILTIN_MODEL_PATHS: tuple[str, ...] = (
    "/v2/models/{name}/versions/{version}/infer",
    "/v2/models/{name}/infer",
    "/v1/models/{name}:predict",
)
#: The ``model`` label of requests for models not tracked on their own.
OTHER_MODEL = "other"
# A model name or version taken from a path: what a label value may safely be.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class ModelPaths:
    """Templates of model paths with ``{name}`` (required) and ``{version}`` (optional)."""

    __slots__ = ("_patterns", "templates")

    def __init__(self, templates: tuple[str, ...]) -> None:
        problems: list[str] = []
        patterns: list[re.Pattern[str]] = []
        for template in templates:
            if not isinstance(template, str) or not template.startswith("/"):
                problems.append(f"model_paths: {template!r}: expected a path starting with '/'")
                continue
            names = _PLACEHOLDER.findall(template)
            unknown = sorted(set(names) - {"name", "version"})
            if unknown or names.count("name") != 1 or names.count("version") > 1:
                problems.append(
                    f"model_paths: {template!r}: expected one {{name}} and at most one "
                    f"{{version}} placeholder"
                    + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
                continue
            regex = ""
            last = 0
            for found in _PLACEHOLDER.finditer(template):
                regex += re.escape(template[last : found.start()])
                regex += f"(?P<{found.group(1)}>[^/:]+)"
                last = found.end()
            patterns.append(re.compile(regex + re.escape(template[last:])))
        if problems:
            raise ConfigError(problems)
        self.templates = templates
        self._patterns = tuple(patterns)

    def match(self, path: str) -> tuple[str, str | None] | None:
        """The model's name and version (None: not in the path) for ``path``; a name or
        version that is not a safe label value (letters, digits, ``._-``, at most 100
        characters) matches as :data:`OTHER_MODEL`."""
        for pattern in self._patterns:
            found = pattern.fullmatch(path)
            if found is not None:
                name = found.group("name")
                version = found.groupdict().get("version")
                if not _SAFE.fullmatch(name) or (
                    version is not None and not _SAFE.fullmatch(version)
                ):
                    return OTHER_MODEL, None
                return name, version
        return None


class BaselineSource:
    """Where each model's baseline comes from (see the module docstring).

    A mapping's baselines are loaded at start-up (a bad one is a :class:`ConfigError` naming
    the model); a directory's and a callable's when a model is first seen, and again at most
    every ``recheck_s`` while missing. A file or callable that fails at run time is logged and
    the model is tracked without drift meanwhile.
    """

    def __init__(self, source: Any, *, recheck_s: float = 30.0) -> None:
        self.recheck_s = recheck_s
        self._directory: Path | None = None
        self._loader: Callable[[str], Any] | None = None
        self._mapping: dict[str, BaselineProfile] = {}
        if isinstance(source, str | os.PathLike):
            directory = Path(source)
            if not directory.is_dir():
                raise ConfigError(
                    f"baselines: {str(source)!r} is not a directory (of <model>.json baselines)"
                )
            self._directory = directory
        elif isinstance(source, Mapping):
            problems: list[str] = []
            for name, value in source.items():
                try:
                    self._mapping[str(name)] = baseline_profile(value)
                except ConfigError as exc:
                    problems.extend(f"baselines[{name!r}]: {p}" for p in exc.problems)
                except (OSError, ValueError) as exc:
                    problems.append(f"baselines[{name!r}]: {exc}")
            if problems:
                raise ConfigError(problems)
        elif callable(source):
            self._loader = source
        else:
            raise ConfigError(
                "baselines: expected a directory of <model>.json files, a mapping of model "
                f"name to baseline, or a callable name -> baseline, got {type(source).__name__}"
            )

    @property
    def known(self) -> tuple[str, ...]:
        """The models a mapping names (tracked from start-up)."""
        return tuple(self._mapping)

    def load(self, name: str) -> BaselineProfile | None:
        """``name``'s baseline, or None when there is none (yet)."""
        if name == OTHER_MODEL:
            return None
        if self._directory is not None:
            path = self._directory / f"{name}.json"
            if not path.is_file():
                return None
            try:
                return load_baseline(path)
            except (ConfigError, OSError, ValueError) as exc:
                log.warning(
                    "mlwarden: the baseline of model %s (%s) is unusable: %s", name, path, exc
                )
                return None
        if self._loader is not None:
            try:
                value = self._loader(name)
                return None if value is None else baseline_profile(value)
            except Exception as exc:
                log.warning("mlwarden: the baseline loader failed for model %s: %s", name, exc)
                return None
        return self._mapping.get(name)


def baseline_profile(value: Any) -> BaselineProfile:
    """A baseline given as a profile, a path to its JSON file or its dict (ConfigError if
    it is none of them)."""
    if isinstance(value, BaselineProfile):
        return value
    if isinstance(value, str | os.PathLike):
        return load_baseline(value)
    if isinstance(value, Mapping):
        return BaselineProfile.from_dict(value)
    raise ConfigError(
        f"expected a path to a baseline JSON file, a BaselineProfile or its dict, got "
        f"{type(value).__name__}"
    )


class ModelRegistry:
    """The trackers of one monitor, at most ``max_models`` plus ``other``; see the module
    docstring. ``make(name, version, baseline)`` builds a tracker (the monitor's factory)."""

    def __init__(
        self,
        *,
        make: Callable[[str, str, BaselineProfile | None], Any],
        default_version: str,
        baselines: BaselineSource | None,
        max_models: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self._default_version = default_version
        self._baselines = baselines
        self.max_models = max_models
        self._clock = clock
        self._lock = threading.Lock()  # trackers are made on the loop; read from threads too
        self._trackers: dict[str, Any] = {}
        self._looked_up: dict[str, float] = {}  # models with no tracker yet: last baseline look
        self.other = make(OTHER_MODEL, default_version, None)
        self.on_new: Callable[[Any], None] | None = None
        for name in baselines.known if baselines is not None else ():
            self._add(name, default_version, baselines.load(name) if baselines else None)

    def __iter__(self) -> Iterator[Any]:
        yield from list(self._trackers.values())

    def get(self, name: str) -> Any | None:
        return self._trackers.get(name)

    def existing(self, name: str) -> Any:
        """The tracker of ``name`` when there is one, else ``other`` (nothing is made)."""
        return self._trackers.get(name, self.other)

    def resolve(self, name: str, version: str | None, answered: bool) -> Any:
        """The tracker a finished request of ``name`` counts under: its own (made now when
        its baseline exists or the request was ``answered`` 2xx, and there is room), else
        ``other``. A tracker without a baseline looks for it again (at most every
        ``recheck_s``)."""
        tracker = self._trackers.get(name)
        if tracker is not None:
            if tracker.baseline is None and self._due(name):
                profile = self._baselines.load(name) if self._baselines is not None else None
                if profile is not None:
                    tracker.attach_baseline(profile)
            return tracker
        if name == OTHER_MODEL or len(self._trackers) >= self.max_models:
            return self.other
        profile = None
        if self._baselines is not None and self._due(name):
            profile = self._baselines.load(name)
        if profile is None and not answered:
            return self.other
        return self._add(name, version or self._default_version, profile)

    def _due(self, name: str) -> bool:
        now = self._clock()
        last = self._looked_up.get(name)
        recheck = self._baselines.recheck_s if self._baselines is not None else 30.0
        if last is not None and now - last < recheck:
            return False
        if len(self._looked_up) >= 4 * self.max_models and name not in self._looked_up:
            self._looked_up.clear()  # bounded: names a client made up are forgotten
        self._looked_up[name] = now
        return True

    def _add(self, name: str, version: str, profile: BaselineProfile | None) -> Any:
        with self._lock:
            tracker = self._trackers.get(name)
            if tracker is None:
                tracker = self._make(name, version, profile)
                self._trackers[name] = tracker
                self._looked_up.pop(name, None)
        log.info(
            "mlwarden: tracking model %s (version %s)%s",
            name,
            version,
            "" if profile is not None else " without drift until its baseline appears",
        )
        if self.on_new is not None:
            self.on_new(tracker)
        return tracker


def options_for(options: Any, name: str, version: str, baseline: BaselineProfile | None) -> Any:
    """The monitor's options for one model: its name, version and baseline put in (no
    InfluxDB shipping without a baseline: its statistics are the baseline's features')."""
    influx = options.influx if baseline is not None else None
    return dataclasses.replace(
        options, model_name=name, model_version=version, baseline=baseline, influx=influx
    )
