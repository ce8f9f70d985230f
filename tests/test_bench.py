"""``labelkeep bench`` without training: aggregation, tables, the record, resume and bad input.

Runs and tuning are replaced by fakes (``run_bench``'s ``run``/``tune`` seams), so these
tests take milliseconds; ``test_bench_quick.py`` runs the real thing once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from labelkeep_plugins.bench import cells, session
from labelkeep_plugins.bench.aggregate import headline, reduction, summarize
from labelkeep_plugins.bench.cells import CELLS, PROFILES, parse_names, select_cells
from labelkeep_plugins.bench.plan import BenchSettings, RunKey, method_config
from labelkeep_plugins.bench.progress import PrefixedStream, Progress
from labelkeep_plugins.bench.render import factor, markdown_table, text_table
from labelkeep_plugins.bench.store import BenchRecord, RunResult, check_same, load_record
from labelkeep_plugins.bench.tuned import TuningOutcome
from labelkeep_plugins.cli import main
from labelkeep_plugins.config import Config
from labelkeep_plugins.errors import ConfigError

# Mismatches, negative flips and accuracy a fake run reports, by method and seed.
FIGURES = {
    "plain": [(100, 60, 0.90), (120, 70, 0.89), (110, 66, 0.91)],
    "perturbed": [(105, 62, 0.90), (118, 69, 0.89), (112, 66, 0.91)],
    "default": [(90, 50, 0.90), (100, 60, 0.88), (95, 55, 0.90)],
    "tuned": [(50, 20, 0.91), (60, 25, 0.90), (40, 15, 0.92)],
    "online": [(80, 40, 0.90), (80, 40, 0.90), (80, 40, 0.90)],
}


def result(cell: str, method: str, seed: int, *, ok: bool = True) -> RunResult:
    mismatches, flips, accuracy = FIGURES[method][seed % 3]
    figures = {
        "samples": 1000,
        "mismatches": mismatches,
        "negative_flips": flips,
        "accuracy": accuracy,
        "reference_accuracy": 0.95,
        "per_class_mismatch_rate": {"0": 0.1, "1": mismatches / 1000},
        "training_steps_with_loss": 100,
        "reference_intact": True,
    }
    key = RunKey(cell, method, seed)
    return RunResult(key, "ok", 1.0, figures) if ok else RunResult(key, "failed", 1.0, error="x")


class FakeRuns:
    """Stands in for execute_run: records what ran, can interrupt at the n-th run."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls: list[tuple[RunKey, Config]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, key: RunKey, command: Sequence[str], config: Config, directory: Path):
        if self.interrupt_at is not None and len(self.calls) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((key, config))
        assert "--split" in command and command[command.index("--split") + 1] == "test"
        return result(key.cell, key.method, key.seed)


def fake_tune(outcome: TuningOutcome):
    calls: list[str] = []

    def tune(cell: Any, settings: BenchSettings, out: Path, stream: Any) -> TuningOutcome:
        calls.append(cell.key)
        return outcome

    tune.calls = calls  # type: ignore[attr-defined]
    return tune


TUNED = TuningOutcome({"weights": {"ce": 1.0, "kd": 0.5}}, 2, {"kd": 0.5})


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    runs = FakeRuns()
    monkeypatch.setattr(session, "execute_run", runs)
    monkeypatch.setattr(session, "tune_cell", fake_tune(TUNED))
    return runs


def bench(out: Path, *args: str) -> int:
    return main(["bench", "--out", str(out), *args])


# Aggregation ------------------------------------------------------------------------------


def test_reduction_is_a_ratio_of_sums_over_paired_seeds() -> None:
    plain = {0: result("c", "plain", 0), 1: result("c", "plain", 1)}
    tuned = {0: result("c", "tuned", 0), 1: result("c", "tuned", 1)}
    assert reduction(plain, tuned, [0, 1], "mismatches") == pytest.approx(220 / 110)
    assert reduction(plain, tuned, [0, 1], "negative_flips") == pytest.approx(130 / 45)
    assert reduction(plain, tuned, [], "mismatches") is None


