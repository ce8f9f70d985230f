"""The catch-up tuner: its gate is the ratio of the two label fits, read once per interval."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins import Config, ConfigError, attach, snapshot_reference
from labelkeep_plugins.config import LossConfig
from labelkeep_plugins.plugins import load_plugins
from labelkeep_plugins.tuners.catchup import UPDATE_INTERVAL, CatchUpTuner, label_fit

LOSS = LossConfig(weights={"ce": 1.0, "kd": 2.0}, temperature=4.0, focal=None)


def _tuner() -> CatchUpTuner:
    return CatchUpTuner(Config(loss=LOSS, tuner="catchup"))


def _step(tuner: CatchUpTuner, student, reference, labels) -> None:
    tuner.labelkeep_training_step(
        student_logits=student, reference_logits=reference, targets=labels, terms={}
    )


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


@contextlib.contextmanager
def _attached(model: nn.Module, reference_model: nn.Module) -> Iterator[tuple[Any, CatchUpTuner]]:
    """``model`` attached with a live catch-up tuner, as a session wires them."""
    tuner = _tuner()
    handle = attach(model, snapshot_reference(reference_model), loss=tuner.loss_config())
    tuner.bind(handle.composer.defer)
    manager = load_plugins()
    manager.register(tuner)
    try:
        yield handle, tuner
    finally:
        manager.unregister(tuner)
        handle.detach()


def _fit(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The ground truth's gradient norm per sample, by autograd, summed."""
    z = logits.clone().requires_grad_(True)
    (F.cross_entropy(z, labels, reduction="sum")).backward()
    return float(z.grad.norm(dim=1).sum())


def test_label_fit_is_the_norm_of_the_cross_entropy_gradient() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    valid = torch.ones(6)
    assert float(label_fit(logits, labels, valid)) == pytest.approx(_fit(logits, labels))
    valid[0] = 0.0
    assert float(label_fit(logits, labels, valid)) == pytest.approx(_fit(logits[1:], labels[1:]))


def test_the_gate_is_the_fit_ratio_capped_at_one_and_scales_only_teacher_terms() -> None:
    torch.manual_seed(1)
    labels = torch.randint(0, 3, (8,))
    student, reference = torch.randn(8, 3), 6 * F.one_hot(labels, 3).float()
    tuner = _tuner()
    _step(tuner, student, reference, labels)  # the first step is read at once
    expected = _fit(reference, labels) / _fit(student, labels)
    assert 0 < expected < 1 and tuner.gate == pytest.approx(expected, rel=1e-5)
    weights = dict(tuner.loss_config().weights)
    assert weights == pytest.approx({"ce": 1.0, "kd": 2.0 * expected}, rel=1e-5)
    _step(tuner, reference, student, labels)  # a student ahead of its reference: capped
    for _ in range(UPDATE_INTERVAL - 2):
        _step(tuner, reference, student, labels)
    assert tuner.gate == pytest.approx(1.0)


def test_the_gate_is_read_once_per_interval_over_the_interval() -> None:
    torch.manual_seed(2)
    labels = torch.randint(0, 3, (4,))
    good, bad = 8 * F.one_hot(labels, 3).float(), torch.randn(4, 3)
    tuner = _tuner()
    _step(tuner, bad, good, labels)
    first = tuner.gate
    for _ in range(UPDATE_INTERVAL - 2):
        _step(tuner, good, good, labels)
    assert tuner.gate == first and len(tuner.trajectory) == 1
    _step(tuner, good, good, labels)
    assert tuner.gate == pytest.approx(1.0) and len(tuner.trajectory) == 2


def test_the_teacher_waits_for_the_first_measurement() -> None:
    tuner = _tuner()
    assert dict(tuner.loss_config().weights) == {"ce": 1.0, "kd": 0.0}
    labels = torch.randint(0, 3, (4,))
    _step(tuner, torch.randn(4, 3), 6 * F.one_hot(labels, 3).float(), labels)
    assert tuner.measured and 0 < tuner.loss_config().weights["kd"] < 2.0


def test_attached_the_first_step_trains_on_the_users_loss_alone() -> None:
    torch.manual_seed(5)
    model = _net()
    twin = copy.deepcopy(model)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with _attached(model, _net()) as (_, tuner):
        F.cross_entropy(model(x), y).backward()
    F.cross_entropy(twin(x), y).backward()
    for attached, plain in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(attached.grad, plain.grad)
    assert tuner.measured


def test_without_labels_the_configured_weights_apply_and_nothing_is_measured() -> None:
    tuner = _tuner()
    _step(tuner, torch.randn(4, 3), torch.randn(4, 3), None)
    _step(tuner, torch.randn(4, 3), torch.randn(4, 3), torch.rand(4, 3))  # soft targets
    assert not tuner.measured and dict(tuner.loss_config().weights) == dict(LOSS.weights)


def test_a_first_batch_of_ignored_labels_leaves_the_gate_to_the_next_step() -> None:
    tuner = _tuner()
    ignored = torch.full((4,), -100)
    _step(tuner, torch.randn(4, 3), torch.randn(4, 3), ignored)
    assert not tuner.measured and tuner.loss_config().weights["kd"] == 0.0
    labels = torch.randint(0, 3, (4,))
    _step(tuner, torch.randn(4, 3), 6 * F.one_hot(labels, 3).float(), labels)  # step 2
    assert tuner.measured and tuner.loss_config().weights["kd"] > 0.0


