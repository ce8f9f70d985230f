"""NNI adapter: the known NNI defects are worked around or reported in one clear line."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from labelkeep_plugins import Config
from labelkeep_plugins.zero_code.instrument import instrumented

SCRIPTS = Path(__file__).parent / "scripts"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"labelkeep_tests_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


user = load_script("nni_user_script")


def nni_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("labelkeep: nni: ")]


def one_shot_pruned(session_model: nn.Module | None = None):
    """An L1-norm pruned, unwrapped model and its masks (NNI's one-shot flow)."""
    model = session_model if session_model is not None else user.pretrained()
    pruner = user.L1NormPruner(model, user.CONV)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return model, masks


def test_modelspeedup_fails_plain_on_this_torch_and_works_under_labelkeep(capfd) -> None:
    from nni.compression.speedup import ModelSpeedup

    model, masks = one_shot_pruned()
    with pytest.raises(AttributeError, match="startswith"):  # NNI's concrete tracer, torch 2.13
        ModelSpeedup(model, user.X[:4], masks)
    capfd.readouterr()
    with instrumented(Config()):
        model, masks = one_shot_pruned()
        assert ModelSpeedup(model, user.X[:4], masks).speedup_model() is model
        assert model.conv1.out_channels == 4
    lines = nni_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "graph_module=torch.fx.symbolic_trace(model)" in lines[0]


class Branchy(user.Net):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if bool(out.sum() > 0) else -out


def test_modelspeedup_explains_when_torch_fx_cannot_trace_either(capfd) -> None:
    from nni.compression.speedup import ModelSpeedup

    with instrumented(Config()):
        model, masks = one_shot_pruned(Branchy())
        with pytest.raises(AttributeError, match="startswith"):  # NNI's own error surfaces
            ModelSpeedup(model, user.X[:4], masks)
    lines = nni_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "torch.fx.symbolic_trace cannot trace Branchy" in lines[0]


def test_agp_inner_pruner_without_evaluator_is_reported(capfd) -> None:
    with instrumented(Config()) as session:
        model = user.pretrained()
        evaluator = user.make_evaluator(model)
        pruner = user.AGPPruner(user.L1NormPruner(model, user.CONV), 2, 2, evaluator=evaluator)
        pruner.compress(4, None)
        assert session.handle_of(model).stats.via_loss_value == 4
    lines = nni_lines(capfd.readouterr().err)
    assert len(lines) == 1
    assert "AGPPruner: conv1.weight, conv1.bias, conv2.weight, conv2.bias are missing" in lines[0]
    assert "L1NormPruner(model, config_list, evaluator)" in lines[0]


@pytest.mark.parametrize("case", ["evaluator-to-inner-pruner", "user-trains-only-fc"])
def test_no_optimizer_warning_without_the_defect(case: str, capfd) -> None:
    with instrumented(Config()):
        model = user.pretrained()
        if case == "evaluator-to-inner-pruner":
            inner = user.L1NormPruner(model, user.CONV, user.make_evaluator(model))
            user.AGPPruner(inner, 2, 2).compress(4, None)
        else:
            evaluator = user.make_evaluator(model, parameters=model.fc.parameters())
            user.TaylorPruner(model, user.CONV, evaluator, training_steps=2).compress()
    assert nni_lines(capfd.readouterr().err) == []


def finetune(model: nn.Module, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(user.X[:16]), user.Y[:16]).backward()
        optimizer.step()


def reapply_with_mul(model: nn.Module, masks) -> None:
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                getattr(model.get_submodule(name), target).mul_(mask)


def reapply_with_torch_prune(model: nn.Module, masks) -> None:
    for name, targets in masks.items():
        for target, mask in targets.items():
            torch.nn.utils.prune.custom_from_mask(model.get_submodule(name), target, mask)


def speed_up(model: nn.Module, masks) -> None:
    from nni.compression.speedup import ModelSpeedup

    ModelSpeedup(model, user.X[:4], masks).speedup_model()


@pytest.mark.parametrize(
    ("after_unwrap", "warned"),
    [
        (None, True),
        (reapply_with_mul, True),
        (reapply_with_torch_prune, False),
        (speed_up, False),
    ],
)
def test_masks_that_regrow_after_unwrap_are_reported(after_unwrap, warned: bool, capfd) -> None:
    with instrumented(Config()) as session:
        model, masks = one_shot_pruned()
        if after_unwrap is not None:
            after_unwrap(model, masks)
        capfd.readouterr()
        finetune(model)
        assert not model._forward_pre_hooks  # the watch removed itself
        assert session.handle_of(model).stats.via_loss_value == 3
    lines = [line for line in nni_lines(capfd.readouterr().err) if "unwrap_model()" in line]
    assert len(lines) == int(warned)
    if warned:
        assert "conv1.weight (" in lines[0] and "custom_from_mask" in lines[0]


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = user.Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_training_that_bypasses_the_bound_model_is_reported(capfd) -> None:
    def training_step(batch, model):
        x, y = batch
        return nn.functional.cross_entropy(model.net(x), y)  # not model(x)

    with instrumented(Config()):
        model = Outer()
        evaluator = user.make_evaluator(model)
        evaluator._ori_training_step = evaluator._training_step = training_step
        config = [{"op_names": ["net.conv1"], "sparse_ratio": 0.5}]
        user.TaylorPruner(model, config, evaluator, training_steps=2).compress()
    lines = nni_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "saw no training forward of Outer" in lines[0]


def test_lightning_max_steps_shim() -> None:
    pytest.importorskip("pytorch_lightning")
    from nni.compression.utils import evaluator

    if not evaluator.LIGHTNING_INSTALLED:
        pytest.skip("NNI did not see pytorch_lightning")
    from pytorch_lightning.loops.fit_loop import _FitLoop

    original = _FitLoop.__dict__["max_steps"]
    with instrumented(Config()):
        loop = type("Loop", (), {"epoch_loop": type("Epoch", (), {"max_steps": -1})()})()
        _FitLoop.max_steps.fset(loop, 7)
        assert loop.epoch_loop.max_steps == 7
    assert _FitLoop.__dict__["max_steps"] is original


def test_transformers_shims_are_applied_and_removed() -> None:
    pytest.importorskip("transformers")
    from nni.compression.utils import evaluator

    if not evaluator.TRANSFORMERS_INSTALLED:
        pytest.skip("NNI did not see transformers")
    cls = evaluator.TransformersEvaluator
    before = {name: cls.__dict__[name] for name in ("patch_loss", "patch_optimizer_step")}
    with instrumented(Config()):
        assert cls.__dict__["patch_optimizer_step"] is not before["patch_optimizer_step"]
    assert all(cls.__dict__[name] is value for name, value in before.items())
