"""The label-preserving loss itself: registered terms, their weights and the focal weights.

One :class:`LossComposer` serves the drop-in loss and the injector, so the two
can never disagree about a formula.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.errors import NonFiniteError, ShapeMismatchError
from labelkeep_plugins.loss.labels import class_labels
from labelkeep_plugins.loss.terms import (
    GROUND_TRUTH_TERM,
    LossTerm,
    TermInputs,
    check_term_names,
)

_internal = threading.local()


@contextmanager
def internal_computation() -> Iterator[None]:
    """Mark labelkeep's own loss computations so the criterion patch leaves them alone."""
    previous = getattr(_internal, "active", False)
    _internal.active = True
    try:
        yield
    finally:
        _internal.active = previous


def in_internal_computation() -> bool:
    return getattr(_internal, "active", False)


class LossComposer:
    """Weights, temperature and focal weights applied to the registered terms."""

    def __init__(self, loss: LossConfig, terms: Mapping[str, LossTerm] | None = None) -> None:
        if terms is None:
            from labelkeep_plugins.plugins import loss_terms

            terms = loss_terms()
        self._terms = dict(terms)
        self._pending: LossConfig | None = None
        self.configure(loss)

    def configure(self, loss: LossConfig) -> None:
        """Switch to new weights (tuners call this between steps)."""
        if loss.weights.keys() - self._terms.keys():  # a set difference: cheap on the hot path
            check_term_names(loss.weights, self._terms)
        self.loss = loss
        active = [(self._terms[name], w) for name, w in loss.weights.items() if w > 0]
        self._ground_truth = [(t, w) for t, w in active if t.name == GROUND_TRUTH_TERM]
        self._extra = [
            (t, w) for t, w in active if t.name != GROUND_TRUTH_TERM and not t.on_perturbed_copy
        ]

    def defer(self, loss: LossConfig) -> None:
        """Switch to ``loss`` at the next student forward (:meth:`apply_pending`).

        A tuner learns inside a step's loss call; a second loss call on the same forward
        (mixup) must still see the weights the first one had.
        """
        self._pending = loss

    def apply_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.configure(pending)

    @property
    def ground_truth_weight(self) -> float:
        """The weight the user's own loss keeps when labelkeep adds to it."""
        return self.loss.weights.get(GROUND_TRUTH_TERM, 0.0)

    def extra_per_sample(
        self,
        student: torch.Tensor,
        reference: torch.Tensor,
        targets: torch.Tensor | None,
        *,
        checked: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of every term but ``ce``, per sample (fp32), and each term's mean.

        ``checked``: the caller already ran :func:`check_pair` on this pair (the injector
        does once per forward), so its device sync is not paid a second time.
        """
        if not checked:
            check_pair(student, reference)
        return self._weighted(self._extra, student, reference, targets)

    def total(
        self, student: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole loss, ground truth included, as a batch mean (the drop-in loss)."""
        check_pair(student, reference)
        per_sample, values = self._weighted(
            [*self._ground_truth, *self._extra], student, reference, targets
        )
        return per_sample.mean(), values

    def _weighted(
        self,
        terms: list[tuple[LossTerm, float]],
        student: torch.Tensor,
        reference: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = TermInputs(
            student.float(), reference.detach().float(), targets, self.loss.temperature
        )
        focal = focal_weights(self.loss.focal, inputs.reference, targets)
        total = torch.zeros(student.shape[0], device=student.device, dtype=torch.float32)
        values: dict[str, torch.Tensor] = {}
        with internal_computation():
            for term, weight in terms:
                if term.needs_targets and targets is None:
                    continue
                value = term.per_sample(inputs)
                values[term.name] = value.detach().mean()
                if term.teacher and focal is not None:
                    value = value * focal
                total = total + weight * value
        return total, values


def focal_weights(
    focal: FocalConfig | None, reference: torch.Tensor, targets: torch.Tensor | None
) -> torch.Tensor | None:
    """``base + scale * 1[reference correct]`` per sample; ``base`` where labels are unknown."""
    if focal is None:
        return None
    labels = class_labels(targets)
    if labels is None:
        return torch.full((reference.shape[0],), focal.base, device=reference.device)
    correct = (reference.argmax(dim=1) == labels).float()
    return focal.base + focal.scale * correct


def check_pair(student: torch.Tensor, reference: torch.Tensor) -> None:
    """Raise a clear error unless the two logits match in shape and the reference is finite."""
    if student.shape != reference.shape:
        raise ShapeMismatchError(
            f"student logits have shape {tuple(student.shape)} but reference logits have shape "
            f"{tuple(reference.shape)}; both must be (batch, classes) for the same inputs. Check "
            f"that the reference is the same classifier before compression and that the logits "
            f"selector picks the classifier output"
        )
    if not bool(torch.isfinite(reference).all()):
        raise NonFiniteError(
            "the reference produced NaN or infinite logits; check the reference model's weights "
            "and the inputs (a reference in half precision may overflow: keep it in float32)"
        )
