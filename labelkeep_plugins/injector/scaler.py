"""The live GradScaler scale, so gradient-path terms are scaled like the user's loss.

``GradScaler.scale`` records the scale it multiplied by; ``update`` clears it, so
a later unscaled backward never gets a stale factor.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch.amp.grad_scaler import GradScaler

from labelkeep_plugins.patching import PatchSet

_lock = threading.Lock()
_users = 0
_patches = PatchSet("GradScaler tracking")
_live_scale: torch.Tensor | None = None


def live_scale() -> torch.Tensor | None:
    """The scale of the loss now being backpropagated, or None without an active scaler."""
    return _live_scale


def acquire() -> None:
    """Start tracking (reference-counted across injectors)."""
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            _patches.patch(GradScaler, "scale", _make_scale(GradScaler.scale))
            _patches.patch(GradScaler, "update", _make_update(GradScaler.update))


def release() -> None:
    """Stop tracking when the last injector detaches."""
    global _users, _live_scale
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0:
            _patches.undo()
            _live_scale = None


def _make_scale(original: Any) -> Any:
    def scale(self: GradScaler, outputs: Any) -> Any:
        global _live_scale
        result = original(self, outputs)
        if self.is_enabled() and self._scale is not None:
            _live_scale = self._scale
        return result

    return scale


def _make_update(original: Any) -> Any:
    def update(self: GradScaler, new_scale: Any = None) -> None:
        global _live_scale
        _live_scale = None
        original(self, new_scale)

    return update
