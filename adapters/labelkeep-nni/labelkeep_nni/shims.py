"""Shims for NNI 3.0's Lightning and Transformers evaluators (integration notes §1.7).

Each shim is applied only when its library is installed (NNI imports it with
``nni.compression``) and only for the versions that need it; each is an
attribute patch, so ``uninstrument()`` takes it back out.

* pytorch-lightning >= 2.0: ``LightningEvaluator.train`` sets
  ``trainer.fit_loop.max_steps``, a read-only property in PL 2.x, so every
  compressor that passes ``max_steps`` fails. The shim gives the property a setter
  that writes ``fit_loop.epoch_loop.max_steps`` (where the getter reads it).
* transformers: ``TransformersEvaluator.patch_optimizer_step`` asserts because
  ``Trainer.deepspeed`` exists and is None without DeepSpeed (4.26 to 5.24 at least); the
  shim patches ``trainer.optimizer.step`` directly, as ``TorchEvaluator`` does
  (NNI's ``revert_optimizer_step`` already restores exactly that attribute).
  From 4.46 ``compute_loss`` takes ``num_items_in_batch``, which NNI's
  ``patch_loss`` wrapper rejects; the shim passes extra keywords through.
  From 4.45 ``get_optimizer_cls_and_kwargs(args, model)`` breaks NNI's patched
  one-argument copy when the optimizer is not ``nni.trace``d; the shim builds
  the default optimizer through a traced class so NNI takes its traced path.

tests/adapters/test_nni_evaluators.py compresses a LightningModule and a BERT classifier
through these evaluators, with and without labelkeep. Checked with torch 2.13, NNI 3.0,
pytorch-lightning 2.0.9 and 2.6.6, transformers 4.57.6 and 5.24.0 (accelerate 1.15); the
root pyproject's ``test`` extra pins that range.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any

from packaging.version import Version

from labelkeep_plugins.zero_code.adapter_api import PatchSet


def install_shims(patches: PatchSet, evaluator_module: Any) -> list[str]:
    """Apply the shims the installed libraries need; return what was applied."""
    applied: list[str] = []
    if getattr(evaluator_module, "LIGHTNING_INSTALLED", False):
        applied += lightning_shims(patches)
    if getattr(evaluator_module, "TRANSFORMERS_INSTALLED", False):
        applied += transformers_shims(patches, evaluator_module.TransformersEvaluator)
    return applied


def lightning_shims(patches: PatchSet) -> list[str]:
    pl = sys.modules.get("pytorch_lightning")
    if pl is None or Version(pl.__version__) < Version("2.0"):
        return []
    from pytorch_lightning.loops.fit_loop import _FitLoop

    current = _FitLoop.__dict__.get("max_steps")
    if not isinstance(current, property) or current.fset is not None:
        return []

    def set_max_steps(loop: Any, value: int) -> None:
        loop.epoch_loop.max_steps = value

    patches.patch(
        _FitLoop, "max_steps", property(current.fget, set_max_steps, None, current.__doc__)
    )
    return [f"pytorch-lightning {pl.__version__}: fit_loop.max_steps settable"]


def transformers_shims(patches: PatchSet, evaluator_class: type) -> list[str]:
    transformers = sys.modules.get("transformers")
    from transformers.trainer import Trainer

    version = getattr(transformers, "__version__", "0")
    applied = []
    step = _patch_optimizer_step(evaluator_class.patch_optimizer_step)
    patches.patch(evaluator_class, "patch_optimizer_step", step)
    applied.append(f"transformers {version}: optimizer step patched without Trainer.deepspeed")
    if "num_items_in_batch" in inspect.signature(Trainer.compute_loss).parameters:
        patches.patch(evaluator_class, "patch_loss", _patch_loss)
        applied.append(f"transformers {version}: compute_loss keywords passed through")
    if len(inspect.signature(Trainer.get_optimizer_cls_and_kwargs).parameters) > 1:
        original = evaluator_class._init_optimizer_helpers
        patches.patch(
            evaluator_class, "_init_optimizer_helpers", _init_optimizer_helpers(original, Trainer)
        )
        applied.append(f"transformers {version}: default optimizer traced for NNI")
    return applied


def _patch_optimizer_step(original: Callable[..., None]) -> Callable[..., None]:
    def patch_optimizer_step(
        evaluator: Any,
        before_step_tasks: list[Callable[[], Any]],
        after_step_tasks: list[Callable[[], Any]],
    ) -> None:
        trainer = evaluator.trainer
        if getattr(trainer, "deepspeed", None) is not None or trainer.optimizer is None:
            original(evaluator, before_step_tasks, after_step_tasks)
            return
        optimizer = trainer.optimizer
        old_step = optimizer.step

        def patched_step(_optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            for task in before_step_tasks:
                task()
            output = old_step(*args, **kwargs)
            for task in after_step_tasks:
                task()
            return output

        optimizer.step = types.MethodType(patched_step, optimizer)

    return patch_optimizer_step


def _patch_loss(evaluator: Any, patch: Callable[[Any, Any], Any]) -> None:
    """NNI's ``patch_loss`` with the trainer's extra ``compute_loss`` keywords passed through."""
    old_compute_loss = evaluator.trainer.compute_loss

    def patched_compute_loss(
        _trainer: Any, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        result = old_compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if return_outputs:
            return patch(result[0], inputs), result[1]
        return patch(result, inputs)

    evaluator.trainer.compute_loss = types.MethodType(patched_compute_loss, evaluator.trainer)


def _init_optimizer_helpers(
    original: Callable[..., None], trainer_class: type
) -> Callable[..., None]:
    def _init_optimizer_helpers(evaluator: Any, pure_model: Any) -> None:
        import nni
        from nni.common import is_traceable

        trainer = evaluator.traced_trainer
        if trainer.optimizer is not None and is_traceable(trainer.optimizer):
            original(evaluator, pure_model)
            return
        static = trainer_class.__dict__["get_optimizer_cls_and_kwargs"]

        def traced_cls_and_kwargs(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
            optimizer_cls, optimizer_kwargs = static.__func__(*args, **kwargs)
            return nni.trace(optimizer_cls), optimizer_kwargs

        trainer_class.get_optimizer_cls_and_kwargs = staticmethod(traced_cls_and_kwargs)
        try:
            trainer.optimizer = None
            trainer.create_optimizer()
        finally:
            trainer_class.get_optimizer_cls_and_kwargs = static
        original(evaluator, pure_model)
        trainer.optimizer = None  # as NNI's own untraced path leaves it

    return _init_optimizer_helpers
