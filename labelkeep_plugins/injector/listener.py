"""Who hears a handle's steps: its own listener (the tuner that owns its loss), then plugins.

A session hands its tuner to each handle it makes, so the tuner's feedback loop is in the
calls, not hidden on the global plugin bus, and a standalone ``attach()`` made beside a
session never feeds that session's tuner. Plugins still hear every handle through the
``labelkeep_training_step`` / ``labelkeep_evaluation_batch`` hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

TRAINING_STEP = "labelkeep_training_step"
EVALUATION_BATCH = "labelkeep_evaluation_batch"
STUDENT_CHANGED = "labelkeep_student_changed"  # told by the session, not by a handle
EVENTS = (TRAINING_STEP, EVALUATION_BATCH, STUDENT_CHANGED)


class Events:
    """Tell the listener (if it implements the event) and the plugins' hooks of one event."""

    def __init__(self, hooks: Any, listener: object | None = None) -> None:
        self._hooks = hooks
        self._direct = _bound_events(listener)

    def tell(self, event: str, **values: Any) -> None:
        """Once per step: one dict lookup, and the plugin hook only if a plugin implements it."""
        direct = self._direct.get(event)
        if direct is not None:
            direct(**values)
        hook = getattr(self._hooks, event)
        if hook.get_hookimpls():
            hook(**values)


def _bound_events(listener: object | None) -> dict[str, Callable[..., None]]:
    found: dict[str, Callable[..., None]] = {}
    for event in EVENTS:
        method = getattr(listener, event, None)
        if callable(method):
            found[event] = _with_declared_arguments(method)
    return found


def _with_declared_arguments(method: Callable[..., None]) -> Callable[..., None]:
    """Pass only the arguments the method declares, as pluggy does for a hook implementation."""
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return method
    names = {p.name for p in parameters}
    return lambda **values: method(**{k: v for k, v in values.items() if k in names})
