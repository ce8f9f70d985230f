"""Recovery budgets, the limit row and runs in parallel, with fake runs (nothing trains)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_bench import FakeRuns, bench, install_fakes, register_plugins

from labelkeep_plugins.bench import session
from labelkeep_plugins.bench.cells import CELLS, PROFILES
from labelkeep_plugins.bench.orchestrate import Orchestrator
from labelkeep_plugins.bench.plan import BenchSettings, RunKey, script_command
from labelkeep_plugins.bench.pool import RunPool
from labelkeep_plugins.bench.progress import Progress
from labelkeep_plugins.bench.store import BenchRecord

CELL = next(cell for cell in CELLS if cell.key == "nni/digits/heavy")
ONE_CELL = ["--frameworks", "nni", "--datasets", "digits", "--levels", "heavy"]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    register_plugins(monkeypatch, "softadapt")
    return install_fakes(monkeypatch)


def settings(**changes: Any) -> BenchSettings:
    base: dict[str, Any] = {
        "profile": "full",
        "cells": (CELL.key,),
        "methods": ("plain", "default", "limit"),
        "seeds": (0, 1),
        "trials": 0,
        "epochs": 12,
        "pretrain_epochs": 15,
        "validation_seeds": (1000,),
        "budgets": (1, 3),
    }
    return BenchSettings(**{**base, **changes})


def test_the_budget_multiplies_the_scripts_epochs(tmp_path: Path) -> None:
    def epochs(budget: int) -> str:
        command = script_command(CELL, [0], "test", settings(), tmp_path, budget)
        return command[command.index("--epochs") + 1]

    assert (epochs(1), epochs(3), epochs(10)) == ("12", "36", "120")
    command = script_command(CELL, [0], "test", settings(), tmp_path, 3)
    assert command[command.index("--pretrain-epochs") + 1] == "15"  # the same pretrained model
    assert command[-4:] == list(CELL.args)


def test_every_budget_and_the_limit_row_have_their_own_runs(tmp_path: Path) -> None:
    keys = settings().run_keys()
    assert len(keys) == 2 * 2 * 2 + 2  # budgets x rows x seeds, and the limit row once
    assert {(k.method, k.budget) for k in keys} == {
        ("plain", 1),
        ("default", 1),
        ("plain", 3),
        ("default", 3),
        ("limit", 10),
    }
    folders = {k.directory(tmp_path) for k in keys}
    assert len(folders) == len(keys)
    assert RunKey(CELL.key, "plain", 0, 3).directory(tmp_path) == (
        tmp_path / "runs" / "nni-digits-heavy-x3" / "plain" / "seed0"
    )
    assert RunKey(CELL.key, "plain", 0).label == "nni/digits/heavy plain seed 0"
    assert RunKey(CELL.key, "limit", 0, 10).label == "nni/digits/heavy x10 limit seed 0"


def test_the_bench_runs_budgets_and_the_limit_at_their_epochs(
    tmp_path: Path, fakes: FakeRuns
) -> None:
    options = [*ONE_CELL, "--seeds", "2", "--methods", "plain", "default", "limit"]
    assert bench(tmp_path, *options, "--budgets", "3,1") == 0
    epochs = {(k.method, k.budget): fakes.epochs(k) for k, _ in fakes.calls}
    base = PROFILES["default"].epochs
    assert epochs == {
        ("plain", 1): base,
        ("default", 1): base,
        ("plain", 3): 3 * base,
        ("default", 3): 3 * base,
        ("limit", 10): 10 * base,
    }
    limit_config = next(c for k, c in fakes.calls if k.method == "limit")
    assert limit_config.loss.weights["ce"] == 0.0 and limit_config.tuner == "fixed"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["budgets"] == [1, 3]
    rows = {(r["method"], r["budget"]): r for r in data["summary"]["rows"]}
    assert set(rows) == set(epochs)
    assert rows["default", 3]["gap_closed"] is not None
    assert {(h["method"], h["budget"]) for h in data["summary"]["headline"]} == {
        ("default", 1),
        ("default", 3),
        ("limit", 10),
    }


def test_an_interrupted_bench_of_two_budgets_resumes_without_clobbering(
    tmp_path: Path, fakes: FakeRuns, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    options = [*ONE_CELL, "--seeds", "2", "--methods", "plain", "default", "limit"]
    options += ["--budgets", "1", "3"]
    first = FakeRuns(interrupt_at=6)
    monkeypatch.setattr(session, "execute_run", first)
    assert bench(tmp_path, *options) == 130
    kept = {(r["method"], r["budget"], r["seed"]) for r in _runs(tmp_path)}
    assert len(kept) == 5
    second = FakeRuns()
    monkeypatch.setattr(session, "execute_run", second)
    assert bench(tmp_path, *options, "--resume", "--jobs", "2") == 0
    again = {(k.method, k.budget, k.seed) for k, _ in second.calls}
    assert again.isdisjoint(kept) and len(again) == 10 - 5
    runs = _runs(tmp_path)
    assert len(runs) == 10 and all(r["status"] == "ok" for r in runs)
    assert {r["budget"] for r in runs if r["method"] == "plain"} == {1, 3}
    assert bench(tmp_path, *options[:-3], "--budgets", "1", "--resume") == 2  # other budgets
    assert "another budgets" in capsys.readouterr().err


def _runs(out: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads((out / "results.json").read_text())["runs"]
    return runs


def test_parallel_runs_train_each_checkpoint_first(tmp_path: Path, fakes: FakeRuns) -> None:
    options = ["--frameworks", "nni", "--datasets", "digits", "--seeds", "2", "--jobs", "3"]
    assert bench(tmp_path, *options, "--budgets", "1", "3") == 0
    keys = [k for k, _ in fakes.calls]
    assert len(keys) == len(set(keys)) == 2 * 2 * 4 * 2  # cells x budgets x rows x seeds
    first = {(k.cell, k.method, k.seed, k.budget) for k in keys[:2]}
    assert first == {(CELLS[6].key, "plain", 0, 1), (CELLS[6].key, "plain", 1, 1)}


def test_runs_whose_checkpoint_exists_need_no_first_phase(tmp_path: Path) -> None:
    record = BenchRecord(settings())
    cells = {CELL.key: CELL}
    orchestrator = Orchestrator(record, cells, tmp_path, Progress(1, _Quiet()), lambda: None)
    keys = [k for k in settings().run_keys() if k.method != "plain"] + settings().run_keys()[:2]
    assert orchestrator.checkpoint_runs(keys) == [RunKey(CELL.key, "plain", s) for s in (0, 1)]
    checkpoint = tmp_path / "cache" / "pretrained" / "nni-digits-seed0.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert orchestrator.checkpoint_runs(keys) == [RunKey(CELL.key, "plain", 1)]


def test_the_pool_bounds_the_runs_at_a_time_and_stops_on_an_interrupt() -> None:
    pool = RunPool(2)
    running, peak, lock = [0], [0], threading.Lock()

    def job(index: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        if index == 3:
            raise KeyboardInterrupt
        return index

    futures = [pool.submit(job, i) for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        pool.wait(futures)
    pool.close(interrupted=True)
    assert peak[0] == 2 and pool.stopped.is_set()
    inline = RunPool(1)
    assert inline.submit(job, 0).result() == 0  # one job: run at once, in this thread


class _Quiet:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None
