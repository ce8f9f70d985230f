"""The torch-pruning adapter: reference at the pruner's construction, loss after ``step()``."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch_pruning as tp
from labelkeep_torch_pruning import LOSS_DURING_IMPORTANCE_ENV, TorchPruningAdapter
from labelkeep_torch_pruning.adapter import loss_during_importance_from_env
from torch import nn
from torch_pruning.dependency import DependencyGraph, Group
from torch_pruning.pruner import BasePruner

from labelkeep_plugins import (
    Config,
    ConfigError,
    LabelkeepWarning,
    PluginError,
    SnapshotError,
    checksum,
    plugins,
)
from labelkeep_plugins.zero_code import adapters as host_adapters
from labelkeep_plugins.zero_code.exit_notices import EVAL_MODE_START
from labelkeep_plugins.zero_code.instrument import instrument, instrumented, uninstrument

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PATCHED = [
    (BasePruner, "__init__"),
    (BasePruner, "step"),
    (DependencyGraph, "build_dependency"),
    (Group, "prune"),
]
ORIGINALS = {(owner, name): owner.__dict__[name] for owner, name in PATCHED}
PRUNERS = [
    "BasePruner",
    "MetaPruner",
    "MagnitudePruner",
    "BNScalePruner",
    "GroupNormPruner",
    "GrowingRegPruner",
]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.conv2, self.bn2 = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.fc = nn.Linear(8 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        return self.fc(torch.relu(self.bn2(self.conv2(h))).flatten(1))


@pytest.fixture(autouse=True)
def _only_this_adapter(monkeypatch: pytest.MonkeyPatch):
    """Load only this adapter; after each test, torch-pruning must be unpatched again."""
    monkeypatch.setenv("LABELKEEP_PLUGINS", "torch-pruning")
    monkeypatch.delenv(LOSS_DURING_IMPORTANCE_ENV, raising=False)
    plugins.reset_plugins()
    yield
    uninstrument()
    left = [f"{o.__name__}.{n}" for (o, n), f in ORIGINALS.items() if o.__dict__[n] is not f]
    for owner, name in PATCHED:
        setattr(owner, name, ORIGINALS[owner, name])
    assert not left, f"still patched after the test: {left}"


def tiny(seed: int = 0) -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return Tiny(), torch.randn(24, 16), torch.randint(0, 5, (24,))


def build(
    name: str, model: nn.Module, example: torch.Tensor, ratio: float = 0.5, taylor: bool = False
) -> Any:
    importance: Any = tp.importance.GroupMagnitudeImportance(p=2)
    if taylor:
        importance = tp.importance.GroupTaylorImportance()
    elif name == "BNScalePruner":
        importance = tp.importance.BNScaleImportance()
    return getattr(tp.pruner, name)(
        model, example, importance=importance, pruning_ratio=ratio, ignored_layers=[model.fc]
    )


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    *,
    train_mode: bool = True,
    pruner: Any = None,
) -> None:
    """A user's loop; with ``pruner``, sparse training through ``regularize()``."""
    if train_mode:
        model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        if pruner is not None and type(pruner) is not BasePruner:
            pruner.regularize(model)
        optimizer.step()


def with_loss(session: Any, model: nn.Module) -> int:
    stats = session.handle_of(model).stats
    return stats.via_loss_value + stats.via_gradient


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_pruner_class_is_covered() -> None:
    found = {
        n
        for n in dir(tp.pruner)
        if isinstance(getattr(tp.pruner, n), type) and issubclass(getattr(tp.pruner, n), BasePruner)
    }
    assert found == set(PRUNERS)


@pytest.mark.parametrize("name", PRUNERS)
def test_loss_in_every_fine_tuning_step_after_step(name: str) -> None:
    model, x, y = tiny()
    before = copy.deepcopy(model.state_dict())
    with instrumented(Config(tuner="fixed")) as session:
        pruner = build(name, model, x[:2])
        finetune(model, x, y, 2, pruner=pruner)  # sparse training: the loss is held back
        assert session.handle_of(model).stats.forwards == 0
        pruner.step()
        finetune(model, x, y, 5)
        assert with_loss(session, model) == 5
        reference = session.reference_of(model)
        assert same_state(reference.state_dict(), before)
        assert reference.conv1.out_channels == 8 > model.conv1.out_channels
        [record] = session.report()["references"]
    assert record["where"] == "BasePruner.__init__" and record["intact"]


