"""The function-matching term ``fm``: KD on a perturbed copy of each training batch.

Beyer et al. ("Knowledge distillation: a good teacher is patient and consistent", CVPR
2022) match the student to the teacher away from the training points too: the student and
the teacher both see a mixup of the batch, and the KD term is taken there. Here that copy
rides along the user's own training step:

* the copy is made of the forward's **first positional tensor argument** (the other
  arguments pass through unchanged), detached: ``lam * x + (1 - lam) * x[perm]`` with one
  ``lam ~ Beta(alpha, alpha)`` **per batch** (as big_vision's mixup, which the paper used)
  and a random permutation of the batch, plus Gaussian noise of ``noise * std(x)`` when
  ``function_matching.noise`` > 0. The draws use torch's global RNG (``torch.manual_seed``
  reproduces them); :attr:`FunctionMatching.perturb` can be replaced;
* the two forwards on the copy run when the loss-value path first sees that forward's loss,
  under the autocast state the user's forward ran in: the student's with labelkeep's hook
  muted (not captured, not counted) and its norm layers' running statistics held, the
  reference's under no_grad;
* the value is :func:`~labelkeep_plugins.loss.builtin_terms.hinton_kd` (temperature T, times
  T^2) per sample, without focal weights (the copy has no labels), added to the user's loss
  value like the other terms. A loss that never reaches ``cross_entropy``/``nll_loss`` (the
  gradient path) has no value to add it to: ``fm`` is skipped there, with one warning.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from labelkeep_plugins.config import FunctionMatchingConfig, LossConfig
from labelkeep_plugins.errors import LabelkeepError, LabelkeepWarning, ShapeMismatchError
from labelkeep_plugins.injector.capture import CapturedForward
from labelkeep_plugins.loss.builtin_terms import function_matching_kd
from labelkeep_plugins.loss.composer import internal_computation
from labelkeep_plugins.loss.terms import FUNCTION_MATCHING_TERM, TermInputs

Perturb = Callable[[torch.Tensor, FunctionMatchingConfig], torch.Tensor]
"""``perturb(x, config)``: the copy of the batch ``x`` that both models see."""
CopyForward = Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor]
"""Runs one model on (args, kwargs) and returns its logits."""

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")

GRADIENT_PATH_WARNING = (
    "labelkeep: the fm (function matching) term is skipped: the student's logits do not reach "
    "cross_entropy/nll_loss, so there is no loss value to add it to (the other terms still "
    "apply, through the gradient). Compute the loss with F.cross_entropy / nn.CrossEntropyLoss "
    "on the logits, or set weights.fm: 0"
)


def fm_weight(loss: LossConfig) -> float:
    return loss.weights.get(FUNCTION_MATCHING_TERM, 0.0)


def mixed_copy(x: torch.Tensor, config: FunctionMatchingConfig) -> torch.Tensor:
    """Mixup within the batch (one Beta(alpha, alpha) coefficient) plus relative noise.

    ``x`` is detached first: the copy is a synthetic input, not a path for gradients.
    """
    x = x.detach()
    alpha = config.mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    mixed = lam * x + (1.0 - lam) * x[perm]
    if config.noise > 0:
        mixed = mixed + torch.randn_like(mixed) * (config.noise * x.std(correction=0))
    return mixed


@contextlib.contextmanager
def held_running_stats(model: nn.Module) -> Iterator[None]:
    """Leave every norm layer's running statistics as they were before the block.

    A training-mode forward on the copy normalises with its batch statistics (as it
    should) but would also move ``running_mean``/``running_var``/``num_batches_tracked``
    a second time per step. The values are written back through ``.data``: the user's
    graph saved these buffers, and a version bump would make its backward fail.
    """
    saved = [
        (module, name, buffer.detach().clone())
        for module in model.modules()
        if isinstance(module, _NormBase)
        for name in _RUNNING_STATS
        if isinstance(buffer := getattr(module, name, None), torch.Tensor)
    ]
    try:
        yield
    finally:
        for module, name, value in saved:
            getattr(module, name).data.copy_(value)


@dataclass(frozen=True)
class AutocastState:
    """Whether (and in which dtype) autocast was on for a device type at forward time."""

    device_type: str
    enabled: bool
    dtype: torch.dtype | None

    @classmethod
    def now(cls, device_type: str) -> AutocastState:
        if not torch.amp.is_autocast_available(device_type):
            return cls(device_type, False, None)
        enabled = torch.is_autocast_enabled(device_type)
        return cls(device_type, enabled, torch.get_autocast_dtype(device_type))

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """Re-enter that state (also switching autocast off if it was off then)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


