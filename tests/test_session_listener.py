"""A session's tuner hears only the students of that session.

A standalone ``attach()`` made while a session is active (a user's own loop next to an
adapter-driven one) must not feed the session's tuner, which would then retune the session's
loss from another model's steps.
"""

from __future__ import annotations

import torch
from conftest import perturbed
from torch import nn

from labelkeep_plugins import Config, attach, hookimpl, snapshot_reference
from labelkeep_plugins.plugins import get_plugin_manager
from labelkeep_plugins.tuners.base import FixedTuner
from labelkeep_plugins.zero_code.instrument import instrumented


class RecordingTuner(FixedTuner):
    """The fixed weights, and a count of the training steps it heard."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.steps = 0
        self.evaluations = 0

    @hookimpl
    def labelkeep_training_step(self, **_: object) -> None:
        self.steps += 1

    @hookimpl
    def labelkeep_evaluation_batch(self, **_: object) -> None:
        self.evaluations += 1


class RecordingTuners:
    @hookimpl
    def labelkeep_register_tuners(self, register):
        register("recording", RecordingTuner)


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    student = perturbed(reference)
    return student, reference


def _steps(model: nn.Module, count: int) -> None:
    model.train()
    for _ in range(count):
        x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
        nn.CrossEntropyLoss()(model(x), y).backward()


def _evaluate(model: nn.Module) -> None:
    model.eval()
    with torch.no_grad():
        model(torch.randn(6, 4))
        model(torch.randn(2, 4))


def test_a_standalone_attach_does_not_feed_the_sessions_tuner() -> None:
    get_plugin_manager().register(RecordingTuners(), name="recording-tuners")
    with instrumented(Config(tuner="recording")) as session:
        tuner = session.tuner
        own, _ = _pair()
        session.reference_for(own, framework="test", where="here")
        session.attach(own)
        outside, outside_reference = _pair()
        handle = attach(outside, snapshot_reference(outside_reference), weights={"ce": 1, "kd": 1})
        _steps(outside, 3)
        _evaluate(outside)
        assert handle.stats.via_loss_value == 3  # the handle itself saw them
        assert (tuner.steps, tuner.evaluations) == (0, 0)
        _steps(own, 2)
        _evaluate(own)
        _steps(own, 1)  # the next step hands over the evaluation batches
        assert tuner.steps == 3 and tuner.evaluations == 2
        handle.detach()


def test_the_session_does_not_register_its_tuner_as_a_global_plugin() -> None:
    """The feedback loop is explicit: the session hands its tuner to its own handles."""
    with instrumented(Config()) as session:
        assert not get_plugin_manager().is_registered(session.tuner)


class ChangeRecorder:
    """A plugin that keeps what each ``labelkeep_student_changed`` told it."""

    def __init__(self) -> None:
        self.heard: list[tuple[nn.Module, str]] = []

    @hookimpl
    def labelkeep_student_changed(self, student: nn.Module, where: str) -> None:
        self.heard.append((student, where))


def test_a_changed_student_closes_the_sessions_gate_and_reaches_plugins() -> None:
    recorder = ChangeRecorder()
    get_plugin_manager().register(recorder, name="change-recorder")
    try:
        with instrumented(Config()) as session:
            student, _ = _pair()
            session.reference_for(student, framework="test", where="here")
            session.attach(student)
            _steps(student, 2)
            assert session.tuner.measured
            session.student_changed(student, "test: a pruning round")
            assert not session.tuner.measured
            assert session.tuner.loss_config().weights["kd"] == 0.0
            assert session.report()["tuner"]["resets"] == 1
    finally:
        get_plugin_manager().unregister(recorder)
    assert recorder.heard == [(student, "test: a pruning round")]
