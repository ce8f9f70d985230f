"""What the injector remembers about one student forward, found again by tensor identity."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class CapturedForward:
    """One student forward: its logits (weakly), their detached values and the reference's."""

    logits_ref: weakref.ref[torch.Tensor]
    student: torch.Tensor
    reference: torch.Tensor
    training: bool
    pass_id: int = 0
    handled: bool = False
    targets: torch.Tensor | None = field(default=None)


class ForwardRegistry:
    """Captured forwards keyed by the identity of their logits tensor.

    An entry leaves when its logits tensor is freed; ``on_release`` sees it then
    (evaluation entries are counted at that point if no loss claimed them).
    """

    def __init__(self, on_release: Callable[[CapturedForward], None]) -> None:
        self._entries: dict[int, CapturedForward] = {}
        self._on_release = on_release

    def add(
        self, logits: torch.Tensor, reference: torch.Tensor, training: bool, pass_id: int = 0
    ) -> CapturedForward:
        key = id(logits)
        self._release(key)

        def released(_ref: weakref.ref[torch.Tensor]) -> None:
            self._release(key)

        ref = weakref.ref(logits, released)
        entry = CapturedForward(ref, logits.detach(), reference, training, pass_id)
        self._entries[key] = entry
        return entry

    def find(self, tensor: torch.Tensor) -> CapturedForward | None:
        entry = self._entries.get(id(tensor))
        if entry is None or entry.logits_ref() is not tensor:
            return None
        return entry

    def flush(self, *, evaluation_only: bool = False) -> None:
        """Release entries now (all when detaching; evaluation ones when the meter is read)."""
        for key, entry in list(self._entries.items()):
            if not (evaluation_only and entry.training):
                self._release(key)

    def _release(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._on_release(entry)