def test_reduction_when_nothing_is_left() -> None:
    plain, method = result("c", "plain", 0), result("c", "tuned", 0)
    method.figures["mismatches"] = 0
    assert reduction({0: plain}, {0: method}, [0], "mismatches") == math.inf
    plain.figures["mismatches"] = 0
    assert reduction({0: plain}, {0: method}, [0], "mismatches") == 1.0
    assert factor(math.inf) == "inf (none left)" and factor(None) == "n/a"


def test_summary_rows_spread_and_accuracy_gap() -> None:
    runs = {r.key: r for m in ("plain", "default") for s in range(3) for r in [result("c", m, s)]}
    runs[RunKey("c", "default", 2)] = result("c", "default", 2, ok=False)
    rows = summarize(runs, ["c"], ["plain", "default", "tuned"])
    assert [r.method for r in rows] == ["plain", "default"]  # no tuned run at all: no row
    plain, default = rows
    assert plain.mismatches.mean == pytest.approx(110) and plain.mismatches.sd == pytest.approx(10)
    assert default.seeds == (0, 1) and default.failed == 1
    assert default.mismatch_reduction == pytest.approx(220 / 190)
    assert default.accuracy_vs_plain == pytest.approx(-0.5)
    assert default.per_class["1"] == pytest.approx(0.095)
    table = text_table(rows)
    assert "accuracy %" in table.splitlines()[0] and "1 failed" in table
    assert "89.0 ± 1.4*" in table  # below plain's accuracy is starred
    assert markdown_table(rows).count("\n") == 3


def test_headline_median_best_and_cells_below_plain() -> None:
    runs = {}
    for cell, method_of_cell in (("a", "tuned"), ("b", "default")):
        for seed in range(3):
            for method in ("plain", "tuned"):
                source = method_of_cell if method == "tuned" else "plain"
                r = result(cell, source, seed)
                r.key = RunKey(cell, method, seed)
                runs[r.key] = r
    line = headline(summarize(runs, ["a", "b"], ["plain", "tuned"]), "tuned")
    assert line["cells"] == 2 and line["best_mismatch_cell"] == "a"
    assert line["best_mismatch_reduction"] == pytest.approx(330 / 150)
    assert line["median_mismatch_reduction"] == pytest.approx((330 / 150 + 330 / 285) / 2)
    assert line["cells_below_plain_accuracy"] == ["b"] and line["cells_not_reduced"] == []


# The record ------------------------------------------------------------------------------


def settings(**changes: Any) -> BenchSettings:
    base = {
        "profile": "default",
        "cells": ("torch-pruning/mnist1d",),
        "methods": ("plain", "default", "tuned"),
        "seeds": (0, 1, 2),
        "trials": 2,
        "epochs": 6,
        "pretrain_epochs": 15,
        "validation_seeds": (1000, 1001),
    }
    return BenchSettings(**{**base, **changes})


def test_record_round_trip_and_infinite_ratios(tmp_path: Path) -> None:
    record = BenchRecord(settings())
    for seed in range(2):
        r = result("torch-pruning/mnist1d", "plain", seed)
        record.runs[r.key] = r
    record.save(tmp_path, {"ratio": math.inf})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"] == {"ratio": "inf"}
    loaded = load_record(tmp_path)
    assert loaded is not None and loaded.settings == record.settings
    assert loaded.runs == record.runs


def test_other_settings_cannot_resume(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"another seeds .*pass another --out"):
        check_same(settings(), settings(seeds=(0,)), tmp_path)


def test_a_damaged_record_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot resume from .* delete it"):
        load_record(tmp_path)


def test_method_configs() -> None:
    assert dict(method_config("plain").loss.weights) == {"ce": 1.0}
    assert method_config("default") == Config(tuner="fixed")  # the fixed default weights
    assert method_config("online").tuner == "online"
    assert method_config("plain").tuner == method_config("tuned", {}).tuner == "fixed"
    assert method_config("tuned", {"weights": {"kd": 0.3}}).loss.weights["kd"] == 0.3
    with pytest.raises(ValueError, match="tuned"):
        method_config("tuned")


# Cells and names -------------------------------------------------------------------------


def test_unknown_names_list_the_valid_ones() -> None:
    assert parse_names(["nni,brevitas", "nni"], ["nni", "brevitas"], "framework") == (
        "nni",
        "brevitas",
    )
    with pytest.raises(ConfigError, match="unknown framework 'tf'; valid frameworks: nni, b"):
        parse_names(["tf"], ["nni", "brevitas"], "framework")