def taylor_run(
    instrument_it: bool, config: Config | None = None
) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """Taylor importance after one train-mode backward: the grads, loss steps, pruned state."""
    model, x, y = tiny()
    context = (
        instrumented(config or Config(tuner="fixed")) if instrument_it else contextlib.nullcontext()
    )
    with context as session:
        pruner = build("MetaPruner", model, x[:2], taylor=True)
        model.train()
        nn.CrossEntropyLoss()(model(x), y).backward()
        grad = model.conv1.weight.grad.clone()
        steps = with_loss(session, model) if session is not None else 0
        pruner.step()
    return grad, steps, copy.deepcopy(model.state_dict())


def test_gradient_importance_sees_only_the_users_loss_by_default() -> None:
    plain_grad, _, plain_pruned = taylor_run(False)
    grad, steps, pruned = taylor_run(True)
    assert steps == 0 and torch.equal(grad, plain_grad) and same_state(pruned, plain_pruned)


def test_loss_during_importance_can_be_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    plain_grad, _, _ = taylor_run(False)
    monkeypatch.setenv(LOSS_DURING_IMPORTANCE_ENV, "1")
    grad, steps, _ = taylor_run(True)
    assert steps == 1 and not torch.equal(grad, plain_grad)


def test_loss_during_importance_from_the_config_file() -> None:
    plain_grad, _, _ = taylor_run(False)
    on = Config(tuner="fixed", adapters={"torch-pruning": {"loss_during_importance": True}})
    grad, steps, _ = taylor_run(True, on)
    assert steps == 1 and not torch.equal(grad, plain_grad)
    strict_typo = Config(
        tuner="fixed", strict=True, adapters={"torch-pruning": {"loss_during_importanc": True}}
    )
    with pytest.raises(ConfigError, match="unknown option"):
        taylor_run(True, strict_typo)


@pytest.mark.parametrize(
    ("value", "expected", "complains"),
    [
        ("", False, False),
        ("0", False, False),
        ("1", True, False),
        ("TRUE", True, False),
        ("off", False, False),
        ("maybe", False, True),
    ],
)
def test_option_values(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
    expected: bool,
    complains: bool,
) -> None:
    monkeypatch.setenv(LOSS_DURING_IMPORTANCE_ENV, value)
    assert loss_during_importance_from_env() is expected
    assert (LOSS_DURING_IMPORTANCE_ENV in capsys.readouterr().err) is complains


def test_interactive_step_opens_the_loss_once_groups_are_pruned() -> None:
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")) as session:
        groups = build("MetaPruner", model, x[:2]).step(interactive=True)
        finetune(model, x, y, 1)
        assert with_loss(session, model) == 0
        for group in groups:
            group.prune()
        finetune(model, x, y, 3)
        assert with_loss(session, model) == 3


def test_interactive_step_counts_as_done_when_exhausted() -> None:
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")) as session:
        pruner = build("MetaPruner", model, x[:2])
        for _group in pruner.step(interactive=True):
            pass  # the user decides to prune nothing this step
        finetune(model, x, y, 2)
        assert with_loss(session, model) == 2 and model.conv1.out_channels == 8


def test_low_level_dependency_graph() -> None:
    model, x, y = tiny()
    before = copy.deepcopy(model.state_dict())
    with instrumented(Config(tuner="fixed")) as session:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:2])
        finetune(model, x, y, 1)
        assert with_loss(session, model) == 0
        graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
        finetune(model, x, y, 2)
        assert with_loss(session, model) == 2
        assert same_state(session.reference_of(model).state_dict(), before)
        [record] = session.report()["references"]
    assert record["where"] == "DependencyGraph.build_dependency"
    assert model.conv1.out_channels == 5


def test_second_pruner_keeps_the_first_reference_and_tracing_is_not_evaluation() -> None:
    model, x, y = tiny()
    original = checksum(model)
    with instrumented(Config(tuner="fixed")) as session:
        build("MetaPruner", model, x[:2], 0.25).step()
        finetune(model, x, y, 2)
        model.eval()
        with torch.no_grad():
            nn.CrossEntropyLoss()(model(x), y)
        handle = session.handle_of(model)
        assert handle.meter.samples == len(y)  # reading the meter counts pending evaluations
        seen = handle.stats.as_dict()
        second = build("MetaPruner", model, x[:2], 0.5)  # traces model(x) in eval mode
        assert handle.meter.samples == len(y) and handle.stats.as_dict() == seen
        finetune(model, x, y, 1)  # importance phase of the second pruner: held back
        second.step()
        finetune(model, x, y, 2)
        assert with_loss(session, model) == 4
        [record] = session.report()["references"]
    assert record["checksum"] == original


