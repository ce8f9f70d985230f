"""Inside NNI trials: parameters in, agreement out; and a real two-trial NNI experiment."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import socket
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelkeep_plugins.config import Config
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.tuning import nni_trial
from labelkeep_plugins.tuning.nni_trial import (
    PARAMETERS_ENV,
    PassReporter,
    in_nni_trial,
    prepare_config,
    report_final,
    start_reporting,
)
from labelkeep_plugins.tuning.space import default_search_space, validate_search_space


class StubNni(types.ModuleType):
    """What labelkeep calls of ``nni`` in a trial, recording the calls."""

    def __init__(self, parameters: dict[str, Any] | None) -> None:
        super().__init__("nni")
        self.trial = types.ModuleType("nni.trial")
        self.calls: list[tuple[str, Any]] = []
        self._parameters = parameters

    def get_next_parameter(self) -> dict[str, Any] | None:
        self.calls.append(("get_next_parameter", None))
        return self._parameters

    def report_final_result(self, metric: Any) -> None:
        self.calls.append(("final", metric))

    def report_intermediate_result(self, metric: Any) -> None:
        self.calls.append(("intermediate", metric))


class FakeSession:
    def __init__(self, agreement: dict[str, Any] | None, crashed: str | None = None) -> None:
        self._agreement, self.crashed, self.config = agreement, crashed, Config()

    def report(self) -> dict[str, Any]:
        return {"agreement": self._agreement}


AGREEMENT = {"samples": 100, "mismatches": 7, "negative_flips": 3, "compressed_accuracy": 0.9}


@pytest.fixture
def trial_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An NNI local trial's environment; everything it sets is undone afterwards."""
    for name in ("NNI_TRIAL_COMMAND_CHANNEL", "LABELKEEP_REPORT", PARAMETERS_ENV):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)  # now restored to "unset" at teardown, whoever sets it
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(tmp_path))
    for attribute in ("owner", "script_reported_final", "report_final", "patches"):
        monkeypatch.setattr(nni_trial._Trial, attribute, getattr(nni_trial._Trial, attribute))
    yield tmp_path
    nni_trial.end_trial()


def install(monkeypatch: pytest.MonkeyPatch, parameters: dict[str, Any] | None) -> StubNni:
    stub = StubNni(parameters)
    monkeypatch.setitem(sys.modules, "nni", stub)
    return stub


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"NNI_PLATFORM": "unittest"}, False),
        ({"NNI_PLATFORM": "local"}, True),
        ({"NNI_PLATFORM": "kubeflow"}, True),
        ({"NNI_TRIAL_COMMAND_CHANNEL": "ws://localhost:8080/env/x/y"}, True),
    ],
)
def test_trial_detection_follows_nni(environ: dict[str, str], expected: bool) -> None:
    assert in_nni_trial(environ) is expected


def test_outside_a_trial_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    monkeypatch.delenv("NNI_TRIAL_COMMAND_CHANNEL", raising=False)
    config = Config()
    assert prepare_config(config) is config