def test_cell_selection_and_shapes() -> None:
    assert len(select_cells(PROFILES["default"], (), ())) == 6
    quick = select_cells(PROFILES["quick"], (), ())
    assert {c.framework for c in quick} == {"torch-pruning", "nni", "brevitas"}
    assert [c.key for c in select_cells(PROFILES["quick"], ("nni",), ())] == [
        "nni/mnist1d",
        "nni/digits",
    ]
    assert len({c.shape for c in CELLS}) >= 4  # several model shapes


def test_progress_line_and_prefixed_stream(capsys) -> None:
    ticks = iter([0.0, 10.0, 20.0])
    progress = Progress(4, _Stderr(), clock=lambda: next(ticks))
    progress.skip(1)
    progress.step("a run")
    assert "[2/4] 10s, ~20s left | a run" in capsys.readouterr().err
    stream = PrefixedStream(_Stderr(), "  tune | ")
    stream.write("one\ntw")
    stream.write("o\n")
    assert capsys.readouterr().err == "  tune | one\n  tune | two\n"


class _Stderr:
    def write(self, text: str) -> int:
        import sys

        return sys.stderr.write(text)

    def flush(self) -> None:
        return None


# The command, with fake runs -------------------------------------------------------------


def test_full_bench_with_fakes_writes_every_output(tmp_path: Path, fakes: FakeRuns, capsys) -> None:
    out = tmp_path / "out"
    assert bench(out, "--frameworks", "torch-pruning", "--datasets", "mnist1d") == 0
    assert len(fakes.calls) == 15  # 5 methods x 3 seeds
    tuned_config = next(c for k, c in fakes.calls if k.method == "tuned")
    assert tuned_config.loss.weights["kd"] == 0.5
    data = json.loads((out / "results.json").read_text())
    assert data["tuning"]["torch-pruning/mnist1d"]["best_trial"] == 2
    rows = data["summary"]["rows"]
    assert [r["method"] for r in rows] == ["plain", "perturbed", "default", "tuned", "online"]
    assert rows[1]["mismatch_reduction"] == pytest.approx(330 / 335)  # the noise floor
    assert rows[3]["mismatch_reduction"] == pytest.approx(330 / 150)
    assert rows[4]["mismatch_reduction"] == pytest.approx(330 / 240)
    assert "| torch-pruning/mnist1d |" in (out / "results.md").read_text()
    captured = capsys.readouterr()
    assert "labelkeep tuned" in captured.out and "median mismatch reduction" in captured.out
    assert "labelkeep online" in captured.out
    assert "plain, perturbed" in captured.out
    assert "[24/24]" in captured.err  # 15 runs and 8 + 1 tuning trials