def test_a_pruning_round_closes_the_gate_until_the_pruned_student_is_measured() -> None:
    torch.manual_seed(6)
    labels = torch.randint(0, 3, (4,))
    reference, lagging = 8 * F.one_hot(labels, 3).float(), torch.randn(4, 3)
    tuner = _tuner()
    for _ in range(3):  # measured, then part of an interval summed
        _step(tuner, reference, reference, labels)
    assert tuner.gate == pytest.approx(1.0)
    tuner.labelkeep_student_changed(student=_net(), where="a pruning round")
    assert not tuner.measured and tuner.loss_config().weights["kd"] == 0.0
    _step(tuner, lagging, reference, labels)  # the pruned student's first step, alone
    expected = _fit(reference, labels) / _fit(lagging, labels)
    assert tuner.measured and tuner.gate == pytest.approx(min(1.0, expected), rel=1e-5)
    assert tuner.resets == 1 and tuner.state_dict()["resets"] == 1


def test_attached_a_pruning_round_takes_the_teacher_off_the_next_step() -> None:
    torch.manual_seed(7)
    model = _net()
    twin = copy.deepcopy(model)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with _attached(model, model) as (handle, tuner):
        F.cross_entropy(model(x), y).backward()  # the student is its reference: gate 1
        model(x)
        assert handle.composer.loss.weights["kd"] == pytest.approx(2.0)
        with torch.no_grad():  # a pruning round, the same in the twin
            for net in (model, twin):
                net[0].weight[::2] = 0.0
        tuner.labelkeep_student_changed(student=model, where="a pruning round")
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    F.cross_entropy(twin(x), y).backward()
    for attached, plain in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(attached.grad, plain.grad)


def test_an_unmeasured_state_resumes_closed() -> None:
    tuner = _tuner()
    resumed = _tuner()
    resumed.load_state_dict(tuner.state_dict())
    assert not resumed.measured and resumed.loss_config().weights["kd"] == 0.0


def test_an_ignore_index_is_left_out_not_counted() -> None:
    labels = torch.tensor([0, 1, -100, 2])
    student, reference = torch.randn(4, 3), torch.randn(4, 3)
    tuner = _tuner()
    _step(tuner, student, reference, labels)
    kept = labels != -100
    expected = _fit(reference[kept], labels[kept]) / _fit(student[kept], labels[kept])
    assert tuner.gate == pytest.approx(min(1.0, expected), rel=1e-5)


def test_attached_the_gate_reaches_the_live_loss() -> None:
    torch.manual_seed(3)
    model = _net()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with _attached(model, _net()) as (handle, tuner):
        F.cross_entropy(model(x), y).backward()
        model(x)  # the next forward applies the weights chosen at the first step
    assert tuner.measured
    assert handle.composer.loss.weights["kd"] == pytest.approx(2.0 * tuner.gate)


def test_a_batch_with_an_ignore_index_still_reaches_the_tuner_masked() -> None:
    """Training labels pass on unchecked (no device sync); the tuner masks the ignored ones."""
    torch.manual_seed(4)
    model, reference_model = _net(), _net()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    y[::4] = -100  # e.g. padding, as F.cross_entropy's default ignore_index
    with _attached(model, reference_model) as (_, tuner):
        F.cross_entropy(model(x), y).backward()
    assert tuner.measured
    kept = y != -100
    with torch.no_grad():
        student, reference = model(x)[kept], reference_model(x)[kept]
    expected = _fit(reference, y[kept]) / _fit(student, y[kept])
    assert tuner.gate == pytest.approx(min(1.0, expected), rel=1e-4)


def test_state_round_trips_and_a_foreign_state_is_refused() -> None:
    tuner = _tuner()
    labels = torch.randint(0, 3, (4,))
    _step(tuner, torch.randn(4, 3), torch.randn(4, 3), labels)
    buffer = io.BytesIO()
    torch.save(tuner.state_dict(), buffer)
    buffer.seek(0)
    resumed = _tuner()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state_dict() == tuner.state_dict()
    before = resumed.state_dict()
    with pytest.raises(ConfigError, match="from state of 'softadapt'"):
        resumed.load_state_dict({"name": "softadapt"})
    with pytest.raises(ConfigError, match="interval"):
        resumed.load_state_dict({**before, "interval": 3})
    assert resumed.state_dict() == before
    older = {key: value for key, value in before.items() if key != "resets"}
    resumed.load_state_dict(older)  # saved before pruning rounds were counted
    assert resumed.state_dict() == before


def test_a_rescale_reads_no_plugin_and_builds_no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path: each rescale reweights the loss it has, with no registry or validation."""
    from labelkeep_plugins import config as config_module
    from labelkeep_plugins import plugins

    tuner = _tuner()

    def refuse(*args, **kwargs):
        raise AssertionError("a rescale read the plugins or revalidated the configuration")

    monkeypatch.setattr(plugins, "collect", refuse)
    monkeypatch.setattr(plugins, "load_plugins", refuse)
    monkeypatch.setattr(config_module, "_checked_weights", refuse)
    torch.manual_seed(2)
    labels = torch.randint(0, 3, (8,))
    for _ in range(2 * UPDATE_INTERVAL + 1):
        _step(tuner, torch.randn(8, 3), 6 * F.one_hot(labels, 3).float(), labels)
    assert 0 < tuner.loss_config().weights["kd"] < 2.0  # it did rescale
