"""mlwarden's inference middleware (the library layer).

``app.add_middleware(InferenceMonitor, model_name=..., model_version=..., baseline=...)``;
``find_monitor(app)`` reaches the instance once the app has started.
"""

from typing import TYPE_CHECKING, Any

from mlwarden.middleware.errors import BaselineError, ConfigError, MlwardenError, PayloadError

if TYPE_CHECKING:
    from mlwarden.middleware.lookup import find_monitor
    from mlwarden.middleware.monitor import InferenceMonitor

__all__ = [
    "BaselineError",
    "ConfigError",
    "InferenceMonitor",
    "MlwardenError",
    "PayloadError",
    "find_monitor",
]


def __getattr__(name: str) -> Any:
    # Imported on first use so that ``mlwarden.middleware.errors`` and the other leaf modules
    # load without pulling in the whole middleware.
    if name == "InferenceMonitor":
        from mlwarden.middleware.monitor import InferenceMonitor

        return InferenceMonitor
    if name == "find_monitor":
        from mlwarden.middleware.lookup import find_monitor

        return find_monitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
