"""``python -m labelkeep_plugins.bench.sweep``: settings over the bench's cells, with fake runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelkeep_plugins.bench import execute, sweep
from labelkeep_plugins.bench.store import RunResult
from labelkeep_plugins.errors import ConfigError


class FakeRuns:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []
        self.commands: list[list[str]] = []

    def __call__(self, key, command, config, directory) -> RunResult:
        self.calls.append((key.cell, key.method, key.seed, config.tuner))
        self.commands.append(list(command))
        assert "--split" in command and command[command.index("--split") + 1] == "test"
        halved = 2 if key.method == "half" else 1
        figures = {"mismatches": (10 + key.seed) // halved, "negative_flips": 4, "accuracy": 0.9}
        if key.method == "broken":
            return RunResult(key, "failed", 1.0, error="exit code 1")
        return RunResult(key, "ok", 1.0, figures)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    runs = FakeRuns()
    monkeypatch.setattr(execute, "execute_run", runs)
    return runs


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    return path


def test_every_setting_on_every_cell_and_seed_the_first_setting_first(tmp_path, fake, capsys):
    settings = write(tmp_path, {"plain": {"weights": {"ce": 1.0}}, "catchup": {"tuner": "catchup"}})
    args = [
        str(settings),
        "--seeds",
        "0,1",
        "--cells",
        "nni/digits/heavy",
        "--out",
        str(tmp_path / "o"),
    ]
    assert sweep.main(args) == 0
    assert sorted(fake.calls[:2]) == [  # two at a time: either plain run may start first
        ("nni/digits/heavy", "plain", 0, "fixed"),
        ("nni/digits/heavy", "plain", 1, "fixed"),
    ]
    assert sorted(fake.calls[2:]) == [("nni/digits/heavy", "catchup", s, "catchup") for s in (0, 1)]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "nni/digits/heavy"
    assert out[1].split()[:4] == ["plain", "mismatches", "10.5", "[10,"]
    assert sweep.main(args) == 0  # read back: nothing runs again
    assert len(fake.calls) == 4


def cells_of(line: str) -> list[str]:
    """A Markdown table row's cells; [] for any other line."""
    if not line.startswith("|"):
        return []
    return [part.strip() for part in line.strip().strip("|").split("|")]


def test_the_table_compares_each_setting_with_the_baseline(tmp_path, fake, capsys):
    settings = write(tmp_path, {"plain": {"weights": {"ce": 1.0}}, "half": {}, "same": {}})
    cells = "nni/digits/heavy,nni/digits/moderate"
    args = [str(settings), "--seeds", "0,1", "--cells", cells, "--out", str(tmp_path)]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert ["cell", "plain mismatches", "half", "same"] in [cells_of(line) for line in out]
    (row,) = [line for line in out if cells_of(line)[:1] == ["nni/digits/heavy"]]
    cells_of_row = cells_of(row)
    assert cells_of_row[1] == "10.5 (10, 11)"  # plain: each seed's count
    assert cells_of_row[2].startswith("2.10x [") and cells_of_row[2].endswith("nf 1.00x +0.0pt")
    assert cells_of_row[3].startswith("1.00x [1.00, 1.00]")
    assert "half: median moderate 2.10x, heavy 2.10x; 0 cells starred" in out
    assert sweep.main([*args, "--baseline", "nothing"]) == 0
    assert not any(cells_of(line)[:1] == ["cell"] for line in capsys.readouterr().out.splitlines())


def test_a_failed_run_is_shown_as_failed(tmp_path, fake, capsys):
    settings = write(tmp_path, {"plain": {"weights": {"ce": 1.0}}, "broken": {}})
    assert (
        sweep.main(
            [str(settings), "--seeds", "0", "--cells", "nni/digits/heavy", "--out", str(tmp_path)]
        )
        == 0
    )
    assert "broken           failed: exit code 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"a": 3}, "setting 'a' must be a loss section"),
        ({"a": {"tuner": "onlin"}}, "setting 'a': unknown tuner 'onlin'"),
        ({"a": {"weights": {"kdd": 1.0}}}, "setting 'a': unknown loss term 'kdd'"),
        ({"a": {"temperature": 0}}, "temperature must be a number > 0"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, fake, capsys, data, message):
    assert sweep.main([str(write(tmp_path, data))]) == 2
    assert message in capsys.readouterr().err and not fake.calls


def test_an_unknown_cell_lists_the_valid_ones(tmp_path, fake, capsys):
    settings = write(tmp_path, {"plain": {}})
    assert sweep.main([str(settings), "--cells", "nni/imagenet/heavy"]) == 2
    assert "valid cells: torch-pruning/mnist1d/moderate" in capsys.readouterr().err


