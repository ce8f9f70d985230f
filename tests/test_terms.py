"""Tests for the built-in loss terms and the LossComposer that combines them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.errors import NonFiniteError, ShapeMismatchError
from labelkeep_plugins.loss.builtin_terms import BUILTIN_TERMS
from labelkeep_plugins.loss.composer import LossComposer, focal_weights
from labelkeep_plugins.loss.terms import LossTerm, TermInputs

TERMS = {term.name: term for term in BUILTIN_TERMS}
N, C = 16, 6


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    student = 3 * torch.randn(N, C, generator=generator)
    reference = 3 * torch.randn(N, C, generator=generator)
    targets = torch.randint(0, C, (N,), generator=generator)
    # Make the reference right on some samples and wrong on others, for the focal weights.
    targets[: N // 2] = reference[: N // 2].argmax(dim=1)
    targets[N // 2 :] = (reference[N // 2 :].argmax(dim=1) + 1) % C
    return student, reference, targets


def composer(
    weights: dict[str, float], temperature: float = 2.0, focal: FocalConfig | None = None
) -> LossComposer:
    return LossComposer(
        LossConfig(weights=weights, temperature=temperature, focal=focal), terms=TERMS
    )


def kd_reference(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    return (
        F.kl_div(
            F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean"
        )
        * temperature
        * temperature
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 7.5])
def test_kd_is_batchmean_kl_times_t_squared(logits, temperature):
    student, reference, targets = logits
    per_sample = TERMS["kd"].per_sample(TermInputs(student, reference, targets, temperature))
    assert per_sample.shape == (N,)
    torch.testing.assert_close(per_sample.mean(), kd_reference(student, reference, temperature))
    value, terms = composer({"ce": 0.0, "kd": 1.0}, temperature).total(student, reference, targets)
    torch.testing.assert_close(value, kd_reference(student, reference, temperature))
    torch.testing.assert_close(terms["kd"], value)


def test_kd_is_zero_for_identical_logits(logits):
    student, _, targets = logits
    value, _ = composer({"ce": 0.0, "kd": 1.0}).total(student, student.clone(), targets)
    assert abs(value.item()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_terms_are_computed_in_fp32_for_low_precision_inputs(logits, dtype):
    student, reference, targets = logits
    # Large logits: softmax of these in half precision would lose the small classes entirely.
    s_low, r_low = (40 * student).to(dtype), (40 * reference).to(dtype)
    s_low.requires_grad_(True)
    weights = {"ce": 1.0, "kd": 1.0, "hard": 0.5, "logit_mse": 0.1}
    value, terms = composer(weights, temperature=4.0).total(s_low, r_low, targets)
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    for name, term_value in terms.items():
        assert term_value.dtype == torch.float32, name
        assert torch.isfinite(term_value), name
    s32, r32 = s_low.detach().float(), r_low.float()
    torch.testing.assert_close(terms["kd"], kd_reference(s32, r32, 4.0))
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s32, targets))
    value.backward()
    assert s_low.grad is not None
    assert s_low.grad.dtype == dtype
    assert torch.isfinite(s_low.grad.float()).all()


def test_hard_is_cross_entropy_to_reference_argmax(logits):
    student, reference, targets = logits
    per_sample = TERMS["hard"].per_sample(TermInputs(student, reference, targets, 3.0))
    expected = F.cross_entropy(student, reference.argmax(dim=1), reduction="none")
    torch.testing.assert_close(per_sample, expected)
    # Not the ground truth: on the samples where the reference is wrong the two differ.
    assert not torch.allclose(per_sample, F.cross_entropy(student, targets, reduction="none"))


def test_hinge_is_the_multiclass_hinge_on_the_reference_label():
    student = torch.tensor([[3.0, 1.0, 0.0], [0.2, 0.5, 0.1], [0.0, 2.0, 4.0]])
    reference = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    per_sample = TERMS["hinge"].per_sample(TermInputs(student, reference, None, 4.0))
    # margins for the reference's label: 3 - 1 = 2 (past 1: no loss), 0.2 - 0.5, 2 - 4
    torch.testing.assert_close(per_sample, torch.tensor([0.0, 1.3, 3.0]))
    assert TERMS["hinge"].teacher and not TERMS["hinge"].needs_targets


def test_hinge_gradient_moves_only_the_two_competing_logits():
    student = torch.tensor([[0.2, 0.5, 0.1, -1.0]], requires_grad=True)
    reference = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    TERMS["hinge"].per_sample(TermInputs(student, reference, None, 4.0)).sum().backward()
    torch.testing.assert_close(student.grad, torch.tensor([[-1.0, 1.0, 0.0, 0.0]]))


def test_logit_mse(logits):
    student, reference, targets = logits
    per_sample = TERMS["logit_mse"].per_sample(TermInputs(student, reference, targets, 1.0))
    torch.testing.assert_close(per_sample.mean(), F.mse_loss(student, reference))
    torch.testing.assert_close(per_sample, ((student - reference) ** 2).mean(dim=1))


def test_ce_is_ground_truth_cross_entropy(logits):
    student, reference, targets = logits
    per_sample = TERMS["ce"].per_sample(TermInputs(student, reference, targets, 1.0))
    torch.testing.assert_close(per_sample, F.cross_entropy(student, targets, reduction="none"))
    assert TERMS["ce"].needs_targets and not TERMS["ce"].teacher
    assert all(TERMS[name].teacher for name in ("kd", "hard", "logit_mse"))


def test_focal_weights_values(logits):
    _, reference, targets = logits
    weights = focal_weights(FocalConfig(base=0.5, scale=2.0), reference, targets)
    correct = reference.argmax(dim=1) == targets
    assert correct.any() and (~correct).any()
    torch.testing.assert_close(weights, torch.where(correct, 2.5, 0.5))
    assert focal_weights(None, reference, targets) is None
    unlabelled = focal_weights(FocalConfig(base=0.5, scale=2.0), reference, None)
    torch.testing.assert_close(unlabelled, torch.full((N,), 0.5))


def test_total_equals_explicit_combination_with_focal(logits):
    student, reference, targets = logits
    student = student.clone().requires_grad_(True)
    weights = {"ce": 0.7, "kd": 1.3, "hard": 0.4, "logit_mse": 0.05}
    temperature, focal = 3.0, FocalConfig(base=0.5, scale=1.5)
    value, terms = composer(weights, temperature, focal).total(student, reference, targets)

    s = student
    w = 0.5 + 1.5 * (reference.argmax(dim=1) == targets).float()
    t = temperature
    kd = (
        F.kl_div(F.log_softmax(s / t, 1), F.softmax(reference / t, 1), reduction="none").sum(1)
        * t
        * t
    )
    hard = F.cross_entropy(s, reference.argmax(1), reduction="none")
    mse = ((s - reference) ** 2).mean(1)
    expected = (
        0.7 * F.cross_entropy(s, targets)  # ce: no focal weight
        + (w * (1.3 * kd + 0.4 * hard + 0.05 * mse)).mean()
    )
    torch.testing.assert_close(value, expected)
    # The unweighted term means are reported too.
    torch.testing.assert_close(terms["kd"], kd.mean())
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s, targets))
    grad = torch.autograd.grad(value, student)[0]
    expected_grad = torch.autograd.grad(expected, student)[0]
    torch.testing.assert_close(grad, expected_grad)


def test_focal_is_not_applied_to_ce(logits):
    student, reference, targets = logits
    plain, _ = composer({"ce": 1.0}).total(student, reference, targets)
    focal, _ = composer({"ce": 1.0}, focal=FocalConfig(base=0.1, scale=5.0)).total(
        student, reference, targets
    )
    torch.testing.assert_close(plain, focal)
    torch.testing.assert_close(plain, F.cross_entropy(student, targets))


def test_zero_weight_terms_are_not_computed(logits):
    student, reference, targets = logits
    _, terms = composer({"ce": 1.0, "kd": 0.0, "hard": 1.0}).total(student, reference, targets)
    assert set(terms) == {"ce", "hard"}


def test_extra_per_sample_excludes_ground_truth(logits):
    student, reference, targets = logits
    c = composer({"ce": 0.3, "kd": 2.0}, focal=FocalConfig(base=1.0, scale=1.0))
    extra, terms = c.extra_per_sample(student, reference, targets)
    assert set(terms) == {"kd"}
    w = 1.0 + (reference.argmax(1) == targets).float()
    kd = TERMS["kd"].per_sample(TermInputs(student, reference, targets, 2.0))
    torch.testing.assert_close(extra, 2.0 * w * kd)
    assert c.ground_truth_weight == 0.3


def test_probability_targets_for_ce_and_focal(logits):
    student, reference, targets = logits
    probabilities = 0.8 * F.one_hot(targets, C).float() + 0.2 / C
    c = composer({"ce": 1.0, "kd": 1.0}, focal=FocalConfig(base=1.0, scale=3.0))
    value, terms = c.total(student, reference, probabilities)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(student, probabilities))
    # The focal weights read the probability targets' argmax: same as the class labels.
    torch.testing.assert_close(
        focal_weights(FocalConfig(1.0, 3.0), reference, probabilities),
        focal_weights(FocalConfig(1.0, 3.0), reference, targets),
    )
    w = 1.0 + 3.0 * (reference.argmax(1) == targets).float()
    kd = TERMS["kd"].per_sample(TermInputs(student, reference, targets, 2.0))
    torch.testing.assert_close(value, F.cross_entropy(student, probabilities) + (w * kd).mean())


def test_ce_is_skipped_without_targets(logits):
    student, reference, _ = logits
    extra, terms = composer({"ce": 1.0, "kd": 1.0}).extra_per_sample(student, reference, None)
    assert set(terms) == {"kd"}
    assert extra.shape == (N,)


def test_reference_is_detached_in_total(logits):
    student, reference, targets = logits
    reference = reference.clone().requires_grad_(True)
    value, _ = composer({"kd": 1.0, "logit_mse": 1.0}).total(student, reference, targets)
    assert not value.requires_grad


def test_shape_mismatch_and_non_finite_reference(logits):
    student, reference, targets = logits
    c = composer({"ce": 1.0, "kd": 1.0})
    with pytest.raises(ShapeMismatchError, match=r"\(16, 6\).*\(16, 5\)"):
        c.total(student, reference[:, :5], targets)
    bad = reference.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        c.total(student, bad, targets)


def test_loss_term_name_must_be_identifier():
    with pytest.raises(ValueError, match="identifier"):
        LossTerm("not a name", lambda inputs: inputs.student.sum(1))
