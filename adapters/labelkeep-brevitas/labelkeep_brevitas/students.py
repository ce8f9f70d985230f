"""What the adapter does to references and students beyond the host's ``reference_for``/``attach``.

* A reference that contains Brevitas quant layers (a hand-built ``brevitas.nn``
  model, or a model partly quantized before it reached ``layerwise_quantize``)
  gets every quantizer disabled for good, so it computes the float function of
  its weights.
* The injector's forward hook on a student is wrapped so that a deep copy (or a
  pickle) of the student carries an inert hook instead of the injector itself:
  ``copy.deepcopy(model)`` is how users keep a best checkpoint and how
  ``gpxq_mode(inplace=False)`` works, and a bound-method hook cannot be copied.
* A one-shot check at the first training forward warns when quantized layers
  were left frozen (Brevitas' learned round leaves ``requires_grad=False``).
* Hand-built ``brevitas.nn`` models (no float model exists) are found at their
  first training forward by :class:`HandBuiltWatcher`.
"""

from __future__ import annotations

import functools
import sys
import warnings
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

from labelkeep_plugins.zero_code.adapter_api import LabelkeepWarning, PatchSet

_float_references: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def quant_layer_type() -> type:
    """Brevitas' base of every quant layer (QuantConv2d, QuantLinear, QuantIdentity...)."""
    from brevitas.nn.mixin.base import QuantLayerMixin

    return QuantLayerMixin


def has_quant_layers(model: nn.Module) -> bool:
    layer_type = quant_layer_type()
    return any(isinstance(module, layer_type) for module in model.modules())


def disable_quantization(reference: nn.Module) -> bool:
    """Turn every quantizer of ``reference`` off, permanently; report whether there were any.

    The manager is entered and never exited on purpose: the reference is ours and
    must stay the float counterpart. Disabling changes flags on the quant
    proxies, not the state dict, so the checksum taken at the snapshot still holds.
    """
    if reference in _float_references or not has_quant_layers(reference):
        return False
    from brevitas.graph.calibrate import quantization_status_manager

    manager = quantization_status_manager(
        reference,
        disable_act_quant=True,
        disable_weight_quant=True,
        disable_bias_quant=True,
        is_training=False,
    )
    manager.__enter__()
    reference.eval()
    reference.requires_grad_(False)
    _float_references.add(reference)
    return True


def warn_if_frozen_once(model: nn.Module) -> RemovableHandle:
    """At ``model``'s first training forward, warn if quantized weights cannot train.

    The hook is a plain closure over a weak reference, so copies of ``model``
    share it harmlessly (it ignores every module but ``model``).
    """
    target = weakref.ref(model)
    layer_type = quant_layer_type()

    def check(module: nn.Module, args: Any) -> None:
        if module is not target() or not (module.training and torch.is_grad_enabled()):
            return
        removable.remove()
        frozen = [
            name
            for name, layer in module.named_modules()
            if isinstance(layer, layer_type) and _weight_frozen(layer)
        ]
        if frozen and any(p.requires_grad for p in module.parameters()):
            warnings.warn(
                f"labelkeep (brevitas): quantized layers {', '.join(frozen[:5])}"
                f"{' ...' if len(frozen) > 5 else ''} have requires_grad=False, so this training "
                "(and labelkeep's loss) cannot change their weights. Brevitas' learned round "
                "leaves block parameters frozen; call model.requires_grad_(True) before QAT if "
                "that is not what you want",
                LabelkeepWarning,
                stacklevel=2,
            )

    removable = model.register_forward_pre_hook(check)
    return removable


def _weight_frozen(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return isinstance(weight, nn.Parameter) and not weight.requires_grad


_CALL_IMPL = nn.Module._call_impl.__code__


class HandBuiltWatcher:
    """Finds hand-built ``brevitas.nn`` models at their first training forward.

    Every quant layer constructed while the adapter is active is *pending* until a
    model containing it is attached. While any layer is pending, a global forward
    pre-hook looks at the first training forward (grad enabled, training mode) of
    each module: the outermost module that contains pending layers is claimed
    (given a quant-disabled copy of itself as reference, and attached) before its
    forward runs. Once nothing is pending the global hook is removed, so training
    pays nothing in the steady state (a global hook pushes every module call in
    the process onto torch's slow path, about +3 us a call).

    Trade-off: a hand-built model's reference is its own weights without
    quantization (its float counterpart) as they are at its first training
    forward, not an earlier float model the user may have copied them from.
    """

    def __init__(
        self,
        claim: Callable[[nn.Module], None],
        ready: Callable[[], bool],
        train_mode_only: Callable[[], bool],
        guard: Callable[[], Any],
    ) -> None:
        self._claim = claim
        self._ready = ready
        self._train_mode_only = train_mode_only
        self._guard = guard
        self._pending: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._examined: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self._generation = 0
        self._hook: RemovableHandle | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def hooked(self) -> bool:
        return self._hook is not None

    def install(self, patches: PatchSet, base: ModuleType) -> None:
        """Patch ``QuantLayerMixin.__init__`` (every quant layer's init runs through it)."""
        mixin = base.QuantLayerMixin
        original = mixin.__init__
        watcher = self

        @functools.wraps(original)
        def __init__(layer: nn.Module, *args: Any, **kwargs: Any) -> None:
            original(layer, *args, **kwargs)
            watcher.constructed(layer)

        patches.patch(mixin, "__init__", __init__)

    def uninstall(self) -> None:
        self._remove_hook()
        self._pending = weakref.WeakSet()
        self._examined = weakref.WeakKeyDictionary()

    def constructed(self, layer: nn.Module) -> None:
        """A quant layer was built: it is pending, and every module is worth one more look."""
        with self._guard():
            self._pending.add(layer)
            self._generation += 1
            if self._hook is None:
                self._hook = register_module_forward_pre_hook(self._on_forward)

    def release(self, model: nn.Module) -> None:
        """``model`` is attached (or claimed): its quant layers are no longer pending."""
        for module in model.modules():
            self._pending.discard(module)
        if not self._pending:
            self._remove_hook()

    @torch.compiler.disable
    def _on_forward(self, module: nn.Module, args: Any) -> None:
        if not self._pending:
            self._remove_hook()
            return
        if not torch.is_grad_enabled() or (self._train_mode_only() and not module.training):
            return
        if self._examined.get(module) == self._generation:
            return
        self._examined[module] = self._generation
        with self._guard():
            self._examine(module)

    def _examine(self, module: nn.Module) -> None:
        if not self._ready():
            return
        if not any(layer in self._pending for layer in module.modules()):
            return
        if enclosing_module(module) is not None:
            return  # a block called by its model's forward: the model itself is claimed
        self._claim(module)
        self.release(module)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def enclosing_module(module: nn.Module) -> nn.Module | None:
    """The module whose forward is calling ``module`` now (None for an outermost call)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _CALL_IMPL:
            caller = frame.f_locals.get("self")
            if isinstance(caller, nn.Module) and caller is not module:
                return caller
        frame = frame.f_back
    return None
