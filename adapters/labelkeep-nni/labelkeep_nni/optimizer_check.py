"""Warn about NNI's AGP/Linear inner-pruner optimizer defect (integration notes §1.8).

An evaluator records its optimizer's parameters by *name*, matching them by
``id()`` against the model it is first initialised on. ``AGPPruner`` and
``LinearPruner`` (and ``from_compressor``) initialise it only after unwrapping
the inner pruner, which re-creates the pruned layers' parameters: the user's
traced optimizer still holds the old objects, so those layers are silently left
out of every optimizer NNI re-creates, and are never trained.

The check has two halves so that a user who deliberately trains only some
layers is not warned: at ``Compressor.__init__`` (before NNI initialises the
evaluator) it records whether the user's optimizer holds parameters that are no
longer in the model (the defect's signature); after ``bind_model`` it names the
model parameters the re-created optimizers miss.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

WRAPPER = "_nni_wrapper."


def user_optimizers(evaluator: Any) -> list[Any]:
    """The optimizers the user gave an evaluator that is not initialised yet."""
    found: list[Any] = []
    many = getattr(evaluator, "_tmp_optimizers", None)  # TorchEvaluator
    if isinstance(many, list | tuple):
        found.extend(many)
    found.append(getattr(evaluator, "_tmp_optimizer", None))  # DeepspeedTorchEvaluator
    trainer = getattr(evaluator, "traced_trainer", None)  # TransformersEvaluator
    found.append(getattr(trainer, "optimizer", None))
    return [opt for opt in found if hasattr(opt, "param_groups")]


def bound_optimizers(evaluator: Any) -> list[Any] | None:
    """The optimizers an evaluator re-created in ``bind_model`` (None: not visible yet)."""
    many = getattr(evaluator, "_optimizers", None)
    if isinstance(many, list | tuple):
        return [opt for opt in many if hasattr(opt, "param_groups")]
    trainer = getattr(evaluator, "trainer", None)
    for optimizer in (getattr(evaluator, "optimizer", None), getattr(trainer, "optimizer", None)):
        if hasattr(optimizer, "param_groups"):
            return [optimizer]
    return None


def _parameter_ids(optimizers: Iterable[Any]) -> set[int]:
    return {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}


def original_name(name: str) -> str:
    return name.replace(WRAPPER, "")


class OptimizerCheck:
    """Remembers evaluators that met the defect's signature; names what they miss at bind."""

    def __init__(self) -> None:
        self._stale: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def before_init(self, compressor_name: str, model: nn.Module, evaluator: Any) -> None:
        """At ``Compressor.__init__`` entry: does the user's optimizer hold dropped parameters?"""
        if evaluator is None or getattr(evaluator, "_initialization_complete", True):
            return
        in_model = {id(p) for p in model.parameters()}
        optimizers = user_optimizers(evaluator)
        if any(pid not in in_model for pid in _parameter_ids(optimizers)):
            self._stale[evaluator] = compressor_name

    def after_bind(
        self, evaluator: Any, model: nn.Module, reference: nn.Module | None
    ) -> tuple[str, list[str]] | None:
        """(compressor name, missing parameter names) when the defect hit this evaluator."""
        compressor_name = self._stale.get(evaluator)
        optimizers = bound_optimizers(evaluator)
        if compressor_name is None or optimizers is None:
            return None
        known = None if reference is None else {n for n, _ in reference.named_parameters()}
        missing = list(_missing(model, _parameter_ids(optimizers), known))
        return (compressor_name, missing) if missing else None


def _missing(model: nn.Module, in_optimizer: set[int], known: set[str] | None) -> Iterator[str]:
    """Trainable model parameters (by their original names) that no optimizer holds."""
    for name, parameter in model.named_parameters():
        plain = original_name(name)
        if not parameter.requires_grad or id(parameter) in in_optimizer:
            continue
        if known is None or plain in known:  # skip NNI's own additions (scores, scales)
            yield plain


def message(compressor_name: str, evaluator: Any, missing: list[str]) -> str:
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (
        f"{compressor_name}: {shown} are missing from the optimizer that "
        f"{type(evaluator).__name__} re-created, so NNI's training will not update them "
        f"(NNI defect: the evaluator was first initialised after the inner pruner was "
        f"unwrapped, which re-creates those parameters). Fix: give the evaluator to the "
        f"first compressor built on the model, e.g. "
        f"{compressor_name}(TaylorPruner(model, config_list, evaluator, training_steps), ...) "
        f"or L1NormPruner(model, config_list, evaluator)"
    )