def test_a_budget_keeps_its_runs_apart_in_the_folder_the_bench_uses(tmp_path, fake):
    from labelkeep_plugins.bench.plan import RunKey

    settings = write(tmp_path, {"plain": {"weights": {"ce": 1.0}}})
    args = [str(settings), "--seeds", "0", "--cells", "nni/digits/heavy", "--out", str(tmp_path)]
    assert sweep.main([*args, "--budget", "3"]) == 0
    assert sweep.main(args) == 0  # x1 is another run, not the x3 one read back
    assert [call[0] for call in fake.calls] == ["nni/digits/heavy/x3", "nni/digits/heavy"]
    x3 = RunKey("nni/digits/heavy", "plain", 0, budget=3).directory(tmp_path)
    assert (x3 / sweep.RESULT_FILE).exists()
    assert (RunKey("nni/digits/heavy", "plain", 0).directory(tmp_path) / sweep.RESULT_FILE).exists()


def test_a_setting_edited_under_its_name_runs_again(tmp_path, fake):
    args = ["--seeds", "0", "--cells", "nni/digits/heavy", "--out", str(tmp_path)]
    assert sweep.main([str(write(tmp_path, {"kd": {"weights": {"kd": 1.0}}})), *args]) == 0
    assert sweep.main([str(write(tmp_path, {"kd": {"weights": {"kd": 1.0}}})), *args]) == 0
    assert len(fake.calls) == 1  # the same configuration: read back
    assert sweep.main([str(write(tmp_path, {"kd": {"weights": {"kd": 2.0}}})), *args]) == 0
    assert len(fake.calls) == 2  # another configuration under the same name: run again


def test_sgd_recovery_runs_apart_and_tells_the_script(tmp_path, fake):
    settings = write(tmp_path, {"plain": {"weights": {"ce": 1.0}}})
    args = [str(settings), "--seeds", "0", "--cells", "nni/digits/heavy", "--out", str(tmp_path)]
    assert sweep.main([*args, "--optimizer", "sgd", "--budget", "3"]) == 0
    assert sweep.main(args) == 0  # Adam at x1 is another run
    assert [call[0] for call in fake.calls] == ["nni/digits/heavy/x3/sgd", "nni/digits/heavy"]
    sgd, adam = fake.commands
    assert sgd[-2:] == ["--optimizer", "sgd"] and "--optimizer" not in adam
    assert (tmp_path / "runs" / "nni-digits-heavy-x3-sgd" / "plain" / "seed0").is_dir()


def test_a_reseeded_setting_tells_the_script_another_recovery_seed(tmp_path, fake):
    reseeded = {"weights": {"ce": 1.0}, "recovery_seed_offset": 1000}
    args = ["--seeds", "2", "--cells", "nni/digits/heavy", "--out", str(tmp_path)]
    both = write(tmp_path, {"plain": {"weights": {"ce": 1.0}}, "reseeded": reseeded})
    assert sweep.main([str(both), *args]) == 0
    plain, again = fake.commands
    assert "--recovery-seed" not in plain
    assert again[-2:] == ["--recovery-seed", "1003"]  # the script's own is seed + 1
    other = write(
        tmp_path,
        {"plain": {"weights": {"ce": 1.0}}, "reseeded": {**reseeded, "recovery_seed_offset": 7}},
    )
    assert sweep.main([str(other), *args]) == 0  # another offset under the name: run again
    assert len(fake.commands) == 3 and fake.commands[-1][-2:] == ["--recovery-seed", "10"]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_a_bad_recovery_seed_offset_is_refused_naming_it(tmp_path: Path, bad: object) -> None:
    spec = {"weights": {"ce": 1.0}, "recovery_seed_offset": bad}
    with pytest.raises(ConfigError, match="'r': recovery_seed_offset must be a whole number"):
        sweep.settings_from_file(write(tmp_path, {"r": spec}))


def test_the_scripts_recovery_seed() -> None:
    from argparse import Namespace

    from labelkeep_plugins.bench.scripts._benchdata import recovery_seed

    assert recovery_seed(Namespace(seed=4, recovery_seed=None)) == 5
    assert recovery_seed(Namespace(seed=4, recovery_seed=1005)) == 1005


def test_the_scripts_recovery_optimizer() -> None:
    from argparse import Namespace

    import torch

    from labelkeep_plugins.bench.scripts._benchdata import optimizer_spec

    assert optimizer_spec(Namespace(optimizer="adam", lr=None)) == (torch.optim.Adam, {"lr": 1e-3})
    sgd = optimizer_spec(Namespace(optimizer="sgd", lr=None))
    assert sgd == (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9})
    assert optimizer_spec(Namespace(optimizer="sgd", lr=0.1))[1]["lr"] == 0.1


ROOT = Path(__file__).parents[1]
SWEEP_FILES = sorted((ROOT / "examples" / "sweeps").glob("*.json"))
README_TEXT = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_the_readme_sweep_files_are_valid_settings(path: Path) -> None:
    """Every settings file the README's sweep commands name loads; plain is plain recovery."""
    settings = sweep.settings_from_file(path)
    if "plain" in settings:
        assert dict(settings["plain"].config.loss.weights) == {"ce": 1.0}
        assert settings["plain"].recovery_seed_offset == 0
    assert path.relative_to(ROOT).as_posix() in README_TEXT
