"""``labelkeep tune --metric``: a metric read from each trial's output constrains the search.

The fake trial prints validation lines the way a training script does (an early epoch on
stdout, the final one on stderr) and writes a run report whose accuracy is the same for
every trial, so only the printed metric can tell the trials apart on quality. Weights
with kd > 1 give fewer mismatches but a worse printed metric.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from labelkeep_plugins.cli.main import main
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.experiments.objective import Measurement, Objective, rank
from labelkeep_plugins.tuning.metric import Metric, MetricError

FAKE_TRIAL = textwrap.dedent("""
    import json, os, sys
    import yaml

    runs = os.environ["FAKE_RUNS"]
    with open(runs, "a") as log:
        log.write("run\\n")
    run = sum(1 for _ in open(runs))
    kd = yaml.safe_load(open(os.environ["LABELKEEP_CONFIG"]))["loss"]["weights"].get("kd", 0.0)
    silent = {int(n) for n in os.environ.get("FAKE_SILENT_RUNS", "").split(",") if n}
    if run not in silent:
        print("epoch 1 val acc: 10.0%  val loss: 9.9", flush=True)
        acc, loss = (85.0, 0.8) if kd > 1 else (91.5, 0.5)
        if os.environ.get("FAKE_VALUE"):
            acc = loss = os.environ["FAKE_VALUE"]
        print(f"epoch 2 val acc: {acc}%  val loss: {loss}", file=sys.stderr, flush=True)
    agreement = {"samples": 1000, "mismatches": int(round(200 - 60 * kd)),
                 "negative_flips": 0, "compressed_accuracy": 0.9}
    with open(os.environ["LABELKEEP_REPORT"], "w") as out:
        json.dump({"agreement": agreement}, out)
