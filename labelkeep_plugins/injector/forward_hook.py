"""The student's forward hook as an object that copies of the student leave behind.

A bound method registered as a hook drags its handle (and with it the reference and
the plugin manager) into ``copy.deepcopy(student)`` or ``torch.save(student)`` and
fails there. Instead, a deep copy of this object is an inert hook: inert, but not
silent, a copy that is trained (a backward through its output) gets no label-preserving
loss, and the first one in a process says so. A pickle (``torch.save`` of the whole
model, torch-pruning's way to save a pruned model) holds ``functools.partial(sys.audit,
...)`` in its place: a no-op of the standard library, so the saved model loads where
labelkeep is not installed. Its training is told at exit instead (no step got the loss).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from labelkeep_plugins.log import logger

COPY_TRAINED = (
    "a copy of a model labelkeep attached (copy.deepcopy) is "
    "being trained: labelkeep's loss stays on the model it attached, so this training gets "
    "none. Train that model object itself, or attach the copy: "
    "labelkeep_plugins.attach(copy, reference)"
)


INERT_HOOK_EVENT = "labelkeep.inert_hook"


class _CopiedInert:
    """A deep copy is an :class:`InertHook`; a pickle is ``sys.audit(INERT_HOOK_EVENT,
    *hook_args)``, which returns None (a hook that changes nothing) and needs only Python."""

    def __deepcopy__(self, memo: dict[int, Any]) -> InertHook:
        return InertHook()

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial, (sys.audit, INERT_HOOK_EVENT))


class ForwardHook(_CopiedInert):
    """Calls the handle's forward callback; copies and pickles of it are inert hooks."""

    def __init__(self, callback: Callable[..., None]) -> None:
        self._callback = callback

    def __call__(self, *args: Any) -> None:
        self._callback(*args)


class InertHook(_CopiedInert):
    """What a copied student carries in place of labelkeep's hook: adds nothing, tells once."""

    told: ClassVar[bool] = False  # one line per process, whichever copy trains first

    def __call__(self, *args: Any) -> None:
        if InertHook.told or not torch.is_grad_enabled():
            return
        output = _first_tensor_with_grad(args[-1] if args else None)
        if output is not None:
            output.register_hook(_tell_copy_trained)


def _tell_copy_trained(grad: torch.Tensor) -> None:
    if not InertHook.told:
        InertHook.told = True
        logger.warning(COPY_TRAINED)


def _first_tensor_with_grad(output: Any) -> torch.Tensor | None:
    """The forward's output tensor (or the first in a tuple or mapping) that needs a gradient."""
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    values = output.values() if isinstance(output, Mapping) else output
    if isinstance(values, Sequence) or isinstance(output, Mapping):
        for value in values:
            if isinstance(value, torch.Tensor) and value.requires_grad:
                return value
    return None