def test_no_online_row_without_an_online_tuner(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from labelkeep_plugins import plugins

    monkeypatch.setattr(plugins, "tuner_factories", lambda: {"fixed": None})
    options = ["--frameworks", "brevitas", "--datasets", "digits", "--seeds", "1"]
    assert bench(tmp_path, *options, "--trials", "0") == 0
    assert [k.method for k, _ in fakes.calls] == ["plain", "perturbed", "default"]
    assert "no online row" in capsys.readouterr().out


def test_interrupted_bench_keeps_runs_and_resume_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "out"
    options = ["--frameworks", "torch-pruning", "--datasets", "mnist1d", "--trials", "2"]
    monkeypatch.setattr(session, "tune_cell", fake_tune(TUNED))
    first = FakeRuns(interrupt_at=5)
    monkeypatch.setattr(session, "execute_run", first)
    assert bench(out, *options) == 130
    assert "Rerun the same command with --resume" in capsys.readouterr().err
    kept = json.loads((out / "results.json").read_text())["runs"]
    assert len(kept) == 4
    assert bench(out, *options) == 2  # no --resume: refuses to overwrite
    assert "pass --resume to continue" in capsys.readouterr().err
    second = FakeRuns()
    monkeypatch.setattr(session, "execute_run", second)
    assert bench(out, *options, "--resume") == 0
    assert {k for k, _ in second.calls}.isdisjoint({k for k, _ in first.calls})
    assert len(second.calls) == 11
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 15
    assert bench(out, *options, "--resume", "--seeds", "2") == 2  # other settings


def test_tuning_that_keeps_plain_reuses_plain_runs(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = TuningOutcome({"weights": {"ce": 1.0}}, 0, None)
    monkeypatch.setattr(session, "tune_cell", fake_tune(kept))
    assert bench(tmp_path, "--frameworks", "nni", "--datasets", "digits", "--seeds", "2") == 0
    methods = [k.method for k, _ in fakes.calls]
    assert methods == [
        *("plain", "plain", "perturbed", "perturbed"),
        *("default", "default", "online", "online"),
    ]
    rows = json.loads((tmp_path / "results.json").read_text())["summary"]["rows"]
    tuned = next(row for row in rows if row["method"] == "tuned")
    assert tuned["mismatch_reduction"] == 1.0 and "plain's runs" in tuned["notes"][0]


def test_failed_tuning_fails_only_the_tuned_row(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = TuningOutcome(None, None, None, "every trial failed")
    monkeypatch.setattr(session, "tune_cell", fake_tune(failed))
    assert bench(tmp_path, "--frameworks", "nni", "--datasets", "digits", "--seeds", "1") == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    tuned = [r for r in runs if r["method"] == "tuned"]
    assert tuned[0]["status"] == "failed" and "every trial failed" in tuned[0]["error"]


def test_no_tuning_with_zero_trials_and_an_online_row_when_registered(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelkeep_plugins import plugins

    monkeypatch.setattr(plugins, "tuner_factories", lambda: {"fixed": None, "online": None})
    options = ["--frameworks", "brevitas", "--datasets", "digits", "--seeds", "1"]
    assert bench(tmp_path, *options, "--trials", "0") == 0
    assert [k.method for k, _ in fakes.calls] == ["plain", "perturbed", "default", "online"]
    assert fakes.calls[-1][1].tuner == "online"
    notes = json.loads((tmp_path / "results.json").read_text())["notes"]
    assert notes == ["no tuned row: --trials 0"]


def test_a_framework_not_installed_is_skipped_and_the_rest_run(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real = cells.importlib.util.find_spec
    monkeypatch.setattr(
        cells.importlib.util, "find_spec", lambda name: None if name == "nni" else real(name)
    )
    assert bench(tmp_path, "--datasets", "digits", "--seeds", "1", "--trials", "1") == 0
    assert {k.cell for k, _ in fakes.calls} == {"torch-pruning/digits", "brevitas/digits"}
    captured = capsys.readouterr()
    assert "skipping nni/digits: nni not installed (no module nni): pip install" in captured.err
    assert "skipped: nni/digits" in captured.out
    data = json.loads((tmp_path / "results.json").read_text())
    assert "nni/digits" in data["skipped"] and "nni/digits" not in data["settings"]["cells"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frameworks", "tensorflow"], "valid frameworks: torch-pruning, nni, brevitas"),
        (["--datasets", "cifar"], "valid datasets: mnist1d, digits"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--trials", "-1"], "--trials must be at least 0"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    tmp_path: Path, fakes: FakeRuns, capsys, args: list[str], message: str
) -> None:
    assert bench(tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert fakes.calls == [] and not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written(tmp_path: Path, fakes: FakeRuns, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert bench(blocker / "out", "--quick") == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert fakes.calls == []
    assert main(["bench", "--cost", "--out", str(blocker / "out")]) == 2


def test_the_plot_is_drawn_or_skipped_with_a_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelkeep_plugins.bench import plot

    runs = {r.key: r for m in ("plain", "tuned") for s in range(2) for r in [result("c", m, s)]}
    rows = summarize(runs, ["c"], ["plain", "tuned"])
    pytest.importorskip("matplotlib")
    path, line = plot.write_plot(rows, tmp_path)
    assert path is not None and path.stat().st_size > 1000 and line == f"wrote {path}"
    real_import = __import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_matplotlib)
    assert plot.write_plot(rows, tmp_path / "none") == (None, plot.MISSING)
    assert "pip install 'labelkeep[bench]'" in plot.MISSING


def test_runs_get_one_thread_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with session.single_threaded_children():
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with session.single_threaded_children():
        assert os.environ["OMP_NUM_THREADS"] == "2"
