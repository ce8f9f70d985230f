"""``labelkeep tune`` end to end on a fast fake command (no training, no torch in the trials).

The fake trial reads the configuration the runner gives it ($LABELKEEP_CONFIG), makes up
agreement figures as a fixed function of the weights, and writes them as a run report to
$LABELKEEP_REPORT. It runs with ``python -I`` so that labelkeep's ``sitecustomize`` (which
would import torch) stays out; the environment is still the runner's, which it records.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from labelkeep_plugins.cli.main import main
from labelkeep_plugins.config import load_config
from labelkeep_plugins.errors import LabelkeepError
from labelkeep_plugins.tuning import search
from labelkeep_plugins.tuning.algorithms import make_algorithm

FAKE_TRIAL = textwrap.dedent("""
    import json, os, sys
    import yaml

    runs = os.environ["FAKE_RUNS"]
    with open(runs, "a") as log:
        log.write(os.environ["LABELKEEP_CONFIG"] + "\\n")
    run = sum(1 for _ in open(runs))
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    failing = {int(n) for n in os.environ.get("FAKE_FAIL_RUNS", "").split(",") if n}
    if mode == "fail" or run in failing:
        print("fake trial: training diverged", file=sys.stderr)
        sys.exit(3)
    if mode == "no-report":
        sys.exit(0)
    loss = yaml.safe_load(open(os.environ["LABELKEEP_CONFIG"]))["loss"]
    kd, hard = loss["weights"].get("kd", 0.0), loss["weights"].get("hard", 0.0)
    if mode == "plain-best":
        kd = -kd
    mismatches = int(round(200 - 60 * min(kd, 1.5) + 40 * hard))
    accuracy = 0.9 - (0.03 if kd > 1.5 else 0.0)
    agreement = None if mode == "no-eval" else {
        "samples": 1000, "mismatches": mismatches, "negative_flips": mismatches // 2,
        "compressed_accuracy": accuracy,
    }
    report = {"agreement": agreement, "seen": {
        "auto": os.environ.get("LABELKEEP_AUTO"), "pythonpath": os.environ.get("PYTHONPATH"),
        "config": os.environ["LABELKEEP_CONFIG"], "weights": loss["weights"]}}
    with open(os.environ["LABELKEEP_REPORT"], "w") as out:
        json.dump(report, out)