@dataclass(eq=False)
class PendingCopy:
    """A training forward's inputs, kept until its loss is seen; then its fm value."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    autocast: AutocastState
    value: torch.Tensor | None = None


class FunctionMatching:
    """The ``fm`` term of one injector: inputs captured at forward time, value at the loss."""

    def __init__(
        self, student: CopyForward, reference: CopyForward, perturb: Perturb = mixed_copy
    ) -> None:
        self.perturb = perturb
        self._student = student
        self._reference = reference
        self._pending: weakref.WeakKeyDictionary[CapturedForward, PendingCopy] = (
            weakref.WeakKeyDictionary()
        )
        self._warned = False

    def capture(
        self,
        entry: CapturedForward,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loss: LossConfig,
        device_type: str,
    ) -> None:
        """Remember a training forward's inputs and autocast state while ``fm`` is on."""
        if fm_weight(loss) > 0:
            self._pending[entry] = PendingCopy(args, dict(kwargs), AutocastState.now(device_type))

    @torch.compiler.disable
    def per_sample(self, entry: CapturedForward, loss: LossConfig) -> torch.Tensor | None:
        """The unweighted fm value of this forward's copy, (batch,) fp32; None while off.

        Computed once per forward: a second loss call on it (mixup) reuses the value.
        """
        pending = self._pending.get(entry)
        if pending is None or not fm_weight(loss) > 0:
            return None
        if pending.value is None:
            try:
                pending.value = self._compute(pending, loss)
            except Exception:
                del self._pending[entry]  # a failed forward is not the gradient path's to warn
                raise
        return pending.value

    def skip(self, entry: CapturedForward) -> None:
        """The gradient path: no loss value to add fm to; say so once and drop the copy."""
        if self._pending.pop(entry, None) is None or self._warned:
            return
        self._warned = True
        warnings.warn(GRADIENT_PATH_WARNING, LabelkeepWarning, stacklevel=2)

    def clear(self) -> None:
        self._pending.clear()

    def _compute(self, pending: PendingCopy, loss: LossConfig) -> torch.Tensor:
        position, x = _mixable_input(pending.args)
        copy = self.perturb(x, loss.function_matching)
        args = (*pending.args[:position], copy, *pending.args[position + 1 :])
        with pending.autocast.context():
            student = self._student(args, pending.kwargs)
            reference = self._reference(args, pending.kwargs)
        if student.shape != reference.shape:
            raise ShapeMismatchError(
                f"fm: on the mixed copy the student's logits have shape {tuple(student.shape)} "
                f"but the reference's {tuple(reference.shape)}"
            )
        inputs = TermInputs(student.float(), reference.detach().float(), None, loss.temperature)
        with internal_computation():
            return function_matching_kd(inputs)


def _mixable_input(args: tuple[Any, ...]) -> tuple[int, torch.Tensor]:
    """The position and value of the first positional tensor argument, if it can be mixed."""
    for position, value in enumerate(args):
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise LabelkeepError(
                    f"the fm (function matching) term mixes the model's input, but the first "
                    f"tensor argument of the forward is {value.dtype} (token ids?), which "
                    f"cannot be mixed: fm needs continuous inputs. Set weights.fm: 0 (or drop "
                    f"fm from weights) for this model"
                )
            return position, value
    raise LabelkeepError(
        "the fm (function matching) term mixes the forward's first positional tensor "
        "argument, but this forward got none (inputs passed by keyword?). Call the model "
        "as model(x, ...), or set weights.fm: 0 (or drop fm from weights)"
    )
