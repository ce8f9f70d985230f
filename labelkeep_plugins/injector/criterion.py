"""The loss-value path: extra terms ride on the user's own cross_entropy / nll_loss call.

``torch.nn.functional.cross_entropy`` and ``nll_loss`` are patched while any
injector is attached (``nn.CrossEntropyLoss`` and ``nn.NLLLoss`` call them). When
the input tensor *is* logits an injector captured, that injector adds its terms
to the returned value, reduced the way the user reduced theirs, so loss
averaging, gradient accumulation, AMP and DDP all see an exact combined loss.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.nn import _reduction

from labelkeep_plugins.loss.composer import in_internal_computation
from labelkeep_plugins.patching import PatchSet

PATCHED_FUNCTIONS = ("cross_entropy", "nll_loss")
_REDUCTION_POSITION = 4  # among the arguments after (input, target), in both functions


class CriterionListener(Protocol):
    def on_criterion(
        self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor, reduction: str
    ) -> torch.Tensor | None:
        """Return the combined loss if ``logits`` are this listener's, else None."""


_lock = threading.Lock()
_listeners: list[CriterionListener] = []
_patches = PatchSet("loss functions")


def add_listener(listener: CriterionListener) -> None:
    with _lock:
        if not _listeners:
            for name in PATCHED_FUNCTIONS:
                _patches.patch(F, name, _make_patched(name, getattr(F, name)))
        _listeners.append(listener)


def remove_listener(listener: CriterionListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners:
            _patches.undo()


def _make_patched(name: str, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(original)
    def patched(input: Any, target: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = original(input, target, *args, **kwargs)
        if not _listeners or in_internal_computation() or not isinstance(input, torch.Tensor):
            return loss
        reduction = _reduction_of(args, kwargs)
        for listener in list(_listeners):
            combined = listener.on_criterion(input, target, loss, reduction)
            if combined is not None:
                return combined
        return loss

    patched.__labelkeep_patch__ = name  # type: ignore[attr-defined]
    return patched


def _reduction_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    size_average = kwargs.get("size_average", args[1] if len(args) > 1 else None)
    reduce = kwargs.get("reduce", args[3] if len(args) > 3 else None)
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    if "reduction" in kwargs:
        return str(kwargs["reduction"])
    return str(args[_REDUCTION_POSITION]) if len(args) > _REDUCTION_POSITION else "mean"
