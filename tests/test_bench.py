"""``labelkeep bench`` without training: the command, its rows, the record, resume, bad input.

Runs and tuning are replaced by fakes (``run_bench``'s ``run``/``tune`` seams), so these
tests take milliseconds; ``test_bench_quick.py`` runs the real thing once. The statistics
are in ``test_bench_stats.py``, budgets and parallel runs in ``test_bench_budgets.py``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from labelkeep_plugins.bench import cells, session
from labelkeep_plugins.bench.cells import CELLS, PROFILES, parse_names, select_cells
from labelkeep_plugins.bench.plan import BenchSettings, RunKey
from labelkeep_plugins.bench.progress import PrefixedStream, Progress
from labelkeep_plugins.bench.store import BenchRecord, RunResult, check_same, load_record
from labelkeep_plugins.bench.tuned import TuningOutcome
from labelkeep_plugins.cli.main import main
from labelkeep_plugins.config import Config
from labelkeep_plugins.errors import ConfigError

# Mismatches, negative flips and accuracy a fake run reports, by method and seed.
FIGURES = {
    "plain": [(100, 60, 0.90), (120, 70, 0.89), (110, 66, 0.91)],
    "perturbed": [(105, 62, 0.90), (118, 69, 0.89), (112, 66, 0.91)],
    "default": [(90, 50, 0.90), (100, 60, 0.88), (95, 55, 0.90)],
    "softadapt": [(70, 40, 0.90), (75, 45, 0.90), (80, 50, 0.91)],
    "tuned": [(50, 20, 0.91), (60, 25, 0.90), (40, 15, 0.92)],
    "fm": [(85, 45, 0.90), (95, 55, 0.89), (90, 50, 0.91)],
    "limit": [(30, 10, 0.92), (40, 15, 0.91), (35, 12, 0.92)],
    "online": [(80, 40, 0.90), (80, 40, 0.90), (80, 40, 0.90)],
}
TP_MNIST1D = "torch-pruning/mnist1d/moderate"


def result(cell: str, method: str, seed: int, *, ok: bool = True, budget: int = 1) -> RunResult:
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
    key = RunKey(cell, method, seed, budget)
    return RunResult(key, "ok", 1.0, figures) if ok else RunResult(key, "failed", 1.0, error="x")


class FakeRuns:
    """Stands in for execute_run: records what ran (and the command), can interrupt."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls: list[tuple[RunKey, Config]] = []
        self.commands: dict[RunKey, list[str]] = {}
        self.interrupt_at = interrupt_at
        self._lock = threading.Lock()

    def __call__(self, key: RunKey, command: Sequence[str], config: Config, directory: Path):
        with self._lock:
            if self.interrupt_at is not None and len(self.calls) + 1 == self.interrupt_at:
                raise KeyboardInterrupt
            self.calls.append((key, config))
            self.commands[key] = list(command)
        assert "--split" in command and command[command.index("--split") + 1] == "test"
        assert directory == key.directory(directory.parents[2].parent)
        return result(key.cell, key.method, key.seed, budget=key.budget)

    def epochs(self, key: RunKey) -> int:
        command = self.commands[key]
        return int(command[command.index("--epochs") + 1])


def fake_tune(outcome: TuningOutcome):
    calls: list[str] = []

    def tune(cell: Any, settings: BenchSettings, out: Path, stream: Any) -> TuningOutcome:
        calls.append(cell.key)
        return outcome

    tune.calls = calls  # type: ignore[attr-defined]
    return tune


TUNED = TuningOutcome({"weights": {"ce": 1.0, "kd": 0.5}}, 2, {"kd": 0.5})