def test_trial_parameters_set_the_loss_and_reach_children(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = install(monkeypatch, {"kd": 0.5, "temperature": 3.0, "focal_scale": 2.0, "lr": 0.1})
    config = prepare_config(Config())
    assert dict(config.loss.weights) == {"ce": 1.0, "kd": 0.5}
    assert config.loss.temperature == 3.0 and config.loss.focal.scale == 2.0
    assert config.report == str(trial_env / "labelkeep-report.json")
    assert json.loads(sys.modules["os"].environ[PARAMETERS_ENV])["lr"] == 0.1
    # The script's own call gets the same parameters (NNI itself would return None).
    assert stub.get_next_parameter()["lr"] == 0.1
    assert [c for c, _ in stub.calls] == ["get_next_parameter"]


def test_a_child_process_takes_the_inherited_parameters(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = install(monkeypatch, {"kd": 9.0})
    monkeypatch.setenv(PARAMETERS_ENV, json.dumps({"kd": 0.25}))
    assert prepare_config(Config()).loss.weights["kd"] == 0.25
    assert stub.calls == [] and not nni_trial._Trial.owner


def test_bad_parameters_cost_one_line_not_the_run(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    install(monkeypatch, {"kd": -1.0})
    config = prepare_config(Config())
    assert config.loss == Config().loss
    assert "labelkeep: NNI trial: cannot take the loss weights" in capsys.readouterr().err
    monkeypatch.delenv(PARAMETERS_ENV)
    with pytest.raises(ConfigError, match=r"weights\.kd"):
        prepare_config(Config(strict=True))


def test_final_result_goes_to_nni(trial_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = install(monkeypatch, {"kd": 1.0})
    prepare_config(Config())
    report_final(FakeSession(AGREEMENT), PassReporter())
    ((kind, metric),) = [c for c in stub.calls if c[0] != "get_next_parameter"]
    assert kind == "final" and metric["default"] == 7 and metric["negative_flips"] == 3
    assert metric["accuracy"] == 0.9 and metric["samples"] == 100


def test_a_script_reporting_its_own_final_result_keeps_it(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stub = install(monkeypatch, {"kd": 1.0})
    prepare_config(Config())
    stub.report_final_result(0.93)  # the script's own call, through labelkeep's wrapper
    report_final(FakeSession(AGREEMENT), PassReporter())
    assert [c for c in stub.calls if c[0] == "final"] == [("final", 0.93)]
    assert "reported its own final result" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("session", "message"),
    [(FakeSession(None), "no final result sent"), (FakeSession(AGREEMENT, "E: x"), "failed")],
)
def test_no_final_result_without_figures_or_after_a_crash(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch, capsys, session: FakeSession, message: str
) -> None:
    stub = install(monkeypatch, {"kd": 1.0})
    prepare_config(Config())
    report_final(session, PassReporter())
    assert [c for c in stub.calls if c[0] == "final"] == []
    assert message in capsys.readouterr().err


def test_nni_gets_its_own_functions_back_after_the_final_result(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = install(monkeypatch, {"kd": 1.0})
    names = ("get_next_parameter", "report_final_result")
    originals = {name: getattr(stub, name) for name in names}
    prepare_config(Config())
    assert stub.get_next_parameter() == {"kd": 1.0}  # wrapped: NNI would give None now
    assert "get_next_parameter" in vars(stub)  # the wrapper, over the stub's own method
    report_final(FakeSession(AGREEMENT), PassReporter())
    for name, original in originals.items():
        assert getattr(stub, name) == original, name  # the stub's own bound methods again
        assert name not in vars(stub)
    assert not hasattr(stub, "get_next_parameters")  # a name NNI lacks is not added
    assert nni_trial._Trial.patches is None


def test_a_failing_nni_call_costs_one_line(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stub = install(monkeypatch, {"kd": 1.0})
    prepare_config(Config())

    def broken(metric: Any) -> None:
        raise ConnectionError("manager gone")

    monkeypatch.setattr(nni_trial._Trial, "report_final", broken)
    report_final(FakeSession(AGREEMENT), PassReporter())  # does not raise
    assert "ConnectionError: manager gone" in capsys.readouterr().err
    assert stub.calls == [("get_next_parameter", None)]


def test_each_evaluation_pass_is_one_intermediate_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    stub = install(monkeypatch, None)
    reporter = PassReporter()
    reference = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    student = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([0, 1, 1])
    reporter.labelkeep_evaluation_batch(student, reference, targets)
    reporter.labelkeep_evaluation_batch(student[:1], reference[:1], targets[:1])
    reporter.labelkeep_training_step(student, reference, targets, {})  # pass over
    reporter.labelkeep_training_step(student, reference, targets, {})  # nothing new
    reporter.labelkeep_evaluation_batch(student, reference, None)
    reporter.flush()
    first, second = (metric for kind, metric in stub.calls if kind == "intermediate")
    assert (first["default"], first["samples"], first["negative_flips"]) == (2, 4, 1)
    assert (second["default"], second["samples"]) == (2, 3) and "accuracy" not in second


def test_reporting_starts_only_in_the_process_that_fetched(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[Any] = []
    monkeypatch.setattr("atexit.register", lambda *args: registered.append(args))
    start_reporting(FakeSession(AGREEMENT))
    assert registered == []


# A real NNI experiment: NNI's manager (node.js, shipped in the nni wheel) with the local
# training service runs two trials of `labelkeep-run python trial.py`.

TRIAL_SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from labelkeep_plugins.zero_code.instrument import current_session

    session = current_session()  # what an adapter does when compression starts
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    session.reference_for(model, framework="test", where="trial script")
    with torch.no_grad():  # "compression" that depends on the trial's kd weight
        model.weight.add_(session.config.loss.weights["kd"] * torch.randn_like(model.weight))
    session.attach(model)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    F.cross_entropy(model(x), y).backward()
    model.eval()
    with torch.no_grad():
        F.cross_entropy(model(x), y)
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _runner_command() -> list[str]:
    runner = shutil.which("labelkeep-run") or str(Path(sys.executable).with_name("labelkeep-run"))
    if Path(runner).exists():
        return [runner]
    return [sys.executable, "-m", "labelkeep_plugins.cli.main", "run", "--"]


@pytest.mark.skipif(importlib.util.find_spec("nni") is None, reason="NNI is not installed")
def test_a_real_nni_experiment_receives_each_trials_result(tmp_path: Path) -> None:
    from nni.experiment import Experiment

    (tmp_path / "trial.py").write_text(TRIAL_SCRIPT)
    experiment = Experiment("local")
    config = experiment.config
    config.trial_command = shlex.join([*_runner_command(), sys.executable, "trial.py"])
    config.trial_code_directory = str(tmp_path)
    config.search_space = {"kd": {"_type": "uniform", "_value": [0.0, 2.0]}}
    config.tuner.name = "TPE"
    config.tuner.class_args = {"optimize_mode": "minimize", "seed": 0}
    config.max_trial_number = 2
    config.trial_concurrency = 1  # one at a time: the machine has 2 cores
    config.experiment_working_directory = str(tmp_path / "nni-experiments")
    experiment.start(_free_port())
    try:
        deadline = time.monotonic() + 150
        while experiment.get_status() not in ("DONE", "ERROR", "STOPPED"):
            assert time.monotonic() < deadline, "the NNI experiment did not finish in 150 s"
            time.sleep(1)
        data = experiment.export_data()
        jobs = experiment.list_trial_jobs()
        metrics = experiment.get_job_metrics()
    finally:
        experiment.stop()
    assert [job.status for job in jobs] == ["SUCCEEDED", "SUCCEEDED"]
    assert len(data) == 2
    trials = tmp_path / "nni-experiments" / experiment.id / "environments"
    reports = sorted(trials.glob("*/trials/*/labelkeep-report.json"))
    assert len(reports) == 2
    written = [json.loads(report.read_text()) for report in reports]
    by_kd = {round(r["config"]["loss"]["weights"]["kd"], 9): r["agreement"] for r in written}
    for trial in data:
        agreement = by_kd[round(trial.parameter["kd"], 9)]  # the trial used NNI's weight
        assert trial.value["default"] == agreement["mismatches"]
        assert trial.value["negative_flips"] == agreement["negative_flips"]
    kinds = sorted(m.type for job_metrics in metrics.values() for m in job_metrics)
    assert kinds == ["FINAL", "FINAL", "PERIODICAL", "PERIODICAL"]


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nni_experiment"


@pytest.mark.skipif(importlib.util.find_spec("nni") is None, reason="NNI is not installed")
def test_the_example_experiment_config_is_valid_for_nni() -> None:
    from nni.experiment.config import ExperimentConfig

    config = ExperimentConfig.load(str(EXAMPLE / "config.yml")).canonical_copy()
    assert config.trial_command.startswith("labelkeep-run python ")
    assert config.tuner.class_args == {"optimize_mode": "minimize"}
    assert config.training_service.platform == "local"
    assert config.search_space == default_search_space()  # what `labelkeep search-space` writes
    assert validate_search_space(config.search_space) == config.search_space
    compile((EXAMPLE / "train.py").read_text(), "train.py", "exec")


def test_auto_mode_takes_the_trial_weights_through_the_plugin_hook(
    trial_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``labelkeep-run`` does in a trial: the built-in plugin's hook, not a direct call."""
    from labelkeep_plugins.zero_code.auto import adjusted_by_plugins

    install(monkeypatch, {"kd": 0.5, "temperature": 3.0})
    config = adjusted_by_plugins(Config())
    assert config.loss.weights["kd"] == 0.5 and config.tuner == "fixed"
    assert config.report == str(trial_env / "labelkeep-report.json")
