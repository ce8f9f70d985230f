"""``labelkeep bench --quick`` for real, reduced to one cell, one seed and one tuning trial.

The one bench test that trains: the user-style torch-pruning script runs through the
runner in child processes (plain, default, the tuning search on the validation seed, and
the tuned configuration), so the files and the table are those of a real run (~20-30 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelkeep_plugins.cli import main

pytest.importorskip("torch_pruning")
pytest.importorskip("labelkeep_torch_pruning")
pytest.importorskip("mnist1d")


def test_quick_bench_on_one_cell(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "bench"
    options = ["--quick", "--frameworks", "torch-pruning", "--datasets", "mnist1d"]
    code = main(["bench", *options, "--seeds", "1", "--trials", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "results.json").read_text())
    runs = {(r["method"], r["seed"]): r for r in data["runs"]}
    methods = {"plain", "perturbed", "default", "tuned", "online"}
    assert set(runs) == {(method, 0) for method in methods}
    assert all(r["status"] == "ok" for r in runs.values())
    plain, default = runs["plain", 0]["figures"], runs["default", 0]["figures"]
    assert plain["samples"] == default["samples"] == 1000  # the test split
    assert plain["reference_accuracy"] == default["reference_accuracy"]  # the same reference
    assert default["training_steps_with_loss"] > 0 and default["reference_intact"] is True
    tuning = json.loads((out / "tune" / "torch-pruning-mnist1d" / "results.json").read_text())
    assert tuning["trials"][0]["agreement"]["samples"] == 800  # tuned on the validation split
    assert "--seed" in tuning["settings"]["command"] and "1000" in tuning["settings"]["command"]
    header = captured.out.splitlines()[0]
    for column in ("method", "accuracy %", "mismatches", "neg. flips", "mism. red."):
        assert column in header
    assert "labelkeep tuned" in captured.out and "[7/7]" in captured.err
    assert "| torch-pruning/mnist1d |" in (out / "results.md").read_text()
    assert (out / "mismatches.png").exists() or "plot skipped" in captured.err
