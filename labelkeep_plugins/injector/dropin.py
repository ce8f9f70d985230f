"""The drop-in loss: replaces ``nn.CrossEntropyLoss()`` in an existing script."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from labelkeep_plugins.config import FocalConfig, LogitsSelector
from labelkeep_plugins.errors import MissingReferenceError, ShapeMismatchError
from labelkeep_plugins.injector.attach import loss_config
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.loss.logits import as_logits
from labelkeep_plugins.reference.snapshot import as_reference, move_to


class LabelPreservingLoss(nn.Module):
    """Cross-entropy plus terms that keep the student's labels the same as the reference's.

    ``criterion = LabelPreservingLoss(reference, student=model)`` then
    ``loss = criterion(model(x), y)``: the reference runs on the inputs of the
    student's forward that produced those outputs (captured by a forward hook),
    or on nothing at all if ``reference_logits=`` is given. The reference is
    copied and frozen unless it came from :func:`snapshot_reference`, so the
    object passed in is never modified.
    """

    reference: nn.Module  # set with object.__setattr__, outside the module tree

    def __init__(
        self,
        reference: nn.Module,
        *,
        student: nn.Module | None = None,
        weights: Mapping[str, float] | None = None,
        temperature: float | None = None,
        focal: Mapping[str, float] | FocalConfig | bool | None = None,
        logits: LogitsSelector = None,
    ) -> None:
        super().__init__()
        # Kept out of the module tree: .train() must not flip it, nor .parameters() list it.
        object.__setattr__(self, "reference", as_reference(reference))
        self.composer = LossComposer(loss_config(weights, temperature, focal))
        self.logits_selector = logits
        self.last_terms: dict[str, torch.Tensor] = {}
        self._last_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._cached: torch.Tensor | None = None
        self._hook = None
        if student is not None:
            self._hook = student.register_forward_hook(self._capture, with_kwargs=True)

    def forward(
        self, outputs: Any, targets: torch.Tensor, reference_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        student = as_logits(outputs, self.logits_selector)
        _check_targets(targets, student, self.composer.ground_truth_weight)
        if reference_logits is None:
            reference_logits = self._reference_logits(student)
        loss, self.last_terms = self.composer.total(student, reference_logits, targets)
        return loss

    def release(self) -> None:
        """Remove the forward hook from the student (the loss then needs ``reference_logits``)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._last_inputs = self._cached = None

    def _capture(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self._last_inputs = (args, kwargs)
        self._cached = None

    def _reference_logits(self, student: torch.Tensor) -> torch.Tensor:
        if self._last_inputs is None:
            raise MissingReferenceError(
                "LabelPreservingLoss has no reference logits: pass student=model when creating "
                "it (so it sees the inputs of each forward), or call it with reference_logits="
            )
        if self._cached is None:
            args, kwargs = self._last_inputs
            move_to(self.reference, student.device)
            with torch.no_grad():
                self._cached = as_logits(
                    self.reference(*args, **kwargs), self.logits_selector
                ).detach()
        return self._cached


def _check_targets(targets: Any, student: torch.Tensor, ce_weight: float) -> None:
    """Targets must be given (unless ``ce`` is 0) and have one entry per sample."""
    if targets is None:
        if ce_weight > 0:
            raise ShapeMismatchError(
                "LabelPreservingLoss got targets=None, but its 'ce' term needs the labels; "
                "pass the batch's labels, or set weights={'ce': 0.0, ...} to train on the "
                "teacher terms alone"
            )
        return
    if (
        isinstance(targets, torch.Tensor)
        and targets.dim() > 0
        and (targets.shape[0] != student.shape[0])
    ):
        raise ShapeMismatchError(
            f"LabelPreservingLoss got {targets.shape[0]} targets for {student.shape[0]} "
            f"student outputs; pass the labels of the same batch"
        )