def install_fakes(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    """Fake runs and a tuning that finds ``TUNED``, in place of the real ones."""
    runs = FakeRuns()
    monkeypatch.setattr(session, "execute_run", runs)
    monkeypatch.setattr(session, "tune_cell", fake_tune(TUNED))
    return runs


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    return install_fakes(monkeypatch)


def register_plugins(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Pretend exactly these tuners (and the fm loss term, when named) are registered."""
    from labelkeep_plugins import plugins

    real = getattr(plugins.loss_terms, "real", plugins.loss_terms)
    tuners = {"fixed": None, **{n: None for n in names if n != "fm"}}
    terms = {k: v for k, v in real().items() if k != "fm"}
    if "fm" in names:
        terms["fm"] = real().get("fm")

    def loss_terms() -> dict[str, Any]:
        return terms

    loss_terms.real = real  # type: ignore[attr-defined]
    monkeypatch.setattr(plugins, "tuner_factories", lambda: tuners)
    monkeypatch.setattr(plugins, "loss_terms", loss_terms)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch):
    return lambda *names: register_plugins(monkeypatch, *names)


def bench(out: Path, *args: str) -> int:
    """``labelkeep bench``, one run at a time unless ``--jobs`` says (the order is then fixed)."""
    jobs = [] if "--jobs" in args else ["--jobs", "1"]
    return main(["bench", "--out", str(out), *jobs, *args])


# The record ------------------------------------------------------------------------------


def settings(**changes: Any) -> BenchSettings:
    base = {
        "profile": "default",
        "cells": (TP_MNIST1D,),
        "methods": ("plain", "default", "tuned"),
        "seeds": (0, 1, 2),
        "trials": 2,
        "epochs": 6,
        "pretrain_epochs": 15,
        "validation_seeds": (1000, 1001),
    }
    return BenchSettings(**{**base, **changes})


def test_record_round_trip_and_infinite_ratios(tmp_path: Path) -> None:
    record = BenchRecord(settings(budgets=(1, 3)))
    for seed in range(2):
        for budget in (1, 3):
            r = result(TP_MNIST1D, "plain", seed, budget=budget)
            record.runs[r.key] = r
    record.save(tmp_path, {"ratio": math.inf})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"] == {"ratio": "inf"}
    assert data["settings"]["budgets"] == [1, 3] and {r["budget"] for r in data["runs"]} == {1, 3}
    loaded = load_record(tmp_path)
    assert loaded is not None and loaded.settings == record.settings
    assert loaded.runs == record.runs and len(loaded.runs) == 4


def test_a_record_from_before_budgets_still_loads(tmp_path: Path) -> None:
    record = BenchRecord(settings(methods=("plain", "online")))
    record.runs[RunKey(TP_MNIST1D, "online", 0)] = result(TP_MNIST1D, "online", 0)
    record.save(tmp_path, {})
    data = json.loads((tmp_path / "results.json").read_text())
    del data["settings"]["budgets"]
    for run in data["runs"]:
        del run["budget"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    loaded = load_record(tmp_path)
    assert loaded is not None and loaded.settings.budgets == (1,)
    assert list(loaded.runs) == [RunKey(TP_MNIST1D, "online", 0, 1)]


def test_other_settings_cannot_resume(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"another seeds .*pass another --out"):
        check_same(settings(), settings(seeds=(0,)), tmp_path)
    with pytest.raises(ConfigError, match=r"another budgets \(\[1\], now \[1, 3\]\)"):
        check_same(settings(), settings(budgets=(1, 3)), tmp_path)


def test_a_damaged_record_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot resume from .* delete it"):
        load_record(tmp_path)


# Cells and names -------------------------------------------------------------------------


def test_unknown_names_list_the_valid_ones() -> None:
    assert parse_names(["nni,brevitas", "nni"], ["nni", "brevitas"], "framework") == (
        "nni",
        "brevitas",
    )
    with pytest.raises(ConfigError, match="unknown framework 'tf'; valid frameworks: nni, b"):
        parse_names(["tf"], ["nni", "brevitas"], "framework")


def test_the_twelve_cells_and_their_keys() -> None:
    keys = [cell.key for cell in CELLS]
    assert len(keys) == len(set(keys)) == 12
    assert keys == [
        f"{framework}/{dataset}/{level}"
        for framework in ("torch-pruning", "nni", "brevitas")
        for dataset in ("mnist1d", "digits")
        for level in ("moderate", "heavy")
    ]
    assert {cell.slug for cell in CELLS} >= {"nni-digits-heavy", "brevitas-mnist1d-moderate"}
    by_key = {cell.key: cell for cell in CELLS}
    moderate, heavy = by_key["nni/digits/moderate"], by_key["nni/digits/heavy"]
    assert moderate.model_slug == heavy.model_slug == "nni-digits"  # one shared checkpoint
    assert moderate.model_args == heavy.model_args and moderate.args != heavy.args


def test_cell_selection_and_shapes() -> None:
    assert len(select_cells(PROFILES["default"], (), ())) == 12
    assert len(select_cells(PROFILES["full"], (), ())) == 12
    quick = select_cells(PROFILES["quick"], (), ())
    assert len(quick) == 3 and {c.framework for c in quick} == {"torch-pruning", "nni", "brevitas"}
    assert {c.dataset for c in quick} == {"mnist1d", "digits"}
    assert {c.level for c in quick} == {"moderate", "heavy"}
    assert [c.key for c in select_cells(PROFILES["quick"], ("nni",), ())] == [
        "nni/mnist1d/moderate",
        "nni/mnist1d/heavy",
        "nni/digits/moderate",
        "nni/digits/heavy",
    ]
    heavy_digits = select_cells(PROFILES["default"], (), ("digits",), ("heavy",))
    assert [c.key for c in heavy_digits] == [
        "torch-pruning/digits/heavy",
        "nni/digits/heavy",
        "brevitas/digits/heavy",
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


def test_the_default_bench_runs_its_rows_on_every_cell(
    tmp_path: Path, fakes: FakeRuns, registered, capsys
) -> None:
    registered("softadapt")
    assert bench(tmp_path, "--jobs", "2") == 0
    assert len(fakes.calls) == 12 * 4 * 3  # cells x rows x seeds, at the script's budget
    assert {k.method for k, _ in fakes.calls} == {"plain", "perturbed", "default", "softadapt"}
    assert {k.budget for k, _ in fakes.calls} == {1} and not fakes.commands.keys() - {
        k for k, _ in fakes.calls
    }
    assert {fakes.epochs(k) for k, _ in fakes.calls} == {PROFILES["default"].epochs}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["notes"][0].startswith("no tuned row: no tuning trials in the default profile")
    assert data["settings"]["profile"] == "default" and data["settings"]["budgets"] == [1]
    levels = {(h["method"], h["level"]) for h in data["summary"]["headline"]}
    assert levels == {
        (m, lv) for m in ("perturbed", "default", "softadapt") for lv in ("moderate", "heavy")
    }
    assert "labelkeep softadapt" in capsys.readouterr().out


def test_full_bench_on_one_cell_with_fakes_writes_every_output(
    tmp_path: Path, fakes: FakeRuns, registered, capsys
) -> None:
    registered("softadapt", "fm")
    out = tmp_path / "out"
    options = ["--full", "--frameworks", "torch-pruning", "--datasets", "mnist1d"]
    assert bench(out, *options, "--levels", "moderate", "--seeds", "3") == 0
    assert len(fakes.calls) == 2 * 6 * 3 + 3  # budgets x rows x seeds, and the limit row
    tuned_config = next(c for k, c in fakes.calls if k.method == "tuned")
    assert tuned_config.loss.weights["kd"] == 0.5
    data = json.loads((out / "results.json").read_text())
    assert data["tuning"][TP_MNIST1D]["best_trial"] == 2
    rows = data["summary"]["rows"]
    methods = ["plain", "perturbed", "default", "softadapt", "tuned", "fm"]
    assert [(r["method"], r["budget"]) for r in rows] == [
        *((m, 1) for m in methods),
        *((m, 3) for m in methods),
        ("limit", 10),
    ]
    assert rows[1]["mismatch_reduction"] == pytest.approx(330 / 335)  # the noise floor
    assert rows[4]["mismatch_reduction"] == pytest.approx(330 / 150)
    assert rows[4]["gap_closed"] == pytest.approx(100 * (110 - 50) / (110 - 35))
    low, high = rows[4]["mismatch_reduction_ci"]
    assert low <= 330 / 150 <= high
    assert data["summary"]["bootstrap"]["resamples"] == 2000
    assert f"| {TP_MNIST1D} |" in (out / "results.md").read_text()
    captured = capsys.readouterr()
    assert "labelkeep tuned" in captured.out and "median mismatch reduction" in captured.out
    assert "limit (KD, 10x epochs)" in captured.out and "labelkeep default + fm" in captured.out
    assert "plain, perturbed" in captured.out
    assert "[48/48]" in captured.err  # 39 runs and 8 + 1 tuning trials


def test_interrupted_bench_keeps_runs_and_resume_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registered, capsys
) -> None:
    registered("softadapt")
    out = tmp_path / "out"
    options = ["--frameworks", "torch-pruning", "--datasets", "mnist1d", "--levels", "moderate"]
    options += ["--trials", "2"]
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
    assert len(second.calls) == 11  # 5 rows x 3 seeds, less the 4 kept
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 15
    assert bench(out, *options, "--resume", "--seeds", "2") == 2  # other settings


def test_tuning_that_keeps_plain_reuses_plain_runs(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch, registered
) -> None:
    registered("softadapt")
    kept = TuningOutcome({"weights": {"ce": 1.0}}, 0, None)
    monkeypatch.setattr(session, "tune_cell", fake_tune(kept))
    options = ["--frameworks", "nni", "--datasets", "digits", "--levels", "heavy"]
    assert bench(tmp_path, *options, "--seeds", "2", "--trials", "3") == 0
    methods = [k.method for k, _ in fakes.calls]
    assert methods == [
        *("plain", "plain", "perturbed", "perturbed"),
        *("default", "default", "softadapt", "softadapt"),
    ]
    rows = json.loads((tmp_path / "results.json").read_text())["summary"]["rows"]
    tuned = next(row for row in rows if row["method"] == "tuned")
    assert tuned["mismatch_reduction"] == 1.0 and "plain's runs" in tuned["notes"][0]


def test_failed_tuning_fails_only_the_tuned_row(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = TuningOutcome(None, None, None, "every trial failed")
    monkeypatch.setattr(session, "tune_cell", fake_tune(failed))
    options = ["--frameworks", "nni", "--datasets", "digits", "--levels", "heavy", "--seeds", "1"]
    assert bench(tmp_path, *options, "--trials", "2") == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    tuned = [r for r in runs if r["method"] == "tuned"]
    assert tuned[0]["status"] == "failed" and "every trial failed" in tuned[0]["error"]
    assert all(r["status"] == "ok" for r in runs if r["method"] != "tuned")


def test_a_framework_not_installed_is_skipped_and_the_rest_run(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real = cells.importlib.util.find_spec
    monkeypatch.setattr(
        cells.importlib.util, "find_spec", lambda name: None if name == "nni" else real(name)
    )
    options = ["--datasets", "digits", "--levels", "heavy", "--seeds", "1"]
    assert bench(tmp_path, *options, "--methods", "plain") == 0
    assert {k.cell for k, _ in fakes.calls} == {
        "torch-pruning/digits/heavy",
        "brevitas/digits/heavy",
    }
    captured = capsys.readouterr()
    assert "skipping nni/digits/heavy: nni not installed (no module nni): pip install" in (
        captured.err
    )
    assert "skipped: nni/digits/heavy" in captured.out
    data = json.loads((tmp_path / "results.json").read_text())
    assert "nni/digits/heavy" in data["skipped"]
    assert "nni/digits/heavy" not in data["settings"]["cells"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frameworks", "tensorflow"], "valid frameworks: torch-pruning, nni, brevitas"),
        (["--datasets", "cifar"], "valid datasets: mnist1d, digits"),
        (["--levels", "extreme"], "valid levels: moderate, heavy"),
        (["--methods", "kd"], "valid methods: plain, perturbed, default"),
        (["--budgets", "0"], "--budgets takes whole numbers >= 1"),
        (["--budgets", "1,x3"], "got 'x3'"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--trials", "-1"], "--trials must be at least 0"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--quick", "--full"], "not allowed with argument"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    tmp_path: Path, fakes: FakeRuns, capsys, args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) if "--full" in args else _nothing() as raised:
        code = bench(tmp_path / "out", *args)
    assert (raised.value.code if raised else code) == 2
    assert message in capsys.readouterr().err
    assert fakes.calls == [] and not (tmp_path / "out").exists()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return False


def test_an_output_folder_that_cannot_be_written(tmp_path: Path, fakes: FakeRuns, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert bench(blocker / "out", "--quick") == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert fakes.calls == []
    assert main(["bench", "--cost", "--out", str(blocker / "out")]) == 2


def test_runs_get_one_thread_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with session.single_threaded_children():
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with session.single_threaded_children():
        assert os.environ["OMP_NUM_THREADS"] == "2"