""")
ACC = r"val acc: ([0-9.]+)%"
LOSS = r"val loss: (\S+)"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    script = tmp_path / "fake_trial.py"
    script.write_text(FAKE_TRIAL)
    monkeypatch.setenv("FAKE_RUNS", str(tmp_path / "runs.log"))
    for name in ("FAKE_SILENT_RUNS", "FAKE_VALUE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return [sys.executable, "-I", str(script)]


@pytest.fixture
def space(tmp_path: Path) -> str:
    """Two kd values: 0.5 (fewer mismatches than plain, same metric) and 2.0 (fewest, worse)."""
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"kd": {"_type": "choice", "_value": [0.5, 2.0]}}))
    return str(path)


def tune(out: Path, *args: str, command: list[str]) -> int:
    return main(["tune", "--out", str(out), *args, "--", *command])


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def search(out: Path, space: str, *args: str, command: list[str]) -> int:
    options = ["--trials", "2", "--seed", "3", "--algorithm", "random", "--search-space", space]
    return tune(out, *options, *args, command=command)


def kd_of(data: dict, trial: int) -> float:
    return data["trials"][trial]["parameters"]["kd"]


def test_the_printed_metric_makes_the_fewest_mismatches_ineligible(
    tmp_path: Path, fake: list[str], space: str, capsys
) -> None:
    assert search(tmp_path / "report", space, command=fake) == 0
    by_report = results(tmp_path / "report")
    assert kd_of(by_report, by_report["best"]["trial"]) == 2.0  # same report accuracy for all

    out = tmp_path / "metric"
    assert search(out, space, "--metric", ACC, command=fake) == 0
    data = results(out)
    assert {kd_of(data, t) for t in (1, 2)} == {0.5, 2.0}  # both were tried
    objective = data["objective"]
    assert objective["plain_accuracy"] == pytest.approx(0.915)  # "91.5%", the last match
    assert objective["metric"] == ACC and objective["metric_mode"] == "max"
    ranking = {r["trial"]: r for r in data["ranking"]}
    for trial in (1, 2):
        high_kd = kd_of(data, trial) == 2.0
        assert ranking[trial]["metric"] == pytest.approx(0.85 if high_kd else 0.915)
        assert ranking[trial]["feasible"] is not high_kd
    best = data["best"]["trial"]
    assert kd_of(data, best) == 0.5
    assert min(r["mismatches"] for r in data["ranking"]) < data["best"]["agreement"]["mismatches"]
    assert data["settings"]["metric"] == ACC and data["settings"]["metric_mode"] == "max"
    err = capsys.readouterr().err
    assert "  metric  " in err and "below the metric's floor (91.50%)" in err


def test_min_mode_is_a_ceiling_in_the_metric_units(
    tmp_path: Path, fake: list[str], space: str
) -> None:
    out = tmp_path / "strict"
    assert search(out, space, "--metric", LOSS, "--metric-mode", "min", command=fake) == 0
    data = results(out)
    assert data["objective"]["plain_accuracy"] == pytest.approx(0.5)  # a loss: not rescaled
    assert data["objective"]["accuracy_floor"] == pytest.approx(0.5)  # the ceiling
    assert kd_of(data, data["best"]["trial"]) == 0.5
    loose = tmp_path / "loose"
    options = ["--metric", LOSS, "--metric-mode", "min", "--tolerance", "0.4"]
    assert search(loose, space, *options, command=fake) == 0  # 0.8 <= 0.5 + 0.4
    assert kd_of(results(loose), results(loose)["best"]["trial"]) == 2.0


def test_a_trial_without_the_metric_fails_and_the_search_goes_on(
    tmp_path: Path, fake: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SILENT_RUNS", "2")  # trial 1 prints nothing
    out = tmp_path / "out"
    assert tune(out, "--trials", "2", "--seed", "1", "--metric", ACC, command=fake) == 0
    trials = results(out)["trials"]
    assert [t["status"] for t in trials] == ["ok", "failed", "ok"]
    error = trials[1]["error"]
    assert "metric not found" in error and ACC in error and "output.log" in error
    assert results(out)["failed"] == [1]


def test_a_match_that_is_not_a_number_fails_the_trial(
    tmp_path: Path, fake: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("FAKE_VALUE", "n/a")
    out = tmp_path / "out"
    assert (
        tune(out, "--trials", "1", "--seed", "1", "--metric", r"val acc: (\S+)%", command=fake) == 1
    )
    trials = results(out)["trials"]
    assert [t["status"] for t in trials] == ["failed"]  # the plain trial's failure stops it
    assert "metric is not a number" in trials[0]["error"] and "'n/a'" in trials[0]["error"]
    err = capsys.readouterr().err
    assert "capture only the number" in err and "it ran, but could not be judged" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "val acc: ([0-9.]+"], "not a valid Python regular expression"),
        (["--metric", "val acc: [0-9.]+"], "has 0 capturing groups; it needs exactly one"),
        (["--metric", "(val|test) acc: ([0-9.]+)"], "has 2 capturing groups"),
        (["--metric-mode", "min"], "--metric-mode needs --metric REGEX"),
    ],
)
def test_bad_metric_options_are_refused_before_any_trial(
    tmp_path: Path, fake: list[str], capsys, args: list[str], message: str
) -> None:
    assert tune(tmp_path / "o", "--trials", "1", *args, command=fake) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs.log").exists()


def test_resume_refuses_another_metric_and_rereads_the_outputs(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "1", "--seed", "1", "--metric", ACC, command=fake) == 0
    assert tune(out, "--trials", "2", "--metric", LOSS, command=fake) == 2
    assert "another metric" in (err := capsys.readouterr().err) and "the same --metric" in err
    assert tune(out, "--trials", "2", command=[*fake]) == 0  # the stored --metric is kept
    assert results(out)["objective"]["plain_accuracy"] == pytest.approx(0.915)
    assert tune(out, "--trials", "2", "--metric", ACC, "--metric-mode", "min", command=fake) == 2
    assert "another metric_mode ('max', now 'min')" in capsys.readouterr().err
    (out / "trials" / "001" / "output.log").write_text("no figures any more\n")
    assert tune(out, "--trials", "3", command=fake) == 2
    err = capsys.readouterr().err
    assert "trial 1 is recorded as finished" in err and "metric not found" in err


def test_a_search_without_metric_refuses_one_on_resume(
    tmp_path: Path, fake: list[str], capsys
) -> None:
    out = tmp_path / "out"
    assert tune(out, "--trials", "1", "--seed", "1", command=fake) == 0
    assert tune(out, "--trials", "2", "--metric", ACC, command=fake) == 2
    assert "another metric (None, now 'val acc: ([0-9.]+)%')" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "mode", "value"),
    [
        ("val acc: 91.5%", "max", 0.915),  # a percentage
        ("val acc: 0.915", "max", 0.915),  # a fraction
        ("val acc: 1", "max", 1.0),  # 1 is 100%, not 1%
        ("val acc: 2.5", "min", 2.5),  # a loss is used as printed
        ("val acc: 50\nval acc: 80\nval acc: 70\n", "max", 0.7),  # the last match
    ],
)
def test_values_are_read_from_the_last_match(text: str, mode: str, value: float) -> None:
    assert Metric(r"val acc: ([0-9.]+)", mode).read(text, "out") == pytest.approx(value)


def test_lines_anchor_with_caret() -> None:
    text = "train acc: 99\nacc: 91\nval acc: 5\n"
    assert Metric(r"^acc: (\d+)").read(text, "out") == pytest.approx(0.91)


@pytest.mark.parametrize(
    ("text", "message"),
    [("nothing here", "metric not found"), ("acc: nan", "not a number"), ("acc: x", "'x'")],
)
def test_unusable_outputs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(MetricError, match=message):
        Metric(r"acc: (\S+)").read(text, "trial 3 output")


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="max, min"):
        Metric(r"(x)", "median")


def test_min_objective_keeps_trials_at_or_under_the_ceiling() -> None:
    objective = Objective(0.5, tolerance=0.1, metric="min")
    trials = {
        0: Measurement(1000, 200, 0, 0.9, metric=0.5),
        1: Measurement(1000, 100, 0, 0.9, metric=0.61),
        2: Measurement(1000, 150, 0, 0.9, metric=0.6),
        3: Measurement(1000, 120, 0, 0.9, metric=None),
    }
    ranking = rank(trials, objective)
    assert [r.trial for r in ranking] == [2, 0, 1, 3]
    assert [r.feasible for r in ranking] == [True, True, False, False]
    assert Objective(2.0, tolerance=1.5, metric="min").accuracy_floor == 3.5  # loss units


def test_a_search_space_smaller_than_the_trials_stops_cleanly(
    tmp_path: Path, fake: list[str], space: str, capsys
) -> None:
    """Two settings and five trials: the search ends after the space is used up, no traceback."""
    options = ["--trials", "5", "--seed", "3", "--algorithm", "random", "--search-space", space]
    assert tune(tmp_path / "out", *options, command=fake) == 0
    data = results(tmp_path / "out")
    assert "no untried setting left after 2 trial(s)" in capsys.readouterr().err
    assert sorted(kd_of(data, trial) for trial in (1, 2)) == [0.5, 2.0]
    assert len(data["trials"]) == 3  # plain, then the two settings
