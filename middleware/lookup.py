"""Finding the monitor that ``add_middleware`` built, to reach it from the app's own code.

``app.add_middleware(InferenceMonitor, ...)`` gives no handle on the instance: Starlette and
FastAPI build the middleware stack at start-up. :func:`find_monitor` walks that stack (each
middleware's ``app``, a Starlette app's ``middleware_stack``) to the
:class:`~mlwarden.middleware.monitor.InferenceMonitor`, so that a batch job in the same process
can call ``record_labels``. The monitor also puts itself on ``app.state.mlwarden_monitor``
when the server starts the app (the ASGI lifespan), before the app's own start-up code runs.
"""

from __future__ import annotations

from typing import Any

from mlwarden.middleware.monitor import InferenceMonitor

__all__ = ["find_monitor"]

_MAX_DEPTH = 100  # middleware stacks are a few levels deep; a loop ends here


def find_monitor(app: Any, *, model_name: str | None = None) -> InferenceMonitor:
    """The :class:`InferenceMonitor` in ``app``'s middleware stack (the outermost one, or
    the one of ``model_name``).

    ``app`` is the Starlette or FastAPI app (after start-up: before it Starlette has not built
    its middleware yet) or any ASGI app wrapping one. Raises :class:`LookupError` when there
    is none, saying why.
    """
    node, seen = app, set()
    built = True
    while node is not None and id(node) not in seen and len(seen) < _MAX_DEPTH:
        seen.add(id(node))
        if isinstance(node, InferenceMonitor) and _is_wanted(node, model_name):
            return node
        if hasattr(node, "middleware_stack"):  # a Starlette app: its stack, once built
            stack = node.middleware_stack
            if stack is None:
                built = False
            node = stack
        else:
            node = getattr(node, "app", None)
    which = f" for model {model_name!r}" if model_name is not None else ""
    if not built:
        raise LookupError(
            f"no InferenceMonitor{which} yet: the app builds its middleware when it starts; "
            f"call find_monitor(app) once it has (in a lifespan handler or a route), or read "
            f"app.state.mlwarden_monitor"
        )
    raise LookupError(f"no InferenceMonitor{which} in the app's middleware stack")


def _is_wanted(monitor: InferenceMonitor, model_name: str | None) -> bool:
    if model_name is None:
        return True
    if monitor.startup_error is not None:
        return False
    if monitor.models is not None:  # several models: one it tracks (or has a baseline of)
        return monitor.models.get(model_name) is not None
    return monitor.options.model_name == model_name
