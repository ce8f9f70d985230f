"""NNI adapter, in process: every evaluator-driven compressor, and the user's loop after it.

The user side is tests/adapters/scripts/nni_user_script.py (written as NNI's docs
show); these tests import it and run it under ``instrumented()``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins import Config, checksum
from labelkeep_plugins.config import FocalConfig, LossConfig
from labelkeep_plugins.zero_code.instrument import instrumented

SCRIPTS = Path(__file__).parent / "scripts"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"labelkeep_tests_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


user = load_script("nni_user_script")


def nni_attributes() -> dict[str, Any]:
    """Every attribute the adapter may patch, as stored on its class right now."""
    from nni.compression.base.compressor import Compressor, Pruner
    from nni.compression.speedup.model_speedup import ModelSpeedup
    from nni.compression.utils import evaluator

    found = {
        f"Compressor.{n}": Compressor.__dict__.get(n)
        for n in ("__init__", "compress", "_fusion_compress", "unwrap_model")
    }
    found["Pruner.update_masks"] = Pruner.__dict__.get("update_masks")
    for cls_name in (
        "TorchEvaluator",
        "LightningEvaluator",
        "TransformersEvaluator",
        "DeepspeedTorchEvaluator",
    ):
        cls = getattr(evaluator, cls_name)
        for name in (
            "bind_model",
            "unbind_model",
            "patch_loss",
            "patch_optimizer_step",
            "_init_optimizer_helpers",
            "train",
        ):
            found[f"{cls_name}.{name}"] = cls.__dict__.get(name)
    found["ModelSpeedup.__init__"] = ModelSpeedup.__dict__["__init__"]
    found["ModelSpeedup.speedup_model"] = ModelSpeedup.__dict__["speedup_model"]
    return found


def explicit_loss(
    out: torch.Tensor, reference_out: torch.Tensor, y: torch.Tensor, config: Config
) -> torch.Tensor:
    """CE + kd * KD(T) + hinge * hinge, with focal weights when configured, by hand."""
    weights, t, focal = config.loss.weights, config.loss.temperature, config.loss.focal
    ce = -F.log_softmax(out, dim=1).gather(1, y[:, None]).squeeze(1).mean()
    log_p = F.log_softmax(out / t, dim=1)
    log_q = F.log_softmax(reference_out / t, dim=1)
    kd = (log_q.exp() * (log_q - log_p)).sum(dim=1) * t * t
    right = (reference_out.argmax(1) == y).float()
    scale = 1.0 if focal is None else focal.base + focal.scale * right
    label = reference_out.argmax(1)
    own = out.gather(1, label[:, None]).squeeze(1)
    rival = torch.stack(
        [torch.cat([row[:c], row[c + 1 :]]).max() for row, c in zip(out, label, strict=True)]
    )
    hinge = (1.0 - (own - rival)).clamp(min=0)
    teacher = weights["kd"] * kd + weights.get("hinge", 0.0) * hinge
    return weights["ce"] * ce + (teacher * scale).mean()


def assert_gradient_is_explicit(
    model: nn.Module, loss: torch.Tensor, reference: nn.Module, config: Config
) -> None:
    """The gradient of the loss the user backpropagates equals the explicit combined loss's."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        reference_out = reference(user.LAST["x"])
    explicit = explicit_loss(user.LAST["out"], reference_out, user.LAST["y"], config)
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(explicit, params, retain_graph=True, allow_unused=True)
    plain = torch.autograd.grad(
        F.cross_entropy(user.LAST["out"].clone(), user.LAST["y"]),
        params,
        retain_graph=True,
        allow_unused=True,
    )
    pairs = [(g, w, c) for g, w, c in zip(got, want, plain, strict=True) if g is not None]
    assert pairs
    assert max(float((g - w).abs().max()) for g, w, _ in pairs) < 1e-5
    assert max(float((g - c).abs().max()) for g, _, c in pairs) > 1e-4  # the loss did change


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    user.STEPS.update(nni=0, own=0)


@pytest.mark.parametrize("name", sorted(user.COMPRESSORS))
def test_loss_is_active_in_every_nni_training_step(name: str) -> None:
    build, compress_args, first_class = user.COMPRESSORS[name]
    before = nni_attributes()
    model = user.pretrained()
    pristine = checksum(model)
    with instrumented(Config(tuner="fixed")) as session:
        assert session.adapters["nni"].state == "active"
        build(model, user.make_evaluator(model)).compress(*compress_args)
        handle = session.handle_of(model)
        assert handle is not None
        reference = session.reference_of(model)
        assert checksum(reference) == pristine
        assert checksum(model) != pristine
        report = session.report()
    assert user.STEPS["nni"] >= 3
    assert handle.stats.training_forwards == user.STEPS["nni"]
    assert report["loss_paths"] == {"loss_value": user.STEPS["nni"], "gradient": 0, "framework": 0}
    assert [r["where"] for r in report["references"]] == [f"{first_class}.__init__"]
    assert report["reference_intact"] is True
    assert checksum(reference) == pristine
    after = nni_attributes()
    assert all(after[key] is value for key, value in before.items())
    assert not model._forward_hooks and not model._forward_pre_hooks


