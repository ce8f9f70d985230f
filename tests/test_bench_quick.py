"""``labelkeep bench --quick`` for real, reduced to one cell, one seed and one tuning trial.

The one bench test that trains: the user-style torch-pruning script runs through the
runner in child processes (every row of the quick profile, the tuning search on the
validation seed, the tuned configuration and the 10x limit row), so the files and the
table are those of a real run (~30-40 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelkeep_plugins.bench.cells import PROFILES
from labelkeep_plugins.cli.main import main

pytest.importorskip("torch_pruning")
pytest.importorskip("labelkeep_torch_pruning")
pytest.importorskip("mnist1d")


def test_quick_bench_on_one_cell(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "bench"
    options = ["--quick", "--frameworks", "torch-pruning", "--datasets", "mnist1d"]
    options += ["--levels", "moderate", "--seeds", "1", "--trials", "1"]
    code = main(["bench", *options, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "results.json").read_text())
    runs = {(r["method"], r["seed"], r["budget"]): r for r in data["runs"]}
    methods = set(data["settings"]["methods"])
    assert methods >= {"plain", "default", "softadapt", "tuned", "limit"}
    assert methods <= set(PROFILES["quick"].methods)
    assert set(runs) == {(m, 0, 10 if m == "limit" else 1) for m in methods}
    assert all(r["status"] == "ok" for r in runs.values()), [r["error"] for r in runs.values()]
    plain, default = runs["plain", 0, 1]["figures"], runs["default", 0, 1]["figures"]
    limit = runs["limit", 0, 10]["figures"]
    assert plain["samples"] == default["samples"] == 1000  # the test split
    # The same pretrained reference, whatever the row or budget.
    assert (
        plain["reference_accuracy"] == default["reference_accuracy"] == limit["reference_accuracy"]
    )
    assert default["training_steps_with_loss"] > 0 and default["reference_intact"] is True
    assert limit["training_steps_with_loss"] > 5 * default["training_steps_with_loss"]  # 10x
    tune_folder = out / "tune" / "torch-pruning-mnist1d-moderate"
    tuning = json.loads((tune_folder / "results.json").read_text())
    assert tuning["trials"][0]["agreement"]["samples"] == 800  # tuned on the validation split
    assert "--seed" in tuning["settings"]["command"] and "1000" in tuning["settings"]["command"]
    header = captured.out.splitlines()[0]
    for column in ("method", "budget", "accuracy %", "vs guard", "mismatches", "mism. red."):
        assert column in header
    steps = len(runs) + 2  # and the plain and one searched tuning trial
    assert "labelkeep tuned" in captured.out and f"[{steps}/{steps}]" in captured.err
    assert "| torch-pruning/mnist1d/moderate |" in (out / "results.md").read_text()
    assert (out / "mismatches.png").exists() or "plot skipped" in captured.err
