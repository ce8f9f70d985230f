"""The online tuner: gradient share, held-out feedback, checkpointing, and the live loss."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins import Config
from labelkeep_plugins.composer import LossComposer
from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.online_tuner import (
    FULL_SHARE_SOFTNESS,
    INITIAL_MULTIPLIER,
    INITIAL_SHARE,
    MAX_MULTIPLIER,
    MAX_SHARE,
    MIN_SHARE,
    OnlineTuner,
)
from labelkeep_plugins.plugins import get_plugin_manager
from labelkeep_plugins.reference import snapshot_reference
from labelkeep_plugins.session import Session
from labelkeep_plugins.terms import LossTerm
from labelkeep_plugins.tuners import make_tuner


def online_config(**changes: Any) -> Config:
    """The online tuner over the loss it was designed with (the defaults before catch-up)."""
    loss = LossConfig(weights={"ce": 1.0, "kd": 1.0}, temperature=2.0, focal=FocalConfig())
    return Config(**{"loss": loss, "tuner": "online", **changes})


def batch(seed: int, n: int = 16, classes: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(n, classes, generator=generator)
    reference = torch.randn(n, classes, generator=generator)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return student, reference, targets


def expected_multiplier(
    ce: float, teacher: float, reference: torch.Tensor, labels: torch.Tensor, ground: float = 1.0
) -> float:
    """The multiplier the tuner should set after one step, computed here from its definition."""
    softness = float((1 - reference.softmax(1).gather(1, labels[:, None])).mean())
    informativeness = min(1.0, softness / FULL_SHARE_SOFTNESS)
    return min(MAX_MULTIPLIER, INITIAL_SHARE * informativeness * ground * ce / teacher)


def scaled(loss: LossConfig, multiplier: float) -> LossConfig:
    weights = {k: w if k == "ce" else w * multiplier for k, w in loss.weights.items()}
    return loss.with_overrides(weights=weights)


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
    tuner = make_tuner(online_config())
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
    ce, teacher = ce_grad.norm(dim=1).mean(), teacher_grad.norm(dim=1).mean()
    expected = expected_multiplier(float(ce), float(teacher), reference, targets)
    assert tuner.state.multiplier == pytest.approx(expected, rel=1e-5)
    live = applied[-1]
    assert live.weights["ce"] == 1.0  # the user's own term keeps its weight
    assert live.weights["kd"] == pytest.approx(2.0 * tuner.state.multiplier)
    assert live.weights["hard"] == pytest.approx(0.5 * tuner.state.multiplier)
    assert live.temperature == 3.0 and live.focal == loss.focal


def test_gradient_norms_average_over_steps() -> None:
    tuner = OnlineTuner(online_config())
    step(tuner, 0)
    first = tuner.state.ce_grad
    step(tuner, 1)
    tuner_one = OnlineTuner(online_config())
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
        ((1000, 30, 700), "worse", INITIAL_SHARE / 2),  # fewer mismatches, accuracy 88% -> 70%
        ((1000, 30, 870), "same", INITIAL_SHARE),  # fewer mismatches, accuracy a bit lower
    ],
)
def test_evaluation_passes_move_the_share(second, verdict, share) -> None:
    tuner = OnlineTuner(online_config())
    evaluation_pass(tuner, 1000, 100, 880)
    step(tuner, 0)  # a training step ends the pass
    evaluation_pass(tuner, *second)
    step(tuner, 1)  # the first pass is judged (nothing before it), the second ends
    assert tuner.state.share == INITIAL_SHARE
    step(tuner, 2)  # the second pass is judged against the first
    assert tuner.state.share == pytest.approx(share)
    assert [p["mismatches"] for p in tuner.state.passes] == [100, second[1]]
    assert any(f": {verdict}" in point["event"] for point in tuner.state.trajectory)


def test_share_stays_within_its_bounds() -> None:
    tuner = OnlineTuner(online_config())
    mismatches, shares = 500, []
    for seed in range(21):  # ever worse, then ever better
        evaluation_pass(tuner, 1000, mismatches, 400)
        step(tuner, seed)
        mismatches = mismatches + 60 if seed < 6 else mismatches - 60
        shares.append(tuner.state.share)
    assert min(shares) == MIN_SHARE and shares[-1] == MAX_SHARE
    assert all(MIN_SHARE <= share <= MAX_SHARE for share in shares)


def test_state_dict_round_trips_through_a_safe_checkpoint() -> None:
    tuner = OnlineTuner(online_config())
    evaluation_pass(tuner, 500, 50, 400)
    for seed in range(3):
        step(tuner, seed)
    state = tuner.state_dict()
    json.dumps(state)  # plain numbers and lists only
    buffer = io.BytesIO()
    torch.save({"tuner": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["tuner"]
    resumed = OnlineTuner(online_config())
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
        OnlineTuner(online_config()).load_state_dict(state)


def test_session_trains_with_the_weights_the_tuner_sets() -> None:
    """Each step's gradient equals the explicit loss at the tuner's weights for that step."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = snapshot_reference(student)
    with torch.no_grad():
        student[0].weight.mul_(0.5)
    session = Session(online_config())
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
            assert weights.weights["kd"] > 0  # the teacher is on from the first step
            first = online_config().loss.with_overrides(
                weights={"ce": 1.0, "kd": INITIAL_MULTIPLIER}
            )
            assert index > 0 or weights == first  # scaled down until measured
        report = session.report()["tuner"]
        assert report["name"] == "online" and report["steps"] == 4
    finally:
        session.detach_all()
    assert not session._plugin_manager.is_registered(session.tuner)


