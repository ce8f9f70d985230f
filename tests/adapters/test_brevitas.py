"""The Brevitas adapter: reference before quantization, exact loss in QAT, PTQ untouched."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

brevitas = pytest.importorskip("brevitas")
labelkeep_brevitas = pytest.importorskip("labelkeep_brevitas")

import brevitas.graph.calibrate as calibrate  # noqa: E402
import brevitas.graph.equalize as equalize  # noqa: E402
import brevitas.graph.gpxq as gpxq  # noqa: E402
import brevitas.graph.quantize as bq  # noqa: E402
import brevitas.nn as qnn  # noqa: E402
from brevitas.fx import symbolic_trace  # noqa: E402
from brevitas.graph.calibrate import bias_correction_mode, calibration_mode  # noqa: E402
from brevitas.graph.gptq import gptq_mode  # noqa: E402
from brevitas.graph.quantize import (  # noqa: E402  (imported before instrument(), by name)
    layerwise_quantize,
    preprocess_for_quantize,
    quantize,
)
from brevitas.nn.mixin.base import QuantLayerMixin  # noqa: E402
from torch.nn.modules import module as torch_module  # noqa: E402

from labelkeep_plugins import Config, LabelkeepWarning, PluginError, checksum  # noqa: E402
from labelkeep_plugins.loss.composer import LossComposer  # noqa: E402
from labelkeep_plugins.zero_code import adapters as host_adapters  # noqa: E402
from labelkeep_plugins.zero_code.instrument import instrumented, uninstrument  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:brevitas", "ignore::FutureWarning")

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
X = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(3))
Y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(4))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class QuantNet(nn.Module):
    """Hand-built: no float model exists."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=3)
        self.relu = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(4 * 36, 5, bias=True, weight_bit_width=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(self.inp(x))).flatten(1))

    def float_function(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(F.conv2d(x, self.conv.weight, self.conv.bias, padding=1))
        return F.linear(hidden.flatten(1), self.fc.weight, self.fc.bias)


def pretrained() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.train()(X * 2 + 0.5)  # non-trivial batch-norm statistics to merge
    return model.eval()


def quantize_flow(model: nn.Module, flow: str) -> nn.Module:
    if flow == "layerwise":
        return layerwise_quantize(model)
    if flow == "layerwise-module-attribute":
        return bq.layerwise_quantize(model)
    if flow == "fx":
        return quantize(preprocess_for_quantize(model))
    if flow == "fx-module-attribute":
        return bq.quantize(bq.preprocess_for_quantize(model))
    if flow == "fx-quantize-only":  # the user traces and quantizes without preprocessing
        return quantize(symbolic_trace(model))
    if flow == "fx-untraced":  # the user traces; preprocess_for_quantize(trace_model=False)
        return quantize(preprocess_for_quantize(symbolic_trace(model), trace_model=False))
    raise ValueError(flow)


def calibrate_on(model: nn.Module) -> None:
    with torch.no_grad(), calibration_mode(model):
        model(X)


def qat_steps(model: nn.Module, steps: int, lr: float = 0.05) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(model(X), Y).backward()
        optimizer.step()


def reference_output(session, model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return session.reference_of(model)(X)


WHERE = {
    "layerwise": ("layerwise_quantize: before layerwise_layer_handler", "SmallCNN"),
    "fx": ("preprocess_for_quantize: before symbolic_trace", "SmallCNN"),
    "fx-untraced": (
        "preprocess_for_quantize(trace_model=False): before TorchFunctionalToModule",
        "SmallCNN",
    ),  # a traced GraphModule's class takes the traced model's name
    "fx-quantize-only": ("quantize: before inp_placeholder_handler", "SmallCNN"),
}


@pytest.mark.parametrize(
    "flow",
    [
        "layerwise",
        "layerwise-module-attribute",
        "fx",
        "fx-module-attribute",
        "fx-untraced",
        "fx-quantize-only",
    ],
)
def test_reference_is_the_float_model_before_quantization(flow: str) -> None:
    model = pretrained()
    with torch.no_grad():
        before = model(X)
    before_checksum = checksum(model)
    with instrumented(Config(tuner="fixed")) as session:
        student = quantize_flow(model, flow)
        assert session.handle_of(student) is not None, "the quantized model is attached"
        assert torch.equal(reference_output(session, student), before)
        [record] = session.report()["references"]
        assert record["checksum"] == before_checksum
        assert (record["where"], record["model"]) == WHERE[flow.replace("-module-attribute", "")]
        calibrate_on(student)
        qat_steps(student, 3)
        report = session.report()
        assert report["training_steps_with_loss"] == 3
        assert report["reference_intact"] is True
        assert torch.equal(reference_output(session, student), before)
        with torch.no_grad():
            assert not torch.equal(student.eval()(X), before)


def test_preprocess_corrupts_the_original_which_is_why_the_reference_is_a_copy() -> None:
    model = pretrained()
    with torch.no_grad():
        before = model(X)
    with instrumented(Config(tuner="fixed")) as session:
        student = quantize(preprocess_for_quantize(model))
        with torch.no_grad():
            assert (model(X) - before).abs().max() > 1e-3  # BN merged into the shared convs
        assert torch.equal(reference_output(session, student), before)


def _explicit_gradients(plain, reference, loss_of, config: Config, targets):
    plain.zero_grad()
    logits = plain(X)
    with torch.no_grad():
        reference_logits = reference(X)
    composer = LossComposer(config.loss)
    extra, _values = composer.extra_per_sample(logits, reference_logits, targets)
    (composer.ground_truth_weight * loss_of(logits) + extra.mean()).backward()
    return {name: p.grad.clone() for name, p in plain.named_parameters() if p.grad is not None}


# The loss-value path sees the labels (focal weights use them); the gradient path, taken for a
# loss labelkeep does not recognise, does not (focal weights fall back to their base).
LOSSES = {
    "cross_entropy": (lambda logits: F.cross_entropy(logits, Y), Y),
    "custom": (lambda logits: -(logits.log_softmax(1) * F.one_hot(Y, 5)).sum(1).mean(), None),
}


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("flow", ["layerwise", "fx"])
def test_qat_gradients_equal_the_explicit_combined_loss(flow: str, loss_name: str) -> None:
    loss_of, targets = LOSSES[loss_name]
    config = Config(
        tuner="fixed", loss={"weights": {"ce": 0.5, "kd": 1.0, "hard": 0.3}, "temperature": 3.0}
    )
    model = pretrained()
    plain = quantize_flow(copy.deepcopy(model), flow)  # the same QAT model, without labelkeep
    calibrate_on(plain)
    with instrumented(config) as session:
        student = quantize_flow(model, flow)
        calibrate_on(student)
        student.train()
        plain.train()
        student.zero_grad()
        loss_of(student(X)).backward()
        handle = session.handle_of(student)
        path = "via_loss_value" if loss_name == "cross_entropy" else "via_gradient"
        assert getattr(handle.stats, path) == 1
        reference = session.reference_of(student)
        expected = _explicit_gradients(plain, reference, loss_of, config, targets)
    got = {name: p.grad for name, p in student.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    scales = [name for name in got if "scaling_impl" in name]
    assert scales and all(got[name].abs().sum() > 0 for name in scales), scales
    assert any(name.endswith("weight") for name in got)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def _ptq(model: nn.Module) -> None:
    calibrate_on(model)
    with torch.no_grad(), bias_correction_mode(model):
        model(X)
    with torch.no_grad(), gptq_mode(model) as gptq:
        for _ in range(gptq.num_layers):
            gptq.model(X)
            gptq.update()


def test_ptq_algorithms_are_untouched() -> None:
    model = pretrained()
    plain = layerwise_quantize(copy.deepcopy(model))
    _ptq(plain)
    with instrumented(Config(tuner="fixed")) as session:
        student = layerwise_quantize(model)
        handle = session.handle_of(student)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _ptq(student)
        assert not [w for w in caught if "Hooks detected" in str(w.message)]
        assert handle.stats.forwards == 0, "PTQ forwards are not seen by the injector"
        assert session.report()["agreement"] is None
        assert session.report()["training_steps_with_loss"] == 0
    plain_state, student_state = plain.state_dict(), student.state_dict()
    assert plain_state.keys() == student_state.keys()
    for key, value in plain_state.items():
        assert torch.equal(value, student_state[key]), key


def test_hand_built_model_gets_a_quant_disabled_reference() -> None:
    with instrumented(Config(tuner="fixed")) as session:
        watcher = session_adapter(session).handbuilt
        torch.manual_seed(0)
        model = QuantNet()
        assert watcher.hooked and watcher.pending == 4
        with torch.no_grad():
            float_before = model.float_function(X)
        qat_steps(model, 1)
        assert session.handle_of(model) is not None
        assert not watcher.hooked, "the global hook goes once nothing is pending"
        [record] = session.report()["references"]
        assert record["model"] == "QuantNet" and "hand-built" in record["where"]
        assert torch.equal(reference_output(session, model), float_before)
        with torch.no_grad():
            assert not torch.allclose(model.eval()(X), float_before, atol=1e-3)  # it is quantized
        qat_steps(model, 3)
        report = session.report()
        assert report["training_steps_with_loss"] == 4
        assert report["reference_intact"] is True
        assert torch.equal(reference_output(session, model), float_before)


class Wrapper(nn.Module):
    """A model whose hand-built block is called from its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.block = QuantNet()
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


def test_the_outermost_model_is_claimed_not_its_blocks() -> None:
    with instrumented(Config(tuner="fixed")) as session:
        model = Wrapper()
        model.train()
        nn.CrossEntropyLoss()(model(X), Y % 3).backward()
        assert session.handle_of(model) is not None
        assert session.handle_of(model.block) is None
        assert session.report()["training_steps_with_loss"] == 1


class Uncopyable(Wrapper):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()  # deepcopy fails: no reference can be taken


def test_a_model_that_cannot_be_copied_is_reported_and_its_blocks_left_alone(capsys) -> None:
    with instrumented(Config(tuner="fixed")) as session:
        model = Uncopyable()
        for _ in range(2):
            nn.CrossEntropyLoss()(model.train()(X), Y % 3).backward()
        assert session.handle_of(model) is None and session.handle_of(model.block) is None
        [failure] = session.report()["failures"]
        assert failure.startswith("brevitas: SnapshotError")
    assert capsys.readouterr().err.count("SnapshotError") == 1


def test_eval_and_no_grad_forwards_do_not_claim() -> None:
    with instrumented(Config(tuner="fixed")) as session:
        model = QuantNet()
        calibrate_on(model)
        with torch.no_grad():
            model.train()(X)
        model.eval()(X)
        assert session.handle_of(model) is None
        assert session_adapter(session).handbuilt.hooked


def test_copies_of_an_attached_student_carry_no_injector() -> None:
    with instrumented(Config(tuner="fixed")) as session:
        student = layerwise_quantize(pretrained())
        clone = copy.deepcopy(student)  # e.g. a best-checkpoint copy, or gpxq_mode(inplace=False)
        qat_steps(clone, 1)
        assert session.report()["training_steps_with_loss"] == 0
        qat_steps(student, 1)
        assert session.report()["training_steps_with_loss"] == 1


def test_frozen_quant_layers_warn_at_the_first_training_forward() -> None:
    with instrumented(Config(tuner="fixed")) as _session:
        student = layerwise_quantize(pretrained())
        student.conv.weight.requires_grad_(False)  # what learned round leaves behind
        with pytest.warns(LabelkeepWarning, match="requires_grad=False"):
            qat_steps(student, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", LabelkeepWarning)
            qat_steps(student, 1)  # once only


def patched_attributes() -> dict[str, object]:
    return {
        **{
            f"quantize.{n}": vars(bq)[n]
            for n in (
                "symbolic_trace",
                "inp_placeholder_handler",
                "layerwise_layer_handler",
                "TorchFunctionalToModule",
                "DisableLastReturnQuantTensor",
            )
        },
        **{
            f"{cls.__name__}.{n}": vars(cls).get(n)
            for cls in (
                calibrate.calibration_mode,
                calibrate.bias_correction_mode,
                gpxq.gpxq_mode,
                equalize.activation_equalization_mode,
            )
            for n in ("__enter__", "__exit__")
        },
        "QuantLayerMixin.__init__": vars(QuantLayerMixin).get("__init__"),
    }


def test_uninstrument_restores_every_attribute_by_identity() -> None:
    before = patched_attributes()
    global_hooks = dict(torch_module._global_forward_pre_hooks)
    with instrumented(Config(tuner="fixed")) as session:
        assert session.adapters["brevitas"].state == "active"
        during = patched_attributes()
        assert all(during[name] is not before[name] for name in before), [
            name for name in before if during[name] is before[name]
        ]
        QuantNet()  # leaves the global hook installed
        assert dict(torch_module._global_forward_pre_hooks) != global_hooks
    after = patched_attributes()
    assert all(after[name] is before[name] for name in before)
    assert dict(torch_module._global_forward_pre_hooks) == global_hooks


def session_adapter(session):
    from labelkeep_plugins.zero_code import instrument as instrumentation

    [adapter] = [a for a in instrumentation._instrumented if a.name == "brevitas"]
    return adapter


def test_plugin_import_does_not_import_brevitas() -> None:
    code = (
        "import sys, labelkeep_brevitas; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'brevitas'], 'imported'; "
        "adapter = labelkeep_brevitas.BrevitasAdapter(); print(adapter.module)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "brevitas"


@pytest.fixture
def brevitas_version(monkeypatch: pytest.MonkeyPatch):
    real = host_adapters.version

    def fake(distribution: str) -> str:
        return "0.9.0" if distribution == "brevitas" else real(distribution)

    monkeypatch.setattr(host_adapters, "version", fake)


def test_out_of_range_brevitas_is_skipped_with_one_line(brevitas_version, capsys) -> None:
    before = patched_attributes()
    with instrumented(Config(tuner="fixed")) as session:
        student = layerwise_quantize(pretrained())
        qat_steps(student, 1)
        assert patched_attributes() == before
        assert session.report()["references"] == []
        assert session.adapters["brevitas"].state == "skipped"
    lines = [line for line in capsys.readouterr().err.splitlines() if "'brevitas'" in line]
    assert lines == [
        "labelkeep: adapter 'brevitas' skipped: brevitas 0.9.0 is outside the "
        "supported range >=0.13,<0.14"
    ]


def test_out_of_range_brevitas_is_an_error_when_strict(brevitas_version) -> None:
    try:
        with (
            pytest.raises(PluginError, match=r"brevitas 0\.9\.0"),
            instrumented(Config(tuner="fixed", strict=True)),
        ):
            pass
    finally:
        uninstrument()


def test_a_failing_install_leaves_the_run_going(monkeypatch, capsys) -> None:
    def broken(self, session) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(labelkeep_brevitas.BrevitasAdapter, "install", broken)
    with instrumented(Config(tuner="fixed")) as session:
        student = layerwise_quantize(pretrained())
        qat_steps(student, 2)
        report = session.report()
    assert report["failures"] == ["brevitas: RuntimeError: boom"]
    assert report["references"] == []
    assert [a["state"] for a in report["adapters"] if a["name"] == "brevitas"] == ["failed"]
    assert "brevitas: RuntimeError: boom" in capsys.readouterr().err


def test_a_wrapper_on_top_of_a_patch_survives_uninstrument() -> None:
    original = vars(bq)["layerwise_layer_handler"]
    calls: list[str] = []
    try:
        with (
            pytest.warns(LabelkeepWarning, match="layerwise_layer_handler"),
            instrumented(Config(tuner="fixed")),
        ):
            ours = bq.layerwise_layer_handler

            def other_library(model, *args, **kwargs):
                calls.append("other")
                return ours(model, *args, **kwargs)

            bq.layerwise_layer_handler = other_library
        assert bq.layerwise_layer_handler is other_library
        student = layerwise_quantize(pretrained())  # passes straight through labelkeep's code
        assert calls == ["other"]
        assert isinstance(student.conv, qnn.QuantConv2d)
    finally:
        bq.layerwise_layer_handler = original


# -- through the real runner -----------------------------------------------------------------


def run_under_labelkeep(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    report_path = tmp_path / "report.json"
    runner = Path(sys.executable).with_name("labelkeep-run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LABELKEEP_CONFIG", None)
    result = subprocess.run(
        [str(runner), "--report", str(report_path), sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    return output, json.loads(report_path.read_text())


def test_example_pipeline_under_the_runner(tmp_path: Path) -> None:
    saved = tmp_path / "before.pt"
    output, report = run_under_labelkeep(
        tmp_path, str(SCRIPTS / "brevitas_example_save_before.py"), str(saved)
    )
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import brevitas_qat_digits as example
    finally:
        sys.path.remove(str(ROOT / "examples"))
    float_model = example.DigitsCNN()
    float_model.load_state_dict(torch.load(saved, weights_only=True))
    [adapter] = [a for a in report["adapters"] if a["name"] == "brevitas"]
    assert adapter["state"] == "active"
    [record] = report["references"]
    assert record["checksum"] == checksum(float_model)
    assert record["where"].startswith("layerwise_quantize")
    assert report["training_steps_with_loss"] == output["qat_steps"]
    assert report["reference_intact"] is True
    assert report["agreement"]["samples"] == 540 and report["failures"] == []


def test_hand_built_script_importing_only_brevitas_nn(tmp_path: Path) -> None:
    saved = tmp_path / "before.pt"
    output, report = run_under_labelkeep(
        tmp_path, str(SCRIPTS / "brevitas_hand_built.py"), str(saved), "5"
    )
    assert "brevitas.graph.quantize" not in output["brevitas_graph_modules"]
    sys.path.insert(0, str(SCRIPTS))
    try:
        from brevitas_hand_built import QuantNet as ScriptNet
    finally:
        sys.path.remove(str(SCRIPTS))
    model = ScriptNet()
    # Activation scales are created by their first training forward: absent from both states.
    model.load_state_dict(torch.load(saved, weights_only=True), strict=False)
    [record] = report["references"]
    assert "hand-built" in record["where"] and record["checksum"] == checksum(model)
    assert report["training_steps_with_loss"] == output["steps"] == 5
    assert report["reference_intact"] is True
