"""Tests for the drop-in LabelPreservingLoss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import perturbed
from torch import nn

from labelkeep_plugins import LabelPreservingLoss, checksum, snapshot_reference
from labelkeep_plugins.config import FocalConfig
from labelkeep_plugins.errors import LogitsError, MissingReferenceError, ShapeMismatchError

WEIGHTS = {"ce": 0.6, "kd": 1.4, "hard": 0.3, "hinge": 0.2, "logit_mse": 0.05}
T = 3.0


def explicit_loss(
    student_logits, reference_logits, targets, weights=WEIGHTS, temperature=T, focal=(0.5, 2.0)
):
    """The label-preserving loss written out by hand."""
    s, r = student_logits, reference_logits.detach()
    if focal is None:
        w = torch.ones(s.shape[0])
    else:
        w = focal[0] + focal[1] * (r.argmax(1) == targets).float()
    kd = (
        F.kl_div(
            F.log_softmax(s / temperature, 1), F.softmax(r / temperature, 1), reduction="none"
        ).sum(1)
        * temperature**2
    )
    c = r.argmax(1)
    others = s.masked_fill(F.one_hot(c, s.shape[1]).bool(), float("-inf"))
    extras = {
        "kd": kd,
        "hard": F.cross_entropy(s, r.argmax(1), reduction="none"),
        "hinge": torch.relu(1 - (s.gather(1, c[:, None])[:, 0] - others.max(1).values)),
        "logit_mse": ((s - r) ** 2).mean(1),
    }
    total = weights.get("ce", 0.0) * F.cross_entropy(s, targets)
    for name, value in extras.items():
        total = total + (weights.get(name, 0.0) * w * value).mean()
    return total


def make_loss(reference, **kwargs):
    kwargs.setdefault("weights", WEIGHTS)
    kwargs.setdefault("temperature", T)
    kwargs.setdefault("focal", {"base": 0.5, "scale": 2.0})
    return LabelPreservingLoss(reference, **kwargs)


def test_value_and_gradients_equal_explicit_formula(reference_model, student, batch):
    inputs, targets = batch
    reference_model.eval()
    criterion = make_loss(reference_model, student=student)
    student.train()
    loss = criterion(student(inputs), targets)
    grads = torch.autograd.grad(loss, list(student.parameters()))

    with torch.no_grad():
        reference_logits = reference_model(inputs)
    expected = explicit_loss(student(inputs), reference_logits, targets)
    expected_grads = torch.autograd.grad(expected, list(student.parameters()))
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
    assert set(criterion.last_terms) == set(WEIGHTS)
    assert loss.ndim == 0


def test_focal_can_be_turned_off(reference_model, student, batch):
    inputs, targets = batch
    criterion = make_loss(reference_model, student=student, focal=False)
    logits = student(inputs)
    with torch.no_grad():
        reference_logits = reference_model.eval()(inputs)
    torch.testing.assert_close(
        criterion(logits, targets), explicit_loss(logits, reference_logits, targets, focal=None)
    )


def test_defaults_keep_ground_truth_weight(reference_model, batch):
    _, targets = batch
    criterion = LabelPreservingLoss(reference_model)
    logits = torch.randn(12, 5, requires_grad=True)
    # Reference logits equal to the student's: every teacher term is ~0, only CE remains.
    loss = criterion(logits, targets, reference_logits=logits.detach())
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), atol=1e-6, rtol=1e-5)


def count_calls(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_explicit_reference_logits_never_run_the_reference(reference_model, student, batch):
    inputs, targets = batch
    for criterion in (make_loss(reference_model), make_loss(reference_model, student=student)):
        calls = count_calls(criterion.reference)
        logits = student(inputs)
        given = torch.randn(12, 5)
        loss = criterion(logits, targets, reference_logits=given)
        assert calls == []
        torch.testing.assert_close(loss, explicit_loss(logits, given, targets))


def test_reference_runs_once_per_forward(reference_model, student, batch):
    inputs, targets = batch
    criterion = make_loss(reference_model, student=student)
    calls = count_calls(criterion.reference)
    logits = student(inputs)
    first = criterion(logits, targets)
    second = criterion(logits, targets)
    assert calls == [1]
    torch.testing.assert_close(first, second)
    criterion(student(inputs[:4]), targets[:4])  # a new forward: the reference runs on its inputs
    assert calls == [1, 1]


def test_without_student_or_reference_logits(reference_model, student, batch):
    inputs, targets = batch
    criterion = make_loss(reference_model)
    with pytest.raises(MissingReferenceError) as info:
        criterion(student(inputs), targets)
    message = str(info.value)
    assert "student=" in message and "reference_logits=" in message


def test_shape_mismatch_is_reported(reference_model, student, batch):
    inputs, targets = batch
    criterion = make_loss(reference_model)
    with pytest.raises(ShapeMismatchError):
        criterion(student(inputs), targets, reference_logits=torch.randn(12, 4))


def train(student, criterion, batch, steps=3):
    inputs, targets = batch
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    student.train()
    for _ in range(steps):
        optimizer.zero_grad()
        criterion(student(inputs), targets).backward()
        optimizer.step()


def test_reference_passed_in_is_never_modified(reference_model, student, batch):
    reference_model.train()
    before = checksum(reference_model)
    criterion = make_loss(reference_model, student=student)
    student_before = checksum(student)
    train(student, criterion, batch)
    assert checksum(student) != student_before  # training did happen
    assert checksum(reference_model) == before
    assert reference_model.training
    assert all(p.requires_grad and p.grad is None for p in reference_model.parameters())
    assert not reference_model._forward_hooks
    assert criterion.reference is not reference_model
    assert checksum(criterion.reference) == before


def test_snapshot_passed_in_is_used_as_is(reference_model, student, batch):
    snapshot = snapshot_reference(reference_model)
    before = checksum(snapshot)
    criterion = make_loss(snapshot, student=student)
    assert criterion.reference is snapshot
    train(student, criterion, batch)
    assert checksum(snapshot) == before
    assert not snapshot.training


def test_reference_is_the_student_itself(reference_model, batch):
    model = reference_model
    model.train()
    at_construction = copy.deepcopy(model).eval()
    before = checksum(model)
    criterion = make_loss(model, student=model)
    assert criterion.reference is not model
    assert checksum(criterion.reference) == before
    train(model, criterion, batch, steps=4)
    assert checksum(model) != before
    assert checksum(criterion.reference) == before
    assert not criterion.reference.training
    # The reference logits are those of the model as it was at construction.
    inputs, targets = batch
    logits = model(inputs)
    with torch.no_grad():
        expected_reference = at_construction(inputs)
    torch.testing.assert_close(
        criterion(logits, targets), explicit_loss(logits, expected_reference, targets)
    )


def test_reference_is_not_a_submodule(reference_model, student):
    criterion = make_loss(reference_model, student=student)
    assert list(criterion.parameters()) == []
    assert list(criterion.buffers()) == []
    assert criterion.state_dict() == {}
    assert all(m is criterion for m in criterion.modules())
    criterion.train()
    assert not criterion.reference.training
    assert all(not m.training for m in criterion.reference.modules())
    criterion.requires_grad_(True)
    assert all(not p.requires_grad for p in criterion.reference.parameters())


def test_release_removes_the_hook(reference_model, student, batch):
    inputs, targets = batch
    criterion = make_loss(reference_model, student=student)
    assert len(student._forward_hooks) == 1
    criterion(student(inputs), targets)
    criterion.release()
    assert len(student._forward_hooks) == 0
    with pytest.raises(MissingReferenceError):
        criterion(student(inputs), targets)
    criterion.release()  # twice is fine
    logits = student(inputs)
    given = torch.randn(12, 5)
    torch.testing.assert_close(
        criterion(logits, targets, reference_logits=given), explicit_loss(logits, given, targets)
    )


class DictModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"features": x, "logits": self.inner(x)}


class TupleModel(DictModel):
    def forward(self, x):
        return self.inner(x), x


def test_dict_outputs(reference_model, batch):
    inputs, targets = batch
    reference, student = DictModel(reference_model).eval(), DictModel(perturbed(reference_model))
    criterion = make_loss(reference, student=student)
    output = student(inputs)
    with torch.no_grad():
        reference_logits = reference(inputs)["logits"]
    torch.testing.assert_close(
        criterion(output, targets), explicit_loss(output["logits"], reference_logits, targets)
    )


def test_tuple_outputs_with_selector(reference_model, batch):
    inputs, targets = batch
    reference, student = TupleModel(reference_model).eval(), TupleModel(perturbed(reference_model))
    criterion = make_loss(reference, student=student, logits=0)
    output = student(inputs)
    with torch.no_grad():
        reference_logits = reference(inputs)[0]
    loss = criterion(output, targets)
    torch.testing.assert_close(loss, explicit_loss(output[0], reference_logits, targets))
    loss.backward()
    assert student.inner.fc.weight.grad is not None


def test_keyword_inputs_are_passed_to_the_reference(reference_model, batch):
    inputs, targets = batch

    class KeywordModel(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *, x):
            return self.inner(x)

    reference, student = (
        KeywordModel(reference_model).eval(),
        KeywordModel(perturbed(reference_model)),
    )
    criterion = make_loss(reference, student=student)
    logits = student(x=inputs)
    with torch.no_grad():
        expected = reference(x=inputs)
    torch.testing.assert_close(criterion(logits, targets), explicit_loss(logits, expected, targets))


def test_bad_weights_are_rejected(reference_model):
    from labelkeep_plugins.errors import ConfigError

    with pytest.raises(ConfigError):
        LabelPreservingLoss(reference_model, temperature=0)
    with pytest.raises(ConfigError):
        LabelPreservingLoss(reference_model, weights={"kd": -1.0})


def test_focal_config_object_accepted(reference_model, batch):
    _, targets = batch
    criterion = LabelPreservingLoss(
        reference_model, focal=FocalConfig(base=0.5, scale=2.0), weights=WEIGHTS, temperature=T
    )
    logits, given = torch.randn(12, 5), torch.randn(12, 5)
    torch.testing.assert_close(
        criterion(logits, targets, reference_logits=given), explicit_loss(logits, given, targets)
    )


def test_tuple_outputs_without_selector_say_how_to_select(reference_model, batch):
    inputs, targets = batch
    student = TupleModel(perturbed(reference_model))
    criterion = make_loss(TupleModel(reference_model), student=student)
    with pytest.raises(LogitsError, match="logits="):
        criterion(student(inputs), targets)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_give_an_fp32_loss(reference_model, batch, dtype):
    _, targets = batch
    criterion = make_loss(reference_model)
    generator = torch.Generator().manual_seed(3)
    logits = (30 * torch.randn(12, 5, generator=generator)).to(dtype).requires_grad_(True)
    given = (30 * torch.randn(12, 5, generator=generator)).to(dtype)
    loss = criterion(logits, targets, reference_logits=given)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, explicit_loss(logits.detach().float(), given.float(), targets))
    loss.backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


def test_targets_of_another_length_name_both_lengths(reference_model, batch):
    x, y = batch
    criterion = LabelPreservingLoss(reference_model)
    with pytest.raises(ShapeMismatchError, match=rf"got {len(y) - 1} targets for {len(y)} student"):
        criterion(reference_model(x), y[:-1], reference_logits=reference_model(x))


def test_targets_none_is_refused_unless_ce_is_zero(reference_model, batch):
    x, _ = batch
    logits = reference_model(x).detach()
    with pytest.raises(ShapeMismatchError, match=r"targets=None.*'ce': 0\.0"):
        LabelPreservingLoss(reference_model)(logits, None, reference_logits=logits)
    teacher_only = LabelPreservingLoss(reference_model, weights={"ce": 0.0, "kd": 1.0})
    assert teacher_only(logits * 1.5, None, reference_logits=logits).item() > 0


def test_focal_none_means_none_in_both_interfaces_as_in_yaml(reference_model, student):
    from labelkeep_plugins import attach
    from labelkeep_plugins.config import Config

    assert Config.from_dict({"loss": {"focal": None}}).loss.focal is None
    assert LabelPreservingLoss(reference_model, focal=None).composer.loss.focal is None
    handle = attach(student, reference_model, focal=None)
    try:
        assert handle.composer.loss.focal is None
    finally:
        handle.detach()
    assert LabelPreservingLoss(reference_model, focal=True).composer.loss.focal == FocalConfig()