""")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    script = tmp_path / "fake_trial.py"
    script.write_text(FAKE_TRIAL)
    monkeypatch.setenv("FAKE_RUNS", str(tmp_path / "runs.log"))
    monkeypatch.delenv("FAKE_FAIL_RUNS", raising=False)
    monkeypatch.chdir(tmp_path)
    return [sys.executable, "-I", str(script)]


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def tune(out: Path, *args: str, command: list[str]) -> int:
    return main(["tune", "--out", str(out), *args, "--", *command])


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_tune_writes_results_and_a_loadable_best(tmp_path: Path, fake: list[str], capsys) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "4", "--seed", "1", command=fake) == 0
    data = results(out)
    assert [t["trial"] for t in data["trials"]] == [0, 1, 2, 3, 4]
    assert all(t["status"] == "ok" for t in data["trials"])
    assert data["trials"][0]["loss"]["weights"] == {"ce": 1.0}  # the plain trial
    assert data["settings"]["algorithm"] == "tpe" and data["settings"]["seed"] == 1
    best = data["best"]
    ranked = data["ranking"]
    assert best["trial"] == ranked[0]["trial"] != 0
    assert ranked[0]["mismatches"] == min(r["mismatches"] for r in ranked if r["feasible"])
    config = load_config(out / "best.yaml")
    assert dict(config.loss.weights) == best["loss"]["weights"]
    assert config.tuner == "fixed" and config.report is None
    err = capsys.readouterr().err
    assert "progress" in err and f"best: trial {best['trial']}" in err and "[5/5]" in err


def test_each_trial_runs_under_the_runner_with_its_config(tmp_path: Path, fake: list[str]) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "1", "--seed", "2", command=fake) == 0
    trial = out / "trials" / "001"
    report = json.loads((trial / "report.json").read_text())
    assert report["seen"]["auto"] == "1" and "bootstrap" in report["seen"]["pythonpath"]
    assert report["seen"]["config"] == str((trial / "labelkeep.yaml").resolve())
    parameters = results(out)["trials"][1]["parameters"]
    assert report["seen"]["weights"]["kd"] == pytest.approx(parameters["kd"])
    assert yaml.safe_load((trial / "labelkeep.yaml").read_text())["tuner"] == "fixed"


@pytest.mark.parametrize("algorithm", ["tpe", "evolution", "random"])
def test_resume_skips_finished_trials_and_matches_an_uninterrupted_search(
    tmp_path: Path, fake: list[str], capsys, algorithm: str
) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    options = ["--seed", "7", "--algorithm", algorithm]
    assert tune(whole, "--trials", "4", *options, command=fake) == 0
    assert tune(parts, "--trials", "2", *options, command=fake) == 0
    before = runs(tmp_path)
    assert tune(parts, "--trials", "4", command=fake) == 0  # seed etc. come from results.json
    assert runs(tmp_path) - before == 2
    err = capsys.readouterr().err
    assert "resuming: 3 finished trial(s) read back" in err
    assert "proposes other settings on replay" not in err
    params = [[t["parameters"] for t in results(o)["trials"]] for o in (whole, parts)]
    assert params[0] == params[1]  # the tuner was replayed: same proposals as uninterrupted
    before = runs(tmp_path)
    assert tune(parts, "--trials", "4", command=fake) == 0  # nothing left to do
    assert runs(tmp_path) == before


def test_failing_trials_are_recorded_and_the_search_goes_on(
    tmp_path: Path, fake: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_RUNS", "2,4")  # trials 1 and 3
    out = tmp_path / "out"
    assert tune(out, "--trials", "3", "--seed", "3", "--algorithm", "evolution", command=fake) == 0
    trials = results(out)["trials"]
    assert [t["status"] for t in trials] == ["ok", "failed", "ok", "failed"]
    assert trials[1]["exit_code"] == 3 and "training diverged" in trials[1]["error"]
    assert results(out)["failed"] == [1, 3] and results(out)["best"]["trial"] == 2


def test_a_failing_plain_trial_stops_the_search_and_says_the_command_fails(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "2", "--seed", "1", command=[*fake, "fail"]) == 1
    err = capsys.readouterr().err
    assert "the plain trial 0 failed" in err and "the command itself fails without labelkeep" in err
    assert "exit code 3" in err and "output.log" in err
    assert not (out / "best.yaml").exists()
    assert [t["status"] for t in results(out)["trials"]] == ["failed"]  # no trial after it
    assert runs(tmp_path) == 1


def test_a_command_without_report_fails_its_trials(tmp_path: Path, fake: list[str]) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "1", "--seed", "1", command=[*fake, "no-report"]) == 1
    assert "no run report was written" in results(out)["trials"][0]["error"]


def test_a_script_without_evaluation_stops_with_advice(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    assert tune(tmp_path / "o", "--trials", "3", "--seed", "1", command=[*fake, "no-eval"]) == 2
    assert "trial 0" in (err := capsys.readouterr().err) and "model.eval()" in err
    assert runs(tmp_path) == 1  # stopped at once, not after every trial


def test_plain_recovery_stays_best_when_nothing_beats_it(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "2", "--seed", "1", command=[*fake, "plain-best"]) == 0
    assert results(out)["best"]["trial"] == 0
    assert dict(load_config(out / "best.yaml").loss.weights) == {"ce": 1.0}
    assert "best.yaml keeps plain recovery" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--trials", "2", "--algorithm", "bayes"], "valid algorithms: tpe, anneal, evolution"),
        (["--trials", "2", "--tolerance", "-1"], "tolerance must be >= 0"),
    ],
)
def test_bad_options_are_clear_errors(
    tmp_path: Path, fake: list[str], capsys, args: list[str], message: str
) -> None:
    assert tune(tmp_path / "o", *args, command=fake) == 2
    assert message in capsys.readouterr().err
    assert runs(tmp_path) == 0


def test_missing_command_exits_127(tmp_path: Path, capsys) -> None:
    assert tune(tmp_path / "o", "--trials", "1", command=["no-such-command-xyz"]) == 127
    assert "command not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{broken", "not valid JSON"),
        ('{"trials": []}', "not a results file of labelkeep tune"),
        ('{"format": "labelkeep-tune-results", "version": 1, "settings": {}}', "incomplete"),
    ],
)
def test_corrupt_or_foreign_results_name_the_file_and_the_fix(
    tmp_path: Path, fake: list[str], capsys, content: str, message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(content)
    assert tune(out, "--trials", "1", command=fake) == 2
    err = capsys.readouterr().err
    assert message in err and "results.json" in err and "start a fresh search" in err


def test_resume_refuses_another_search_and_a_lost_report(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "1", "--seed", "1", command=fake) == 0
    assert tune(out, "--trials", "2", "--algorithm", "random", command=fake) == 2
    assert "another algorithm ('tpe', now 'random')" in capsys.readouterr().err
    assert tune(out, "--trials", "2", command=[*fake, "other"]) == 2
    assert "another command" in capsys.readouterr().err
    (out / "trials" / "001" / "report.json").unlink()
    assert tune(out, "--trials", "2", command=fake) == 2
    assert "trial 1 is recorded as finished" in capsys.readouterr().err


def test_without_nni_a_random_search_takes_over(
    tmp_path: Path, fake: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name in [m for m in sys.modules if m == "nni" or m.startswith("nni.")] + ["nni"]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of nni -> ImportError
    out = tmp_path / "out"
    assert tune(out, "--trials", "3", "--seed", "4", command=fake) == 0
    err = capsys.readouterr().err
    assert "NNI is not installed" in err and "built-in random search" in err
    assert len(results(out)["trials"]) == 4 and results(out)["algorithm"].startswith("random")
    space = results(out)["settings"]["search_space"]
    for trial in results(out)["trials"][1:]:
        assert set(trial["parameters"]) == set(space)
        low, high = space["kd"]["_value"]
        assert low <= trial["parameters"]["kd"] <= high


def test_anneal_without_hyperopt_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hyperopt", None)
    with pytest.raises(LabelkeepError, match="pip install hyperopt"):
        make_algorithm("anneal", {"kd": {"_type": "uniform", "_value": [0, 1]}}, seed=1, trials=2)


def test_invalid_user_space_is_refused_before_any_trial(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"kd": {"_type": "uniform", "_value": [-1, 1]}}))
    assert tune(tmp_path / "o", "--trials", "1", "--search-space", str(space), command=fake) == 2
    assert "'kd'" in capsys.readouterr().err and runs(tmp_path) == 0


def test_an_interrupted_search_keeps_finished_trials_and_resumes(
    tmp_path: Path, fake: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real_run_trial = search.run_trial
    calls: list[int] = []

    def interrupted_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_trial(*args, **kwargs)

    monkeypatch.setattr(search, "run_trial", interrupted_second_trial)
    out = tmp_path / "out"
    assert tune(out, "--trials", "3", "--seed", "1", command=fake) == search.INTERRUPTED
    assert "interrupted; 2 trial(s) are kept" in capsys.readouterr().err
    assert [t["trial"] for t in results(out)["trials"]] == [0, 1]
    monkeypatch.setattr(search, "run_trial", real_run_trial)
    assert tune(out, "--trials", "3", command=fake) == 0
    assert [t["status"] for t in results(out)["trials"]] == ["ok"] * 4


EARLY_EXIT = (
    "import sys\n"
    "print('loading data')\n"
    "print('FileNotFoundError: data/train.csv', file=sys.stderr)\n"
    "sys.exit(int(sys.argv[1]))\n"
)


def test_a_python_command_that_exits_early_is_told_by_its_code_and_last_lines(
    tmp_path: Path,
) -> None:
    from labelkeep_plugins.config import Config
    from labelkeep_plugins.experiments.trial import run_trial

    script = tmp_path / "early.py"
    script.write_text(EARLY_EXIT)
    command = [sys.executable, "-I", str(script)]
    run = run_trial([*command, "3"], tmp_path / "t3", Config(), header="h")
    assert run.exit_code == 3 and run.report is None
    assert run.problem.startswith("exit code 3; output in ")
    # stderr's last lines, even though buffered stdout reached the log after them
    assert run.problem.endswith("its stderr:\nFileNotFoundError: data/train.csv")
    assert "must run Python" not in run.problem
    log = (tmp_path / "t3" / "output.log").read_text()
    assert sorted(log.splitlines()) == ["FileNotFoundError: data/train.csv", "loading data"]
    run = run_trial([*command, "0"], tmp_path / "t0", Config(), header="h")
    assert "exited 0" in run.problem and "must run Python" in run.problem
    assert run.problem.endswith("FileNotFoundError: data/train.csv")


def test_a_command_killed_by_a_signal_names_the_signal(tmp_path: Path) -> None:
    from labelkeep_plugins.config import Config
    from labelkeep_plugins.experiments.trial import run_trial

    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    run = run_trial([sys.executable, "-I", "-c", kill], tmp_path / "k", Config(), header="h")
    assert run.problem.startswith("killed by SIGKILL (exit code -9); output in ")


def test_the_plain_trial_of_an_early_exit_says_its_code_not_must_run_python(
    tmp_path: Path, capsys
) -> None:
    script = tmp_path / "early.py"
    script.write_text(EARLY_EXIT)
    command = [sys.executable, "-I", str(script), "3"]
    assert tune(tmp_path / "out", "--trials", "1", "--seed", "1", command=command) == 1
    err = capsys.readouterr().err
    assert "the command itself fails without labelkeep" in err and "exit code 3" in err
    assert "FileNotFoundError: data/train.csv" in err and "must run Python" not in err


def test_the_search_says_which_weights_it_searches_and_which_it_keeps(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    assert tune(tmp_path / "a", "--trials", "1", "--seed", "1", command=fake) == 0
    err = capsys.readouterr().err
    assert "labelkeep tune: searching focal_scale, hard, hinge, kd, logit_mse, temperature" in err
    assert "kept at the base configuration: ce=1 " in err
    assert "ce=" not in err.split("settings", 1)[1].replace("weights {ce: 1.0}", "")
    assert (
        tune(tmp_path / "b", "--trials", "1", "--seed", "1", "--terms", "ce,kd", command=fake) == 0
    )
    err = capsys.readouterr().err
    assert (
        "labelkeep tune: searching ce, focal_scale, kd, temperature, each drawn on its own\n" in err
    )
    assert " ce=0." in err or " ce=1 " in err  # the trial line shows the searched ce