WITH_HINGE = LossConfig(
    weights={"ce": 1.0, "kd": 1.0, "hinge": 0.5}, temperature=4.0, focal=FocalConfig(1.0, 2.0)
)


@pytest.mark.parametrize("loss", [LossConfig(), WITH_HINGE], ids=["default", "hinge_focal"])
def test_nni_driven_step_is_exact_and_counted_once(loss: LossConfig) -> None:
    config = Config(loss=loss, tuner="fixed")
    checked: list[bool] = []
    model = user.pretrained()

    def training(model, optimizers, training_step, *rest: Any, **kw: Any) -> None:
        def on_loss(loss: torch.Tensor) -> None:
            if not checked:
                assert_gradient_is_explicit(model, loss, session.reference_of(model), config)
                checked.append(True)

        user.training_func(model, optimizers, training_step, *rest, on_loss=on_loss, **kw)

    with instrumented(config) as session:
        pruner = user.TaylorPruner(
            model, user.CONV, user.make_evaluator(model, training), training_steps=3
        )
        pruner.compress()
        handle = session.handle_of(model)
        assert handle.stats.via_loss_value == user.STEPS["nni"] == 3
    assert checked == [True]


def test_each_scheduled_pruning_round_closes_the_catchup_gate() -> None:
    """AGP updates the masks every 2 of NNI's steps: each next step is measured alone."""
    model = user.pretrained()
    with instrumented(Config()) as session:
        inner = user.TaylorPruner(model, user.CONV, user.make_evaluator(model), training_steps=2)
        user.AGPPruner(inner, 2, 3).compress(6, None)
        tuner = session.tuner
    assert user.STEPS["nni"] == tuner.steps == 6
    assert tuner.resets == 3
    assert [entry["step"] for entry in tuner.trajectory] == [1, 3, 5]


def test_a_one_shot_pruner_without_training_changes_no_gate() -> None:
    model = user.pretrained()
    with instrumented(Config()) as session:
        user.L1NormPruner(model, user.CONV).compress()
        assert session.handle_of(model) is not None
        assert session.tuner.resets == 0


def test_users_own_finetuning_after_compress_and_speedup_gets_the_loss_once() -> None:
    from nni.compression.speedup import ModelSpeedup

    config = Config(tuner="fixed")
    model = user.pretrained()
    with instrumented(config) as session:
        pruner = user.TaylorPruner(model, user.CONV, user.make_evaluator(model), training_steps=3)
        _, masks = pruner.compress()
        handle = session.handle_of(model)
        pruner.unwrap_model()
        result = ModelSpeedup(model, user.X[:4], masks).speedup_model()  # plain, as NNI's docs
        assert result is model and model.conv1.out_channels == 4
        assert session.handle_of(model) is handle
        user.own_finetune(model, steps=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        optimizer.zero_grad()
        loss = user.training_step((user.X[:16], user.Y[:16]), model)
        assert_gradient_is_explicit(model, loss, session.reference_of(model), config)
        loss.backward()
        user.evaluating_func(model)
        agreement = session.report()["agreement"]
        user.QATQuantizer(model, user.QUANT, user.make_evaluator(model)).compress(2, None)
        assert session.handle_of(model) is handle
        report = session.report()
    assert agreement["samples"] == len(user.Y)
    # NNI's 3 Taylor steps, the user's 3, then NNI's 2 QAT steps: each got the loss once
    assert report["loss_paths"] == {"loss_value": 3 + 3 + 2, "gradient": 0, "framework": 0}
    assert [r["where"] for r in report["references"]] == ["TaylorPruner.__init__"]
    assert report["reference_intact"] is True


def test_a_distiller_trains_with_its_own_loss_only() -> None:
    from nni.compression.distillation import DynamicLayerwiseDistiller

    model = user.pretrained()
    with instrumented(Config(tuner="fixed")) as session:
        pruner = user.L1NormPruner(model, user.CONV)
        pruner.compress()
        handle = session.handle_of(model)
        teacher = user.pretrained(seed=1)
        config_list = [{"op_names": ["fc"], "lambda": 0.5, "apply_method": "mse"}]
        distiller = DynamicLayerwiseDistiller(
            model,
            config_list,
            user.make_evaluator(model),
            teacher,
            teacher_predict=lambda batch, teacher: teacher(batch[0]),
        )
        distiller.compress(max_steps=2, max_epochs=None)
        assert user.STEPS["nni"] == 2
        assert handle.stats.training_forwards == 0
        assert [r["where"] for r in session.report()["references"]] == ["L1NormPruner.__init__"]
