"""Warn when pruned weights are trained back after ``unwrap_model()`` (integration notes §1.5).

NNI applies a pruner's masks in its module wrappers' forward. ``unwrap_model()``
puts plain parameters back, cloned from the wrappers' *unmasked* weights, so a
user who fine-tunes after unwrapping without ``ModelSpeedup`` trains a model
whose pruned weights are non-zero (or, after ``weight.mul_(mask)``, grow back
at the first optimizer step).

Cheap detection: the masks are remembered when ``compress()`` returns; after
``unwrap_model()`` a forward pre-hook on the model root looks at the masked
positions on the first few training forwards only, then removes itself. A
structural change (``ModelSpeedup``), a new compressor on the model or a
re-applied mask (``torch.nn.utils.prune``) ends the watch without a warning.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Masks = dict[tuple[str, str], torch.Tensor]  # (module name, parameter name) -> pruned positions
CHECKED_FORWARDS = 3


@dataclass
class _Watch:
    pruned: Masks
    handle: RemovableHandle | None = None
    forwards: int = 0


def pruned_positions(masks: Mapping[str, Mapping[str, Any]]) -> Masks:
    """NNI's ``{module: {target: mask}}`` reduced to the parameters that have pruned positions."""
    pruned: Masks = {}
    for module_name, targets in masks.items():
        for target, mask in targets.items():
            if (
                isinstance(mask, torch.Tensor)
                and not target.startswith("_")
                and bool((mask == 0).any())
            ):
                pruned[(module_name, target)] = (mask == 0).detach().cpu()
    return pruned


class MaskWatch:
    """Per model: the pruned positions, and the pre-hook that checks them after unwrap."""

    def __init__(self, warn: Callable[[str, str], Any]) -> None:
        self._warn = warn
        self._watches: weakref.WeakKeyDictionary[nn.Module, _Watch] = weakref.WeakKeyDictionary()

    def remember(self, model: nn.Module, masks: Mapping[str, Mapping[str, Any]]) -> None:
        """At the end of a pruner's ``compress()``: keep its masks for a later unwrap."""
        self.forget(model)
        pruned = pruned_positions(masks)
        if pruned:
            self._watches[model] = _Watch(pruned)

    def arm(self, model: nn.Module) -> None:
        """After ``unwrap_model()``: check the pruned positions on the next training forwards."""
        watch = self._watches.get(model)
        if watch is not None and watch.handle is None:
            watch.handle = model.register_forward_pre_hook(self._on_forward)

    def forget(self, model: nn.Module) -> None:
        watch = self._watches.pop(model, None)
        if watch is not None and watch.handle is not None:
            watch.handle.remove()

    def forget_all(self) -> None:
        for model in list(self._watches):
            self.forget(model)

    def _on_forward(self, model: nn.Module, _args: Any) -> None:
        if not (torch.is_grad_enabled() and model.training):
            return
        watch = self._watches.get(model)
        if watch is None:
            return
        watch.forwards += 1
        regrown = _regrown(model, watch.pruned)
        if regrown is None or regrown or watch.forwards >= CHECKED_FORWARDS:
            self.forget(model)
        if regrown:
            self._warn(f"regrow:{id(model)}", _message(type(model).__name__, regrown))


def _regrown(model: nn.Module, pruned: Masks) -> list[str] | None:
    """Parameters whose pruned positions hold non-zero values; None if the structure changed."""
    found: list[str] = []
    for (module_name, target), positions in sorted(pruned.items()):  # one order every run
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return None
        value = getattr(module, target, None)
        if not isinstance(value, torch.Tensor) or value.shape != positions.shape:
            return None  # replaced by ModelSpeedup, or no longer a plain tensor
        count = int((value.detach()[positions.to(value.device)] != 0).sum())
        if count:
            found.append(f"{module_name}.{target} ({count}/{int(positions.sum())})")
    return found


def _message(model_name: str, regrown: list[str]) -> str:
    shown = ", ".join(regrown[:6]) + (f" and {len(regrown) - 6} more" if len(regrown) > 6 else "")
    return (
        f"{model_name} is being trained after unwrap_model() with non-zero values at pruned "
        f"positions: {shown} (non-zero/pruned). NNI's masks are no longer applied, so "
        f"fine-tuning trains the pruned weights back. Fix: run ModelSpeedup(model, "
        f"dummy_input, masks).speedup_model() before fine-tuning, or re-apply each mask with "
        f"torch.nn.utils.prune.custom_from_mask(module, name, mask) (and prune.remove after "
        f"fine-tuning)"
    )