def test_warns_once_when_fine_tuning_in_eval_mode(capsys: pytest.CaptureFixture[str]) -> None:
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")) as session:
        pruner = build("MetaPruner", model, x[:2])
        model(x).sum().backward()  # eval-mode backward for importance: not fine-tuning
        pruner.step()
        finetune(model, x, y, 3, train_mode=False)  # forgot model.train()
        assert with_loss(session, model) == 0
        warning, silence = session.report()["warnings"]
    assert warning.startswith("torch-pruning: ") and "Call model.train()" in warning
    # and at exit, how many backwards the loss missed (the specific cause of "no step trained")
    assert silence.startswith(f"{EVAL_MODE_START} 3 backward pass(es) ran through")
    assert capsys.readouterr().err.count("Call model.train()") == 1


def test_no_warning_when_fine_tuning_in_train_mode(capsys: pytest.CaptureFixture[str]) -> None:
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")):
        build("MetaPruner", model, x[:2]).step()
        finetune(model, x, y, 2)
        model.eval()
        finetune(model, x, y, 1, train_mode=False)  # after a train-mode step the watch is off
    assert "model.train()" not in capsys.readouterr().err


def test_pruned_model_can_be_counted_copied_and_saved() -> None:
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")) as session:
        build("MetaPruner", model, x[:2]).step()
        _, params = tp.utils.count_ops_and_params(model, x[:2])  # deep-copies the model
        clone = copy.deepcopy(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        forwards = session.handle_of(model).stats.forwards
        finetune(clone, x, y, 1)
        loaded(x)
        assert session.handle_of(model).stats.forwards == forwards  # copies run no reference
        finetune(model, x, y, 1)
        assert with_loss(session, model) == 1
    assert params == sum(p.numel() for p in model.parameters())


def test_uninstrument_restores_identity() -> None:
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")):
        assert all(o.__dict__[n] is not ORIGINALS[o, n] for o, n in PATCHED)
        build("GroupNormPruner", model, x[:2]).step()
        finetune(model, x, y, 1)
    assert all(o.__dict__[n] is ORIGINALS[o, n] for o, n in PATCHED)
    assert tp.pruner.MetaPruner is BasePruner and not model._forward_hooks


def test_out_of_range_version_is_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = host_adapters.version
    monkeypatch.setattr(
        host_adapters, "version", lambda name: "1.7.0" if name == "torch-pruning" else real(name)
    )
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")) as session:
        assert BasePruner.__dict__["__init__"] is ORIGINALS[BasePruner, "__init__"]
        build("MetaPruner", model, x[:2]).step()
        finetune(model, x, y, 2)
        report = session.report()
    assert report["references"] == [] and report["training_steps_with_loss"] == 0
    assert report["adapters"][0]["state"] == "skipped"
    lines = [line for line in capsys.readouterr().err.splitlines() if "torch-pruning" in line]
    assert len(lines) == 1 and "1.7.0" in lines[0]
    with pytest.raises(PluginError, match=r"1\.7\.0"):
        instrument(Config(tuner="fixed", strict=True))


def test_failing_install_leaves_the_script_running(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: TorchPruningAdapter, session: Any) -> None:
        raise RuntimeError("install exploded")

    monkeypatch.setattr(TorchPruningAdapter, "install", explode)
    model, x, y = tiny()
    with instrumented(Config(tuner="fixed")) as session:
        build("MetaPruner", model, x[:2]).step()
        finetune(model, x, y, 2)
        report = session.report()
    assert any("install exploded" in failure for failure in report["failures"])
    assert report["adapters"][0]["state"] == "failed" and report["references"] == []


def test_install_failing_part_way_undoes_its_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: TorchPruningAdapter, owner: type) -> None:
        raise RuntimeError("half-way")

    monkeypatch.setattr(TorchPruningAdapter, "_wrap_group_prune", explode)
    with instrumented(Config(tuner="fixed")) as session:
        assert all(o.__dict__[n] is ORIGINALS[o, n] for o, n in PATCHED)
        assert any("half-way" in failure for failure in session.report()["failures"])


