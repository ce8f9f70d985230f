"""NNI adapter through the real runner, packaging, and the fault cases."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from labelkeep_nni import adapter as nni_adapter

import labelkeep_plugins.zero_code.adapters as adapters_module
from labelkeep_plugins import Config, checksum
from labelkeep_plugins.errors import LabelkeepWarning, PluginError
from labelkeep_plugins.zero_code.instrument import instrumented, uninstrument

SCRIPTS = Path(__file__).parent / "scripts"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABELKEEP_RUN = Path(sys.executable).with_name("labelkeep-run")


def load_script(name: str, folder: Path = SCRIPTS) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"labelkeep_tests_{name}", folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


user = load_script("nni_user_script")


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELKEEP_")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def checksum_of_saved(path: Path, model: torch.nn.Module) -> str:
    model.load_state_dict(torch.load(path, weights_only=True))
    return checksum(model)


def test_user_script_under_the_runner(tmp_path: Path) -> None:
    result = run(
        [
            str(LABELKEEP_RUN),
            "--report",
            "report.json",
            sys.executable,
            str(SCRIPTS / "nni_user_script.py"),
            "--compressor",
            "taylor",
            "--speedup",
            "--save-before",
            "before.pt",
            "--counts",
            "counts.json",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    counts = json.loads((tmp_path / "counts.json").read_text())
    nni_status = next(a for a in report["adapters"] if a["name"] == "nni")
    assert nni_status["state"] == "active"
    (reference,) = report["references"]
    assert reference["where"] == "TaylorPruner.__init__"
    assert reference["checksum"] == checksum_of_saved(tmp_path / "before.pt", user.Net())
    assert counts == {"nni": 3, "own": 3}
    assert report["training_steps_with_loss"] == counts["nni"] + counts["own"]
    assert report["loss_paths"] == {"loss_value": 6, "gradient": 0, "framework": 0}
    assert report["reference_intact"] is True and reference["intact"] is True
    assert report["failures"] == [] and report["agreement"]["samples"] == len(user.Y)
    assert "labelkeep: nni: ModelSpeedup:" in result.stderr


def test_example_under_the_runner_keeps_the_pre_compression_reference(tmp_path: Path) -> None:
    result = run(
        [
            str(LABELKEEP_RUN),
            "--report",
            "report.json",
            sys.executable,
            str(SCRIPTS / "nni_example_before.py"),
            "--save-before",
            "before.pt",
            "--counts",
            "counts.json",
            "--pretrain-epochs",
            "1",
            "--epochs",
            "1",
            "--prune-steps",
            "3",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    counts = json.loads((tmp_path / "counts.json").read_text())
    example = load_script("nni_agp_mnist1d", EXAMPLES)
    (reference,) = report["references"]
    assert reference["checksum"] == checksum_of_saved(tmp_path / "before.pt", example.Net())
    assert counts["before_compression"] > 0  # pretraining: no reference yet, no loss
    assert report["training_steps_with_loss"] == counts["after_compression"] == 12 + 63
    assert report["reference_intact"] is True and report["failures"] == []
    assert report["agreement"]["samples"] == 1000
    assert "fine-tuned: test accuracy" in result.stdout


def test_plugin_module_does_not_import_nni_and_uninstrument_cancels_the_import_hook() -> None:
    code = (
        "import sys, labelkeep_nni, labelkeep_nni.adapter\n"
        "print(any(m == 'nni' or m.startswith('nni.') for m in sys.modules))\n"
        "from labelkeep_plugins import Config\n"
        "from labelkeep_plugins.zero_code.instrument import instrument, uninstrument\n"
        "import nni.compression\n"
        "instrument(Config()); uninstrument()\n"
        "from nni.compression.speedup.model_speedup import ModelSpeedup\n"
        "print(ModelSpeedup.__init__.__module__)\n"
    )
    result = run([sys.executable, "-c", code], Path.cwd())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "nni.compression.speedup.model_speedup"]
    entry_points = importlib.metadata.entry_points(group="labelkeep")
    assert any(e.name == "nni" and e.value == "labelkeep_nni" for e in entry_points)


def compress_taylor() -> torch.nn.Module:
    model = user.pretrained()
    user.TaylorPruner(model, user.CONV, user.make_evaluator(model), training_steps=3).compress()
    return model


def test_out_of_range_nni_is_skipped_and_training_is_unmodified(monkeypatch, capsys) -> None:
    from nni.compression.base.compressor import Compressor

    plain = checksum(compress_taylor())
    real_version = adapters_module.version
    monkeypatch.setattr(
        adapters_module, "version", lambda name: "2.0" if name == "nni" else real_version(name)
    )
    original = Compressor.__dict__["__init__"]
    capsys.readouterr()
    with instrumented(Config()) as session:
        assert session.adapters["nni"].state == "skipped"
        assert Compressor.__dict__["__init__"] is original
        model = compress_taylor()
        assert session.report()["references"] == []
    assert checksum(model) == plain
    lines = [line for line in capsys.readouterr().err.splitlines() if "'nni'" in line]
    assert lines == [
        "labelkeep: adapter 'nni' skipped: nni 2.0 is outside the supported range >=3.0,<3.1"
    ]
    try:
        with (
            pytest.raises(PluginError, match=r"nni 2\.0 is outside"),
            instrumented(Config(strict=True)),
        ):
            pass
    finally:
        uninstrument()  # the host keeps its session when instrument() raises (reported)


@pytest.mark.parametrize("where", ["install", "half-way"])
def test_an_adapter_that_fails_to_patch_leaves_the_run_alone(where: str, monkeypatch) -> None:
    from nni.compression.base.compressor import Compressor

    def broken(*_args: object) -> None:
        raise RuntimeError("adapter bug")

    target = (
        (nni_adapter.NNIAdapter, "install")
        if where == "install"
        else (nni_adapter, "install_shims")
    )
    monkeypatch.setattr(*target, broken)
    original = Compressor.__dict__["__init__"]
    with instrumented(Config()) as session:
        assert Compressor.__dict__["__init__"] is original  # nothing half-patched is left
        compress_taylor()
        report = session.report()
    assert report["failures"] == ["nni: RuntimeError: adapter bug"]
    assert next(a for a in report["adapters"] if a["name"] == "nni")["state"] == "failed"
    try:
        with pytest.raises(RuntimeError, match="adapter bug"), instrumented(Config(strict=True)):
            pass
        assert Compressor.__dict__["__init__"] is original
    finally:
        uninstrument()  # the host keeps its session when instrument() raises (reported)


def test_a_failure_inside_a_patched_call_is_contained(monkeypatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("bind bug")

    monkeypatch.setattr(nni_adapter.NNIAdapter, "_after_bind", broken)
    with instrumented(Config()) as session:
        model = compress_taylor()
        report = session.report()
    assert user.TaylorPruner is not None and model.conv1 is not None
    assert report["failures"] == ["nni: RuntimeError: bind bug"]
    assert len(report["references"]) == 1


def test_a_wrapper_on_top_of_a_labelkeep_patch_is_left_in_place() -> None:
    from nni.compression.base.compressor import Compressor

    original = Compressor.__dict__["__init__"]
    calls: list[str] = []
    try:
        with pytest.warns(LabelkeepWarning, match=r"Compressor\.__init__"), instrumented(Config()):
            ours = Compressor.__init__

            def theirs(self, *args, **kwargs):
                calls.append(type(self).__name__)
                return ours(self, *args, **kwargs)

            Compressor.__init__ = theirs
        assert Compressor.__dict__["__init__"] is theirs
        compress_taylor()  # their wrapper still runs; labelkeep's part passes straight through
        assert calls == ["TaylorPruner"]
    finally:
        Compressor.__init__ = original
