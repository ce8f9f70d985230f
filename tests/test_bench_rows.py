"""Which rows a bench runs: the profiles' rows, ``--methods``, rows that wait for a tuner or
a loss term, and each row's labelkeep configuration (fake runs; nothing trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bench import FakeRuns, bench, install_fakes, register_plugins

from labelkeep_plugins.bench.cells import PROFILES
from labelkeep_plugins.bench.plan import method_config
from labelkeep_plugins.config import Config, LossConfig


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    return install_fakes(monkeypatch)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch):
    return lambda *names: register_plugins(monkeypatch, *names)


def test_method_configs(registered) -> None:
    assert dict(method_config("plain").loss.weights) == {"ce": 1.0}
    assert method_config("default") == Config()  # whatever a user configuring nothing gets
    assert method_config("softadapt") == Config(tuner="softadapt")
    assert method_config("plain").tuner == method_config("tuned", {}).tuner == "fixed"
    assert method_config("tuned", {"weights": {"kd": 0.3}}).loss.weights["kd"] == 0.3
    limit = method_config("limit")
    assert dict(limit.loss.weights) == {"ce": 0.0, "kd": 1.0} and limit.loss.temperature == 4.0
    assert limit.loss.focal is None and limit.tuner == "fixed"
    with pytest.raises(ValueError, match="tuned"):
        method_config("tuned")
    registered("softadapt", "fm")
    fm = method_config("fm")
    assert dict(fm.loss.weights) == {**LossConfig().weights, "fm": 1.0}
    assert fm.tuner == Config().tuner and fm.loss.temperature == Config().loss.temperature


def test_profiles_rows_budgets_and_seeds() -> None:
    default, full, quick = PROFILES["default"], PROFILES["full"], PROFILES["quick"]
    assert default.methods == ("plain", "perturbed", "default", "softadapt")
    assert (default.seeds, default.trials, default.budgets) == (3, 0, (1,))
    assert full.methods == ("plain", "perturbed", "default", "softadapt", "tuned", "fm", "limit")
    assert (full.seeds, full.budgets) == (5, (1, 3)) and full.trials > 0
    assert quick.seeds == 1 and quick.epochs < default.epochs and quick.budgets == (1,)
    assert {"tuned", "fm", "limit"} <= set(quick.methods) and quick.trials == 1
    assert default.epochs == full.epochs and default.pretrain_epochs == full.pretrain_epochs


def test_methods_selects_rows_and_validates_names(
    tmp_path: Path, fakes: FakeRuns, registered, capsys
) -> None:
    registered("softadapt")
    options = ["--frameworks", "brevitas", "--datasets", "digits", "--levels", "heavy"]
    assert bench(tmp_path / "a", *options, "--seeds", "1", "--methods", "softadapt,default") == 0
    assert [k.method for k, _ in fakes.calls] == ["plain", "default", "softadapt"]
    notes = json.loads((tmp_path / "a" / "results.json").read_text())["notes"]
    assert notes == ["plain recovery runs too: every reduction is measured against it"]
    assert bench(tmp_path / "b", *options, "--methods", "plain", "defualt") == 2
    err = capsys.readouterr().err
    assert "unknown method 'defualt'; valid methods: plain, perturbed, default, softadapt" in err
    assert "tuned, fm, limit" in err and not (tmp_path / "b").exists()


def test_a_tuner_row_runs_only_when_its_tuner_is_registered(
    tmp_path: Path, fakes: FakeRuns, registered, capsys
) -> None:
    registered()
    options = ["--frameworks", "brevitas", "--datasets", "digits", "--levels", "heavy"]
    assert bench(tmp_path / "a", *options, "--seeds", "1", "--methods", "plain", "softadapt") == 0
    assert [k.method for k, _ in fakes.calls] == ["plain"]
    assert "no softadapt row: no tuner named 'softadapt' is registered" in capsys.readouterr().out
    registered("softadapt")
    assert bench(tmp_path / "c", *options, "--seeds", "1", "--methods", "plain", "softadapt") == 0
    assert fakes.calls[-1][0].method == "softadapt" and fakes.calls[-1][1].tuner == "softadapt"


def test_the_fm_row_waits_for_the_fm_term(
    tmp_path: Path, fakes: FakeRuns, registered, capsys
) -> None:
    registered("softadapt")
    options = ["--frameworks", "nni", "--datasets", "digits", "--levels", "heavy", "--seeds", "1"]
    assert bench(tmp_path / "a", *options, "--methods", "plain", "fm") == 0
    assert [k.method for k, _ in fakes.calls] == ["plain"]
    assert "no fm row: no loss term named 'fm' is registered" in capsys.readouterr().out
    registered("softadapt", "fm")
    assert bench(tmp_path / "b", *options, "--methods", "plain", "fm") == 0
    assert fakes.calls[-1][0].method == "fm" and fakes.calls[-1][1].loss.weights["fm"] == 1.0


def test_zero_trials_means_no_tuned_row_even_when_asked(
    tmp_path: Path, fakes: FakeRuns, registered
) -> None:
    registered("softadapt")
    options = ["--full", "--frameworks", "brevitas", "--datasets", "digits", "--levels", "heavy"]
    assert bench(tmp_path, *options, "--seeds", "1", "--trials", "0", "--budgets", "1") == 0
    assert "tuned" not in {k.method for k, _ in fakes.calls}
    notes = json.loads((tmp_path / "results.json").read_text())["notes"]
    assert "no tuned row: --trials 0" in notes
