"""The online tuner: gradient share, held-out feedback, checkpointing, and the live loss."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins import Config
from labelkeep_plugins.composer import LossComposer
from labelkeep_plugins.config import LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.online_tuner import (
    INITIAL_SHARE,
    MAX_SHARE,
    MIN_SHARE,
    OnlineTuner,
)
from labelkeep_plugins.reference import snapshot_reference
from labelkeep_plugins.session import Session
from labelkeep_plugins.tuners import make_tuner


def batch(seed: int, n: int = 16, classes: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(n, classes, generator=generator)
    reference = torch.randn(n, classes, generator=generator)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return student, reference, targets


def step(tuner: OnlineTuner, seed: int) -> None:
    student, reference, targets = batch(seed)
    tuner.labelkeep_training_step(
        student_logits=student, reference_logits=reference, targets=targets, terms={}
    )


def evaluation_pass(tuner: OnlineTuner, samples: int, mismatches: int, correct: int) -> None:
    """Feed one pass whose student disagrees with the reference on ``mismatches`` samples."""
    reference = torch.zeros(samples, 3)
    reference[:, 0] = 1.0
    student = reference.clone()
    student[:mismatches, 0], student[:mismatches, 1] = 0.0, 1.0
    labels = student.argmax(dim=1)
    labels[correct:] = (labels[correct:] + 1) % 3  # exactly ``correct`` right
    tuner.labelkeep_evaluation_batch(
        student_logits=student, reference_logits=reference, targets=labels
    )


def test_online_is_registered_and_made_by_name() -> None:
    tuner = make_tuner(Config(tuner="online"))
    assert isinstance(tuner, OnlineTuner)
    assert tuner.state.share == INITIAL_SHARE


def test_teacher_gradient_is_held_at_the_share_of_the_ground_truth_gradient() -> None:
    loss = LossConfig(weights={"ce": 1.0, "kd": 2.0, "hard": 0.5}, temperature=3.0)
    tuner = OnlineTuner(Config(loss=loss))
    applied: list[LossConfig] = []
    tuner.bind(applied.append)
    step(tuner, 0)
    student, reference, targets = batch(0)
    # the explicit per-sample gradients, by autograd on each loss separately
    leaf = student.clone().requires_grad_(True)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(leaf, targets, reduction="sum"), leaf)
    probe = LossComposer(loss)
    per_sample, _ = probe.extra_per_sample(leaf, reference, targets)
    (teacher_grad,) = torch.autograd.grad(per_sample.sum(), leaf)
    expected = INITIAL_SHARE * ce_grad.norm(dim=1).mean() / teacher_grad.norm(dim=1).mean()
    assert tuner.state.multiplier == pytest.approx(float(expected), rel=1e-5)
    live = applied[-1]
    assert live.weights["ce"] == 1.0  # the user's own term keeps its weight
    assert live.weights["kd"] == pytest.approx(2.0 * tuner.state.multiplier)
    assert live.weights["hard"] == pytest.approx(0.5 * tuner.state.multiplier)
    assert live.temperature == 3.0 and live.focal == loss.focal


def test_gradient_norms_average_over_steps() -> None:
    tuner = OnlineTuner(Config())
    step(tuner, 0)
    first = tuner.state.ce_grad
    step(tuner, 1)
    tuner_one = OnlineTuner(Config())
    step(tuner_one, 1)
    assert first is not None and tuner_one.state.ce_grad is not None
    assert tuner.state.ce_grad == pytest.approx(0.9 * first + 0.1 * tuner_one.state.ce_grad)


@pytest.mark.parametrize(
    ("second", "verdict", "share"),
    [
        ((1000, 200, 780), "worse", INITIAL_SHARE / 2),  # mismatches 10% -> 20%
        ((1000, 30, 880), "better", INITIAL_SHARE * 1.5),  # 10% -> 3%, accuracy kept
        ((1000, 105, 860), "same", INITIAL_SHARE),  # within counting noise
        ((1000, 100, 700), "worse", INITIAL_SHARE / 2),  # accuracy 88% -> 70%
    ],
)
def test_evaluation_passes_move_the_share(second, verdict, share) -> None:
    tuner = OnlineTuner(Config())
    evaluation_pass(tuner, 1000, 100, 880)
    step(tuner, 0)  # a training step closes the pass
    evaluation_pass(tuner, *second)
    step(tuner, 1)
    assert tuner.state.share == pytest.approx(share)
    assert [p["mismatches"] for p in tuner.state.passes] == [100, second[1]]
    assert any(f": {verdict}" in point["event"] for point in tuner.state.trajectory)


def test_share_stays_within_its_bounds() -> None:
    tuner = OnlineTuner(Config())
    mismatches, shares = 500, []
    for seed in range(21):  # ever worse, then ever better
        evaluation_pass(tuner, 1000, mismatches, 400)
        step(tuner, seed)
        mismatches = mismatches + 60 if seed < 6 else mismatches - 60
        shares.append(tuner.state.share)
    assert min(shares) == MIN_SHARE and shares[-1] == MAX_SHARE
    assert all(MIN_SHARE <= share <= MAX_SHARE for share in shares)


def test_state_dict_round_trips_through_a_safe_checkpoint() -> None:
    tuner = OnlineTuner(Config())
    evaluation_pass(tuner, 500, 50, 400)
    for seed in range(3):
        step(tuner, seed)
    state = tuner.state_dict()
    json.dumps(state)  # plain numbers and lists only
    buffer = io.BytesIO()
    torch.save({"tuner": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["tuner"]
    resumed = OnlineTuner(Config())
    applied: list[LossConfig] = []
    resumed.bind(applied.append)
    resumed.load_state_dict(loaded)
    assert resumed.state.multiplier == tuner.state.multiplier
    assert resumed.state.share == tuner.state.share
    assert resumed.state.passes == tuner.state.passes
    assert resumed.loss_config() == tuner.loss_config()
    assert applied[-1] == tuner.loss_config()  # the live loss follows the resumed state
    assert resumed.state.trajectory[-1]["event"] == "resumed"


@pytest.mark.parametrize("state", [{"name": "fixed"}, {}, ["online"]])
def test_state_of_another_tuner_is_refused(state) -> None:
    with pytest.raises(ConfigError, match="cannot resume tuner 'online'"):
        OnlineTuner(Config()).load_state_dict(state)


def test_session_trains_with_the_weights_the_tuner_sets() -> None:
    """Each step's gradient equals the explicit loss at the tuner's weights for that step."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = snapshot_reference(student)
    with torch.no_grad():
        student[0].weight.mul_(0.5)
    session = Session(Config(tuner="online"))
    handle: InjectionHandle = session.attach(student, reference)
    try:
        for index in range(4):
            x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
            weights = session.tuner.loss_config()
            student.zero_grad()
            F.cross_entropy(student(x), y).backward()
            got = [p.grad.clone() for p in student.parameters()]
            explicit = LossComposer(weights)
            with handle.muted():
                student.zero_grad()
                logits = student(x)
                loss, _ = explicit.total(logits, reference(x), y)
                loss.backward()
            for g, e in zip(got, (p.grad for p in student.parameters()), strict=True):
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
            assert weights.weights.get("kd", 0.0) > 0 or index == 0  # plain only before step 1
        report = session.report()["tuner"]
        assert report["name"] == "online" and report["steps"] == 4
    finally:
        session.detach_all()
    assert not session._plugin_manager.is_registered(session.tuner)
