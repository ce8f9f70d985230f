"""instrument()/uninstrument() with adapters registered by plugins, and the import hooks."""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from torch import nn

import labelkeep_plugins.zero_code.adapters as adapters_module
from labelkeep_plugins import Config, hookimpl
from labelkeep_plugins.errors import LabelkeepWarning, PluginError
from labelkeep_plugins.plugins import get_plugin_manager, load_plugins
from labelkeep_plugins.reference.snapshot import checksum
from labelkeep_plugins.zero_code.adapters import PatchingAdapter
from labelkeep_plugins.zero_code.importhooks import when_imported
from labelkeep_plugins.zero_code.instrument import current_session, instrumented, uninstrument

FAKE_MODULE = "labelkeep_fake_framework"


def make_framework() -> types.ModuleType:
    """A stand-in compression framework: a pruner that zeroes half of each weight."""
    module = types.ModuleType(FAKE_MODULE)

    class Pruner:
        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def step(self) -> None:
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter[: parameter.shape[0] // 2] = 0

    module.Pruner = Pruner
    return module


class FakeAdapter(PatchingAdapter):
    name = "fake"
    framework = "pytest"  # any installed distribution: its version is what gets checked
    supported = ">=1"
    module = FAKE_MODULE

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail

    def install(self, session) -> None:
        if self.fail:
            raise RuntimeError("adapter bug")
        pruner = sys.modules[FAKE_MODULE].Pruner
        original = pruner.__init__

        def patched_init(pruner_self, model):
            with session.guard(self.name):
                session.reference_for(model, framework="fake", where="Pruner.__init__")
                session.attach(model)
            original(pruner_self, model)

        self.patches.patch(pruner, "__init__", patched_init)


class AdapterPlugin:
    def __init__(self, adapter: FakeAdapter) -> None:
        self.adapter = adapter

    @hookimpl
    def labelkeep_register_adapters(self, register) -> None:
        register(self.adapter)


@pytest.fixture
def framework(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = make_framework()
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    yield module
    uninstrument()


def register(adapter: FakeAdapter) -> None:
    load_plugins()
    get_plugin_manager().register(AdapterPlugin(adapter))


def train_steps(model: nn.Module, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x, y = (
            torch.randn(8, 4, generator=generator),
            torch.randint(0, 3, (8,), generator=generator),
        )
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_adapter_snapshots_before_compression_and_trains_every_step(framework) -> None:
    adapter = FakeAdapter()
    register(adapter)
    original_init = framework.Pruner.__init__
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = checksum(model)
    with instrumented(Config()) as session:
        assert session.adapters["fake"].state == "active"
        pruner = framework.Pruner(model)
        pruner.step()
        train_steps(model, 5)
        reference = session.reference_of(model)
        assert checksum(reference) == before
        assert checksum(model) != before
        report = session.report()
    assert report["training_steps_with_loss"] == 5
    assert report["reference_intact"] is True
    assert report["references"][0]["where"] == "Pruner.__init__"
    assert framework.Pruner.__init__ is original_init
    assert current_session() is None
    assert not model._forward_hooks


def test_instrument_is_idempotent(framework) -> None:
    register(FakeAdapter())
    with instrumented(Config()) as first:
        from labelkeep_plugins.zero_code.instrument import instrument

        assert instrument(Config()) is first


def test_adapter_waits_for_its_framework_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, FAKE_MODULE, raising=False)
    adapter = FakeAdapter()
    register(adapter)
    with instrumented(Config()) as session:
        assert session.adapters["fake"].state == "waiting-for-import"
        monkeypatch.setitem(sys.modules, FAKE_MODULE, make_framework())
        # A real import would fire the hook; simulate the loader's callback path directly.
        from labelkeep_plugins.zero_code import importhooks

        importhooks._fire(FAKE_MODULE, sys.modules[FAKE_MODULE])
        assert session.adapters["fake"].state == "active"


def test_failing_adapter_is_skipped_and_training_goes_on(framework, capsys) -> None:
    register(FakeAdapter(fail=True))
    model = nn.Sequential(nn.Linear(4, 3))
    with instrumented(Config()) as session:
        framework.Pruner(model).step()
        train_steps(model, 2)
        report = session.report()
    assert session.adapters["fake"].state == "failed"
    assert "adapter bug" in capsys.readouterr().err
    assert report["training_steps_with_loss"] == 0
    assert report["failures"] and "RuntimeError" in report["failures"][0]


def test_failing_adapter_raises_when_strict(framework) -> None:
    register(FakeAdapter(fail=True))
    with pytest.raises(RuntimeError, match="adapter bug"), instrumented(Config(strict=True)):
        pass


def test_out_of_range_framework_skips_with_one_line(framework, monkeypatch, capsys) -> None:
    monkeypatch.setattr(adapters_module, "version", lambda name: "0.1")
    register(FakeAdapter())
    with instrumented(Config()) as session:
        assert session.adapters["fake"].state == "skipped"
    lines = [line for line in capsys.readouterr().err.splitlines() if "fake" in line]
    assert lines == [
        "labelkeep: adapter 'fake' skipped: pytest 0.1 is outside the supported range >=1"
    ]
    with (
        pytest.raises(PluginError, match="outside the supported range"),
        instrumented(Config(strict=True)),
    ):
        pass


def test_disabled_adapters(framework, monkeypatch) -> None:
    register(FakeAdapter())
    with instrumented(Config(disabled_adapters=("fake",))) as session:
        assert session.adapters["fake"].state == "disabled"
    monkeypatch.setenv("LABELKEEP_DISABLED_ADAPTERS", "*")
    with instrumented(Config()) as session:
        assert session.adapters["fake"].state == "disabled"


def test_a_misspelled_disabled_adapter_is_named_with_the_known_ones(
    framework, monkeypatch, capsys
) -> None:
    register(FakeAdapter())
    monkeypatch.setenv("LABELKEEP_DISABLED_ADAPTERS", "fak")
    with instrumented(Config(disabled_adapters=("torchpruning",))) as session:
        assert session.adapters["fake"].state != "disabled"
        warnings = session.report()["warnings"]
    err = capsys.readouterr().err
    for where, name in (
        ("LABELKEEP_DISABLED_ADAPTERS", "fak"),
        ("disabled_adapters", "torchpruning"),
    ):
        line = [w for w in warnings if f"{where} names {name!r}" in w]
        assert len(line) == 1 and "known adapters:" in line[0] and "fake" in line[0]
        assert f"labelkeep: configuration: {where} names {name!r}" in err  # one prefix


def test_wrapper_on_top_is_left_in_place(framework) -> None:
    register(FakeAdapter())
    with pytest.warns(LabelkeepWarning, match="wrapped again"), instrumented(Config()):
        ours = framework.Pruner.__init__

        def theirs(self, model):
            ours(self, model)

        framework.Pruner.__init__ = theirs
    assert framework.Pruner.__init__ is theirs


def test_when_imported_fires_after_a_real_import(tmp_path, monkeypatch) -> None:
    (tmp_path / "lk_probe_module.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lk_probe_module", raising=False)
    seen: list[int] = []
    when_imported("lk_probe_module", lambda module: seen.append(module.VALUE + 1))
    assert seen == []
    import lk_probe_module  # noqa: F401

    assert seen == [42]
    when_imported("lk_probe_module", lambda module: seen.append(module.VALUE))
    assert seen == [42, 41]


def test_reporters_receive_the_report_at_exit(framework, monkeypatch, tmp_path) -> None:
    """The JSON file is written by the built-in reporter; a plugin's reporter sees the same."""
    import json
    import os

    from labelkeep_plugins.env import ROOT_PID_ENV
    from labelkeep_plugins.zero_code.auto import write_report_at_exit

    received: list[dict] = []

    class Reporter:
        @hookimpl
        def labelkeep_run_finished(self, report, path) -> None:
            received.append(report)

    register(FakeAdapter())
    get_plugin_manager().register(Reporter())
    monkeypatch.setenv(ROOT_PID_ENV, str(os.getpid()))
    with instrumented(Config(report=str(tmp_path / "report.json"))):
        model = nn.Sequential(nn.Linear(4, 3))
        framework.Pruner(model)
        train_steps(model, 3)
        write_report_at_exit()
    written = json.loads((tmp_path / "report.json").read_text())
    assert received and received[0]["training_steps_with_loss"] == 3
    assert written["training_steps_with_loss"] == 3


class SecondFakeAdapter(FakeAdapter):
    name = "fake-two"


def test_two_adapters_patching_the_same_attribute(framework) -> None:
    """Both wrap Pruner.__init__: one reference, one attachment, originals back in order."""
    register(FakeAdapter())
    register(SecondFakeAdapter())
    original = framework.Pruner.__init__
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = checksum(model)
    with instrumented(Config()) as session:
        assert session.adapters["fake"].state == session.adapters["fake-two"].state == "active"
        framework.Pruner(model).step()
        train_steps(model, 4)
        report = session.report()
        assert checksum(session.reference_of(model)) == before
    assert len(report["references"]) == 1
    assert report["training_steps_with_loss"] == 4  # not 8: the loss is added once
    assert framework.Pruner.__init__ is original


def test_unknown_tuner_is_refused_when_instrumenting(framework) -> None:
    """The tuner named in the config is the one the session uses; a typo must not pass."""
    from labelkeep_plugins.errors import ConfigError

    with pytest.raises(
        ConfigError, match="unknown tuner 'catchp'; registered tuners: catchup, fixed, softadapt"
    ):
        instrumented(Config(tuner="catchp")).__enter__()
    assert current_session() is None
    with instrumented(Config(tuner="fixed")) as session:
        assert session.report()["tuner"] == {"name": "fixed"}
    with instrumented(Config()) as session:
        assert session.report()["tuner"]["name"] == "catchup"  # the default tuner


def test_unknown_term_is_refused_before_anything_is_patched(framework) -> None:
    """A configuration is plain data; instrument() checks its term names against the plugins."""
    from labelkeep_plugins.errors import ConfigError

    original = framework.Pruner.__init__
    with pytest.raises(ConfigError, match="unknown loss term 'kdd' in weights; known terms: ce"):
        instrumented(Config.from_dict({"loss": {"weights": {"kdd": 1.0}}})).__enter__()
    assert current_session() is None
    assert framework.Pruner.__init__ is original


def test_steps_an_adapter_counts_by_a_framework_route_are_reported() -> None:
    """``counters.framework_steps`` (adapters/README.md) is the third route in ``loss_paths``."""
    from labelkeep_plugins.zero_code.session import Session

    session = Session(Config())
    session.counters.framework_steps += 3
    report = session.report()
    assert report["loss_paths"] == {"loss_value": 0, "gradient": 0, "framework": 3}
    assert report["training_steps_with_loss"] == 3


class HalfwayAdapter(FakeAdapter):
    """Patches one attribute, then fails: the one rollback must undo what it did."""

    def install(self, session) -> None:
        pruner = sys.modules[FAKE_MODULE].Pruner
        self.patches.patch(pruner, "step", lambda pruner_self: None)
        raise RuntimeError("adapter bug halfway")


def test_an_adapter_failing_halfway_leaves_nothing_patched(framework, capsys) -> None:
    register(HalfwayAdapter())
    original_step = framework.Pruner.step
    with instrumented(Config()) as session:
        assert framework.Pruner.step is original_step  # undone at once, still in the session
        assert session.adapters["fake"].state == "failed"
    assert "adapter bug halfway" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="halfway"), instrumented(Config(strict=True)):
        pass
    assert framework.Pruner.step is original_step and current_session() is None


def test_a_reference_with_no_trained_step_is_said_at_exit(framework, caplog) -> None:
    """The silent failure of a fine-tuning that trained a copy: the report and one line say it."""
    from labelkeep_plugins.zero_code import report as reporters
    from labelkeep_plugins.zero_code.exit_notices import NEVER_TRAINED_START

    register(FakeAdapter())
    model = nn.Sequential(nn.Linear(4, 3))
    with instrumented(Config()) as session:
        framework.Pruner(model).step()
        train_steps(copy.deepcopy(model), 2)  # the copy trains; the attached model does not
        report = session.report()
    (notice,) = [w for w in report["warnings"] if w.startswith(NEVER_TRAINED_START)]
    assert "though a reference of Sequential (Pruner.__init__) was taken" in notice
    with caplog.at_level("WARNING", logger="labelkeep"):
        reporters.tell_exit_notices(report)
    assert notice in caplog.text
    with instrumented(Config()) as session:
        framework.Pruner(model2 := nn.Sequential(nn.Linear(4, 3))).step()
        train_steps(model2, 1)
        assert not any(w.startswith(NEVER_TRAINED_START) for w in session.report()["warnings"])


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, *, evaluate: bool) -> None:
    """One training epoch of two steps, then (optionally) an evaluation that calls eval()."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(8, 4, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    if evaluate:
        model.eval()
        nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.zeros(8, dtype=torch.long))


def test_training_left_in_eval_mode_after_an_evaluation_is_said_at_exit(framework) -> None:
    """The loop forgets model.train() after its first evaluation: later epochs get no loss.

    The evaluation itself runs without no_grad (common): with no backward it is no training.
    """
    from labelkeep_plugins.zero_code.exit_notices import EVAL_MODE_START
    from labelkeep_plugins.zero_code.report import EXIT_NOTICES

    register(FakeAdapter())
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with instrumented(Config()) as session:
        framework.Pruner(model).step()
        model.train()
        _epoch(model, optimizer, evaluate=True)
        assert not any(w.startswith(EVAL_MODE_START) for w in session.report()["warnings"])
        _epoch(model, optimizer, evaluate=True)  # trained in eval mode: 2 backwards
        report = session.report()
        model.train()
        _epoch(model, optimizer, evaluate=False)
        assert session.report()["training_steps_with_loss"] == 4
    (notice,) = [w for w in report["warnings"] if w.startswith(EVAL_MODE_START)]
    assert notice.startswith(f"{EVAL_MODE_START} 2 backward pass(es) ran through Sequential")
    assert "model.train()" in notice and "train_mode_only: false" in notice
    assert report["training_steps_with_loss"] == 2 and EVAL_MODE_START in EXIT_NOTICES


def test_training_in_eval_mode_gets_the_loss_when_train_mode_only_is_off(framework) -> None:
    from labelkeep_plugins.zero_code.exit_notices import EVAL_MODE_START

    register(FakeAdapter())
    model = nn.Sequential(nn.Linear(4, 3))
    with instrumented(Config(train_mode_only=False)) as session:
        framework.Pruner(model).step()
        model.eval()
        _epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), evaluate=False)
        report = session.report()
    assert report["training_steps_with_loss"] == 2
    assert not any(w.startswith(EVAL_MODE_START) for w in report["warnings"])


def test_a_scripts_own_attach_is_not_called_no_compression() -> None:
    """attach() in a script under labelkeep-run: the report points to its handle instead."""
    from labelkeep_plugins import attach, snapshot_reference
    from labelkeep_plugins.zero_code.exit_notices import NO_COMPRESSION_SEEN, OWN_ATTACHES_START

    with instrumented(Config()) as session:
        assert session.report()["warnings"] == [NO_COMPRESSION_SEEN]
        model = nn.Sequential(nn.Linear(4, 3))
        handle = attach(model, snapshot_reference(model))
        train_steps(model, 1)
        (notice,) = session.report()["warnings"]
        assert notice.startswith(f"{OWN_ATTACHES_START} 1 model(s) itself")
        handle.detach()


@pytest.mark.parametrize("trained", [False, True])
def test_a_reference_near_chance_is_said_to_look_untrained(trained: bool) -> None:
    """QAT from scratch: the reference taken at the first step is a random network."""
    from labelkeep_plugins import snapshot_reference
    from labelkeep_plugins.zero_code.exit_notices import UNTRAINED_START
    from labelkeep_plugins.zero_code.session import Session

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 10))
    session = Session(Config())
    session.attach(model, snapshot_reference(model))
    train_steps(model, 1)
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    labels = model(x).argmax(1) if trained else torch.arange(200) % 10  # chance: about 10%
    model.eval()
    with torch.no_grad():
        nn.functional.cross_entropy(model(x), labels)  # the script's evaluation sees labels
    notices = [w for w in session.report()["warnings"] if w.startswith(UNTRAINED_START)]
    session.detach_all()
    if trained:
        assert notices == []
    else:
        (notice,) = notices
        assert "Sequential scored" in notice and "near chance for 10 classes" in notice
