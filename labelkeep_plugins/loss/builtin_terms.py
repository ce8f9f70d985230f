"""The built-in loss terms: ce, kd, hard, hinge, logit_mse, fm."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.loss.terms import (
    FUNCTION_MATCHING_TERM,
    GROUND_TRUTH_TERM,
    LossTerm,
    TermInputs,
)


def ground_truth_ce(inputs: TermInputs) -> torch.Tensor:
    """Cross-entropy to the labels: the recovery loss a plain script would use."""
    assert inputs.targets is not None  # guaranteed by needs_targets
    return F.cross_entropy(inputs.student, inputs.targets, reduction="none")


def hinton_kd(inputs: TermInputs) -> torch.Tensor:
    """KL(softmax(r/T) || softmax(s/T)) * T^2 per sample; its batch mean is KL 'batchmean'.

    The T^2 factor keeps the term's gradient scale independent of T (Hinton et al.).
    """
    t = inputs.temperature
    log_p_student = F.log_softmax(inputs.student / t, dim=1)
    log_p_reference = F.log_softmax(inputs.reference / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_reference, reduction="none", log_target=True)
    return kl.sum(dim=1) * (t * t)


def hard_label_ce(inputs: TermInputs) -> torch.Tensor:
    """Cross-entropy to the reference's predicted label: pulls the argmax, not the shape."""
    return F.cross_entropy(inputs.student, inputs.reference.argmax(dim=1), reduction="none")


HINGE_MARGIN = 1.0  # in logit units, as the multi-class SVM's


def reference_label_hinge(inputs: TermInputs) -> torch.Tensor:
    """``relu(1 - (s_c - max_{j != c} s_j))`` with ``c`` the reference's predicted label.

    The multi-class hinge (Crammer and Singer) on the reference's decision: zero once the
    student prefers the reference's label by a logit margin of 1, so unlike ``hard`` it
    stops pulling on samples that already agree and spends the gradient on the ones
    near or past the boundary, where mismatches are made.
    """
    label = inputs.reference.argmax(dim=1, keepdim=True)
    student = inputs.student
    own = student.gather(1, label).squeeze(1)
    others = student.scatter(1, label, float("-inf")).max(dim=1).values
    return torch.relu(HINGE_MARGIN - (own - others))


def logit_mse(inputs: TermInputs) -> torch.Tensor:
    """Mean squared difference of the raw logits, per sample."""
    return (inputs.student - inputs.reference).pow(2).mean(dim=1)


def function_matching_kd(inputs: TermInputs) -> torch.Tensor:
    """:func:`hinton_kd` on the logits of the perturbed copy (the injector feeds it those).

    A function of its own so that nothing mistakes ``fm`` for ``kd`` on the batch itself.
    """
    return hinton_kd(inputs)


BUILTIN_TERMS: tuple[LossTerm, ...] = (
    LossTerm(
        GROUND_TRUTH_TERM,
        ground_truth_ce,
        needs_targets=True,
        teacher=False,
        description="cross-entropy to the ground-truth labels (the user's own loss)",
    ),
    LossTerm("kd", hinton_kd, description="Hinton KD: KL at temperature T, batchmean, times T^2"),
    LossTerm("hard", hard_label_ce, description="cross-entropy to the reference's argmax label"),
    LossTerm(
        "hinge",
        reference_label_hinge,
        description="multi-class hinge (margin 1) on the reference's argmax label",
    ),
    LossTerm("logit_mse", logit_mse, description="mean squared error between logits"),
    LossTerm(
        FUNCTION_MATCHING_TERM,
        function_matching_kd,
        teacher=False,  # no focal weights (the copy has no labels), and not searched by default
        on_perturbed_copy=True,
        description="function matching: KD on a mixup (+ noise) copy of the batch "
        "(injector, loss-value path only)",
    ),
)


@hookimpl
def labelkeep_register_terms(register: Callable[[LossTerm], None]) -> None:
    for term in BUILTIN_TERMS:
        register(term)