def test_auto_mode_session_exposes_the_tuner_for_checkpoints() -> None:
    import labelkeep_plugins as lk

    with lk.instrumented(online_config()) as session:
        assert lk.current_session() is session
        state = session.tuner.state_dict()
        session.tuner.load_state_dict(state)
        assert state["name"] == "online"
    assert lk.current_session() is None


# -- regression tests: the loop shapes real scripts have -------------------------------------


def small_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = snapshot_reference(student)
    with torch.no_grad():
        student[0].weight.mul_(0.5)
    return student, reference


def norms(
    loss: LossConfig, out: torch.Tensor, ref: torch.Tensor, ce_labels: torch.Tensor, targets
) -> tuple[float, float]:
    """Explicit mean per-sample gradient norms: CE to ``ce_labels``, teacher terms at ``loss``."""
    leaf = out.detach().clone().requires_grad_(True)
    (ce,) = torch.autograd.grad(F.cross_entropy(leaf, ce_labels, reduction="sum"), leaf)
    per_sample, _ = LossComposer(loss).extra_per_sample(leaf, ref, targets)
    (teacher,) = torch.autograd.grad(per_sample.sum(), leaf)
    return float(ce.norm(dim=1).mean()), float(teacher.norm(dim=1).mean())


def gradients(student: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    student.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in student.parameters()]


OTHER_LOSSES = {
    "arithmetic on the logits": lambda out, y: F.cross_entropy(out.float() * 1.0, y),
    "mse to one-hot": lambda out, y: F.mse_loss(out.softmax(1), F.one_hot(y, 4).float()),
}