class Locked(Tiny):
    """A model that cannot be deep-copied (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def test_snapshot_failure_does_not_stop_pruning(capsys: pytest.CaptureFixture[str]) -> None:
    _, x, y = tiny()
    model = Locked()
    with instrumented(Config(tuner="fixed")) as session:
        build("MetaPruner", model, x[:2]).step()
        finetune(model, x, y, 2)
        report = session.report()
    assert model.conv1.out_channels == 4 and report["references"] == []
    assert any("SnapshotError" in failure for failure in report["failures"])
    with instrumented(Config(tuner="fixed", strict=True)), pytest.raises(SnapshotError):
        build("MetaPruner", Locked(), x[:2])


def test_wrapper_on_top_is_left_in_place() -> None:
    model, x, y = tiny()
    with pytest.warns(LabelkeepWarning, match="step"), instrumented(Config(tuner="fixed")):
        ours = BasePruner.step

        def other_library(self: Any, *args: Any, **kwargs: Any) -> Any:
            return ours(self, *args, **kwargs)

        BasePruner.step = other_library
    assert BasePruner.__dict__["step"] is other_library
    assert BasePruner.__dict__["__init__"] is ORIGINALS[BasePruner, "__init__"]
    build("MetaPruner", model, x[:2]).step()  # labelkeep's step now passes calls through
    finetune(model, x, y, 1)
    assert model.conv1.out_channels == 4 and not model._forward_hooks
    BasePruner.step = ORIGINALS[BasePruner, "step"]


def test_plugin_import_does_not_import_torch_pruning() -> None:
    code = "import sys, labelkeep_torch_pruning; print('torch_pruning' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def run_under_labelkeep(command: list[str], cwd: Path, timeout: int) -> None:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    runner = str(Path(sys.executable).parent / "labelkeep-run")
    result = subprocess.run(
        [runner, "--report", str(cwd / "report.json"), *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_example_under_the_runner(tmp_path: Path) -> None:
    before = tmp_path / "before.pt"
    run_under_labelkeep(
        [
            sys.executable,
            str(SCRIPTS / "tp_example_before.py"),
            str(before),
            "--pretrain-epochs",
            "2",
            "--epochs",
            "1",
        ],
        tmp_path,
        timeout=240,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    spec = importlib.util.spec_from_file_location(
        "tp_example", ROOT / "examples" / "torch_pruning_mnist1d.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    unpruned = example.Net()
    unpruned.load_state_dict(torch.load(before, weights_only=True))
    [record] = report["references"]
    assert record["checksum"] == checksum(unpruned) and record["intact"]
    assert record["where"] == "BasePruner.__init__" and report["reference_intact"]
    assert report["training_steps_with_loss"] == 63  # ceil(4000 / 64) batches, one epoch
    assert report["agreement"]["labelled"] == 1000 and report["failures"] == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_torchrun_example_reports_per_rank(tmp_path: Path) -> None:
    run_under_labelkeep(
        [
            "torchrun",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(ROOT / "examples" / "torchrun_torch_pruning.py"),
            "--pretrain-epochs",
            "1",
            "--epochs",
            "1",
        ],
        tmp_path,
        timeout=240,
    )
    reports = [json.loads((tmp_path / f"report.rank{rank}.json").read_text()) for rank in (0, 1)]
    checksums = {r["checksum"] for report in reports for r in report["references"]}
    assert len(checksums) == 1 and all(len(report["references"]) == 1 for report in reports)
    for report in reports:
        assert report["reference_intact"] and report["failures"] == []
        assert report["training_steps_with_loss"] == 32  # 2000 samples per rank, batches of 64
        assert report["agreement"]["labelled"] == 500


def test_the_eval_mode_watch_follows_a_reattached_model() -> None:
    """Trained in train mode on the old handle: an eval-mode backward on the new one is quiet;
    not trained yet: the new handle's first eval-mode backward is said, once."""
    from labelkeep_torch_pruning.recovery import EVAL_MODE_MESSAGE, EvalModeWatch

    from labelkeep_plugins import attach, snapshot_reference

    def eval_backward(model: nn.Module) -> None:
        model.eval()
        model(torch.randn(4, 3)).sum().backward()

    for trained_first, expected in ((True, []), (False, [EVAL_MODE_MESSAGE])):
        model = nn.Sequential(nn.Linear(3, 2))
        said: list[str] = []
        first = attach(model, snapshot_reference(model))
        watch = EvalModeWatch(first, said.append, contextlib.nullcontext)
        if trained_first:
            model.train()
            model(torch.randn(4, 3)).sum().backward()
        first.detach()
        second = attach(model, snapshot_reference(model))
        watch.follow(second)
        eval_backward(model)
        eval_backward(model)
        second.detach()
        assert said == expected


def test_each_step_of_an_iterative_schedule_closes_the_catchup_gate() -> None:
    """Pruning, fine-tuning, pruning again: the gate measured before no longer applies."""
    model, x, y = tiny()
    with instrumented(Config()) as session:
        pruner = tp.pruner.MetaPruner(
            model,
            x[:2],
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            iterative_steps=2,
            ignored_layers=[model.fc],
        )
        pruner.step()
        finetune(model, x, y, 3)
        tuner = session.tuner
        assert tuner.measured
        pruner.step()
        assert not tuner.measured and tuner.loss_config().weights["kd"] == 0.0
        finetune(model, x, y, 2)
    assert [entry["step"] for entry in tuner.trajectory] == [1, 4]