@pytest.mark.parametrize("user_loss", OTHER_LOSSES.values(), ids=OTHER_LOSSES.keys())
def test_gradient_path_trains_at_the_tuner_weights_and_measures(user_loss) -> None:
    """A loss the criterion patch cannot see: the teacher must still be on and measured."""
    student, reference = small_models()
    session = Session(online_config(strict=True))
    handle = session.attach(student, reference)
    try:
        for index in range(4):
            x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
            weights = session.tuner.loss_config()
            with handle.muted():
                out, ref = student(x).detach(), reference(x)
            got = gradients(student, user_loss(student(x), y))
            extra = LossComposer(weights)
            with handle.muted():
                logits = student(x)
                per_sample, _ = extra.extra_per_sample(logits, reference(x), None)
                want = gradients(student, user_loss(logits, y) + per_sample.mean())
            for g, e in zip(got, want, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
            if index == 0:  # no labels: CE to the reference's argmax, teacher as applied
                ce, teacher = norms(online_config().loss, out, ref, ref.argmax(1), None)
                wanted = expected_multiplier(ce, teacher, ref, ref.argmax(1))
                assert session.tuner.state.multiplier == pytest.approx(wanted, rel=1e-5)
        assert handle.attached and handle.stats.via_gradient == 4
        assert session.tuner.state.steps == 4 and not session.counters.failures
    finally:
        session.detach_all()


SOFT_TARGETS = {
    "label smoothing": (lambda out, t: F.cross_entropy(out, t, label_smoothing=0.1), lambda y: y),
    "float one-hot": (lambda out, t: F.cross_entropy(out, t), lambda y: F.one_hot(y, 4).float()),
}


@pytest.mark.parametrize(("user_loss", "make"), SOFT_TARGETS.values(), ids=SOFT_TARGETS.keys())
def test_soft_targets_reach_the_tuner_as_labels(user_loss, make) -> None:
    student, reference = small_models()
    session = Session(online_config(strict=True))
    handle = session.attach(student, reference)
    seen: list[torch.Tensor | None] = []
    measure = session.tuner._gradient_norms
    session.tuner._gradient_norms = lambda s, r, t: seen.append(t) or measure(s, r, t)
    try:
        x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
        weights = session.tuner.loss_config()
        got = gradients(student, user_loss(student(x), make(y)))
        with handle.muted():
            logits, ref = student(x), reference(x)
            per_sample, _ = LossComposer(weights).extra_per_sample(logits, ref, make(y))
            want = gradients(student, user_loss(logits, make(y)) + per_sample.mean())
        for g, e in zip(got, want, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        assert handle.stats.via_loss_value == 1 and len(seen) == 1 and torch.equal(seen[0], y)
        ce, teacher = norms(online_config().loss, logits, ref, y, y)
        wanted = expected_multiplier(ce, teacher, ref, y)
        assert session.tuner.state.multiplier == pytest.approx(wanted, rel=1e-5)
    finally:
        session.detach_all()


def test_bf16_logits_and_int32_labels_measure_as_their_float_values() -> None:
    student, reference, targets = batch(3)
    half = OnlineTuner(online_config())
    half.labelkeep_training_step(
        student_logits=student.bfloat16(),
        reference_logits=reference.bfloat16(),
        targets=targets.int(),
        terms={},
    )
    full = OnlineTuner(online_config())
    full.labelkeep_training_step(
        student_logits=student.bfloat16().float(),
        reference_logits=reference.bfloat16().float(),
        targets=targets,
        terms={},
    )
    assert half.state_dict() == full.state_dict()


@pytest.mark.parametrize("value_path", [True, False])
def test_bf16_autocast_steps_are_measured_on_both_paths(value_path) -> None:
    student, reference = small_models()
    session = Session(online_config(strict=True))
    handle = session.attach(student, reference)
    try:
        for _ in range(3):
            x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = student(x)
                loss = F.cross_entropy(out if value_path else out.float() * 1.0, y)
            gradients(student, loss)
        assert out.dtype == torch.bfloat16 and handle.attached
        stats = handle.stats
        assert (stats.via_loss_value, stats.via_gradient) == ((3, 0) if value_path else (0, 3))
        state = session.tuner.state
        assert state.steps == 3 and state.multiplier != INITIAL_MULTIPLIER
    finally:
        session.detach_all()


def train_and_evaluate(student: nn.Module, epochs: int, labels: bool, after=None) -> None:
    """Epochs of training, each followed by an evaluation of 200 samples (64, 64, 64, 8)."""
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 4, (64,), generator=generator)
    xt = torch.randn(200, 6, generator=generator)
    yt = torch.randint(0, 4, (200,), generator=generator)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    for _ in range(epochs):
        student.train()
        for start in range(0, 64, 16):
            out = student(x[start : start + 16])  # ``out`` holds the last eval batch until here
            loss = F.cross_entropy(out, y[start : start + 16])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        student.eval()
        with torch.no_grad():
            for start in range(0, 200, 64):
                out = student(xt[start : start + 64])
                if labels:
                    F.cross_entropy(out, yt[start : start + 64])
        if after is not None:
            after()


@pytest.mark.parametrize("labels", [True, False])
def test_evaluation_passes_between_epochs_are_whole(labels) -> None:
    student, reference = small_models()
    session = Session(online_config(strict=True))
    handle = session.attach(student, reference)
    try:
        train_and_evaluate(student, 3, labels)
        report = session.report()["tuner"]
        assert handle.last_pass_meter.samples == 200
    finally:
        session.detach_all()
    # passes 1 and 2 were judged at the second step of the next epoch; pass 3 is still open
    assert [p["samples"] for p in report["passes"]] == [200, 200]
    assert [p["labelled"] for p in report["passes"]] == [200 * labels] * 2
    assert report["ended_pass"] is None and report["open_pass"]["samples"] == 200
    verdicts = [point for point in report["trajectory"] if "evaluation pass" in point["event"]]
    assert [(point["step"], point["event"][:17]) for point in verdicts] == [
        (10, "evaluation pass 2")
    ]


def test_reading_the_state_mid_run_changes_nothing_and_resumes_exactly() -> None:
    student, reference = small_models()
    session = Session(online_config(strict=True))
    session.attach(student, reference)
    saved: list[dict] = []

    def checkpoint() -> None:  # right after each evaluation, as scripts save their best model
        state = session.tuner.state_dict()
        assert session.tuner.state_dict() == state
        buffer = io.BytesIO()
        torch.save({"labelkeep": state}, buffer)
        buffer.seek(0)
        saved.append(torch.load(buffer, weights_only=True)["labelkeep"])

    try:
        train_and_evaluate(student, 3, True, after=checkpoint)
        train_and_evaluate(student, 1, True)
        final = session.tuner.state_dict()
    finally:
        session.detach_all()
    assert [p["samples"] for p in final["passes"]] == [200, 200, 200]
    resumed = OnlineTuner(online_config())
    loaded = saved[-1]
    resumed.load_state_dict(loaded)
    assert resumed.state.passes is not loaded["passes"]  # the checkpoint's lists stay its own
    mine = {key: value for key, value in resumed.state_dict().items() if key != "trajectory"}
    theirs = {key: value for key, value in saved[-1].items() if key != "trajectory"}
    assert mine == theirs


@pytest.mark.parametrize("multiplier", [0.0, None, float("nan")])
def test_resuming_a_state_without_teacher_weight_turns_the_teacher_back_on(multiplier) -> None:
    state = OnlineTuner(online_config()).state_dict() | {"multiplier": multiplier}
    tuner = OnlineTuner(online_config())
    tuner.load_state_dict(state)
    assert tuner.state.multiplier == INITIAL_MULTIPLIER


def test_configured_weights_apply_until_the_student_differs_from_the_reference() -> None:
    """Logits equal to the reference's say nothing about the teacher's gradient scale."""
    student, reference, targets = batch(4)
    tuner = OnlineTuner(online_config())
    for _ in range(3):
        tuner.labelkeep_training_step(
            student_logits=reference, reference_logits=reference, targets=targets, terms={}
        )
    assert tuner.state.teacher_grad is None
    assert tuner.state.multiplier == INITIAL_MULTIPLIER
    assert tuner.loss_config() == scaled(online_config().loss, INITIAL_MULTIPLIER)
    tuner.labelkeep_training_step(
        student_logits=student, reference_logits=reference, targets=targets, terms={}
    )
    _, teacher = norms(online_config().loss, student, reference, targets, targets)
    assert tuner.state.teacher_grad == pytest.approx(teacher, rel=1e-5)


def test_share_counts_the_ground_truth_weight() -> None:
    loss = LossConfig(weights={"ce": 2.0, "kd": 1.0})
    tuner = OnlineTuner(Config(loss=loss))
    step(tuner, 0)
    student, reference, targets = batch(0)
    ce, teacher = norms(loss, student, reference, targets, targets)
    wanted = expected_multiplier(ce, teacher, reference, targets, ground=2.0)
    assert tuner.state.multiplier == pytest.approx(wanted, rel=1e-5)


def test_without_ground_truth_weight_the_configured_teacher_weights_stay() -> None:
    loss = LossConfig(weights={"ce": 0.0, "kd": 1.0})
    session = Session(Config(loss=loss))  # used to fail: every weight 0 before step 1
    step(session.tuner, 0)
    assert session.composer.loss == loss and session.tuner.loss_config() == loss


def test_a_loss_without_teacher_terms_keeps_training_and_counting() -> None:
    student, reference = small_models()
    session = Session(Config(loss={"weights": {"ce": 1.0}}, tuner="online", strict=True))
    handle = session.attach(student, reference)
    try:
        for _ in range(2):
            x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
            plain = gradients(student, F.cross_entropy(student(x), y))
            with handle.muted():
                want = gradients(student, F.cross_entropy(student(x), y))
            for g, e in zip(plain, want, strict=True):
                torch.testing.assert_close(g, e)
        assert handle.attached and handle.stats.via_loss_value == 2
        assert session.tuner.state.steps == 2 and session.tuner.state.teacher_grad == 0.0
    finally:
        session.detach_all()


def autograd_teacher(loss: LossConfig, out: torch.Tensor, ref: torch.Tensor, targets):
    leaf = out.detach().clone().requires_grad_(True)
    per_sample, _ = LossComposer(loss).extra_per_sample(leaf, ref, targets)
    return torch.autograd.grad(per_sample.sum(), leaf)[0]


ALL_TERMS = {"ce": 0.5, "kd": 1, "hard": 0.3, "logit_mse": 1}


@pytest.mark.parametrize("weights", [{"kd": 1.0}, {"hard": 0.5}, {"logit_mse": 2.0}, ALL_TERMS])
@pytest.mark.parametrize("focal", [True, None])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("labelled", [True, False])
def test_closed_form_teacher_gradient_equals_autograd(weights, focal, temperature, labelled):
    loss = LossConfig(weights=weights, temperature=temperature, focal=focal)
    tuner = OnlineTuner(Config(loss=loss))
    assert tuner._forms is not None  # built-in terms take the closed forms
    student, reference, targets = batch(7, n=32, classes=10)
    student, reference = 4 * student, 4 * reference
    labels = targets if labelled else None
    got = tuner._teacher_gradient(student, reference, labels)
    want = autograd_teacher(loss, student, reference, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class CosineTerm:
    @hookimpl
    def labelkeep_register_terms(self, register) -> None:
        cosine = lambda i: 1 - torch.cosine_similarity(i.student, i.reference, dim=1)  # noqa: E731
        register(LossTerm("cosine", cosine))


def test_terms_from_plugins_get_their_gradient_by_autograd() -> None:
    get_plugin_manager().register(CosineTerm(), name="cosine-term")
    loss = LossConfig(weights={"kd": 1.0, "cosine": 2.0})
    tuner = OnlineTuner(Config(loss=loss))
    assert tuner._forms is None
    student, reference, targets = batch(8)
    got = tuner._teacher_gradient(student, reference, targets)
    torch.testing.assert_close(got, autograd_teacher(loss, student, reference, targets))


def test_an_ignore_index_label_is_measured_as_the_reference_argmax() -> None:
    """``ignore_index=255`` reaches the tuner as a label; it must not index the logits."""
    student, reference = small_models()
    session = Session(online_config(strict=True))
    handle = session.attach(student, reference)
    try:
        x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
        y[::3] = 255
        gradients(student, F.cross_entropy(student(x), y, ignore_index=255))
        with handle.muted():
            out, ref = student(x).detach(), reference(x)
        labels = torch.where(y == 255, ref.argmax(1), y)
        ce, teacher = norms(online_config().loss, out, ref, labels, y)
        wanted = expected_multiplier(ce, teacher, ref, labels)
        assert session.tuner.state.multiplier == pytest.approx(wanted, rel=1e-5)
        student.eval()
        with torch.no_grad():
            F.cross_entropy(student(x), y, ignore_index=255)
        figures = session.report()["tuner"]["open_pass"]
        assert (figures["samples"], figures["labelled"]) == (8, 5)  # 255 is not a label
        assert figures["correct"] == int((out.argmax(1) == y).sum())
    finally:
        session.detach_all()


def test_two_loss_calls_on_one_forward_share_the_step_weights() -> None:
    """Mixup: the tuner learns inside the first call; the second must not see new weights."""
    student, reference = small_models()
    session = Session(online_config(strict=True))
    handle = session.attach(student, reference)
    try:
        for _ in range(3):
            x, lam = torch.randn(8, 6), 0.3
            y1, y2 = torch.randint(0, 4, (8,)), torch.randint(0, 4, (8,))
            weights = session.tuner.loss_config()
            out = student(x)
            got = gradients(
                student, lam * F.cross_entropy(out, y1) + (1 - lam) * F.cross_entropy(out, y2)
            )
            explicit = LossComposer(weights)
            with handle.muted():
                out, ref = student(x), reference(x)
                first, _ = explicit.total(out, ref, y1)
                second, _ = explicit.total(out, ref, y2)
                want = gradients(student, lam * first + (1 - lam) * second)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        assert handle.attached and session.tuner.state.steps == 3
    finally:
        session.detach_all()


@pytest.mark.parametrize("tuner", ["fixed", "online"])
def test_gradient_path_without_teacher_terms_keeps_the_users_gradient(tuner) -> None:
    """``weights: {ce: 1}`` (plain recovery, measured) on a loss the patch cannot see."""
    student, reference = small_models()
    session = Session(Config(loss={"weights": {"ce": 1.0}}, tuner=tuner, strict=True))
    handle = session.attach(student, reference)
    try:
        x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
        got = gradients(student, F.cross_entropy(student(x) * 1.0, y))
        with handle.muted():
            want = gradients(student, F.cross_entropy(student(x), y))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)
        assert handle.attached and handle.stats.via_gradient == 1
    finally:
        session.detach_all()


def test_a_reference_one_hot_on_the_labels_gets_a_proportionally_smaller_share() -> None:
    """Softness = mean probability off the label; below FULL_SHARE_SOFTNESS it scales the share."""
    student, _, targets = batch(5)
    confident = 12.0 * F.one_hot(targets, 5).float()  # ~0.0002 of its mass off the label
    soft = 0.5 * F.one_hot(targets, 5).float()  # ~0.5 off the label: full share
    tuners = {}
    for name, reference in (("confident", confident), ("soft", soft)):
        tuner = tuners[name] = OnlineTuner(online_config())
        tuner.labelkeep_training_step(
            student_logits=student, reference_logits=reference, targets=targets, terms={}
        )
        off_label = 1 - reference.softmax(1).gather(1, targets[:, None])
        assert tuner.state.softness == pytest.approx(float(off_label.mean()), rel=1e-4)
        ce, teacher = norms(online_config().loss, student, reference, targets, targets)
        wanted = expected_multiplier(ce, teacher, reference, targets)
        assert tuner.state.multiplier == pytest.approx(wanted, rel=1e-4)
    assert tuners["confident"].state.softness < 0.01 * FULL_SHARE_SOFTNESS
    assert tuners["soft"]._informativeness() == 1.0
    assert tuners["confident"]._informativeness() < 0.01
