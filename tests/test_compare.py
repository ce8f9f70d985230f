"""``labelkeep compare`` on a fast fake command that writes a report from its config and seed."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from labelkeep_plugins.cli.main import main

FAKE = textwrap.dedent("""
    import json, os, sys
    import yaml

    seed = int(sys.argv[1])
    if seed < 0:
        sys.exit(4)
    weights = yaml.safe_load(open(os.environ["LABELKEEP_CONFIG"]))["loss"]["weights"]
    mismatches = 60 + seed - (20 if weights.get("kd", 0) > 0 else 0)
    with open(os.environ["LABELKEEP_REPORT"], "w") as out:
        json.dump({"agreement": {"samples": 500, "mismatches": mismatches,
                                 "negative_flips": mismatches // 2,
                                 "compressed_accuracy": 0.9}}, out)
""")


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    return [sys.executable, "-I", str(script), "{seed}"]  # -I: no labelkeep sitecustomize


def test_compare_runs_both_arms_per_seed(fake, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--seeds", "0,2", "--out", str(out), "--", *fake]) == 0
    table = capsys.readouterr().out
    rows = {line.split("  ")[0]: re.split(r"\s{2,}", line) for line in table.splitlines()}
    assert rows["plain"][:3] == ["plain", "90.0 ± 0.0", "61.0 ± 1.0"]
    assert rows["labelkeep"][:3] == ["labelkeep", "90.0 ± 0.0", "41.0 ± 1.0"]
    assert "mismatches 1.49x" in table  # (60 + 62) / (40 + 42)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["seeds"] == [0, 2]
    assert [m["mismatches"] for m in saved["results"]["plain"]] == [60, 62]
    plain_config = (out / "seed0" / "plain" / "labelkeep.yaml").read_text()
    assert "kd" not in plain_config  # the plain arm adds nothing to training


def test_compare_reports_a_failing_command(fake, tmp_path, capsys) -> None:
    assert main(["compare", "--seeds", "-1", "--out", str(tmp_path / "c"), "--", *fake]) == 2
    assert "seed -1, plain: the command failed (exit 4)" in capsys.readouterr().err


def test_compare_rejects_bad_seeds(fake, tmp_path, capsys) -> None:
    assert main(["compare", "--seeds", "a,b", "--", *fake]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err


def test_unmeasured_negative_flips_print_n_a_and_say_why() -> None:
    from labelkeep_plugins.experiments.compare import UNSEEN_LABELS, format_table
    from labelkeep_plugins.experiments.objective import Measurement

    unseen = [Measurement(100, 10), Measurement(100, 12)]
    table = format_table({"plain": unseen, "labelkeep": unseen}, "train.py")
    assert "0.0 ± 0.0" not in table and "negative flips n/a" in table
    assert UNSEEN_LABELS in table
    seen = [Measurement(100, 10, negative_flips=4), Measurement(100, 12, negative_flips=6)]
    table = format_table({"plain": seen, "labelkeep": seen}, "train.py")
    assert "negative flips 1.00x" in table and UNSEEN_LABELS not in table


EARLY_EXIT = (
    "import sys\n"
    "print('FileNotFoundError: data/train.csv', file=sys.stderr)\n"
    "sys.exit(int(sys.argv[1]))\n"
)


@pytest.mark.parametrize("code", [0, 5])
def test_compare_tells_an_early_exit_by_its_code_and_last_lines(tmp_path, capsys, code) -> None:
    script = tmp_path / "early.py"
    script.write_text(EARLY_EXIT)
    command = [sys.executable, "-I", str(script), str(code)]
    assert main(["compare", "--seeds", "0", "--out", str(tmp_path / "c"), "--", *command]) == 2
    err = capsys.readouterr().err
    assert "FileNotFoundError: data/train.csv" in err and "output.log" in err
    if code:
        assert "seed 0, plain: the command failed (exit 5); output in " in err
        assert "must run Python" not in err
    else:  # it ran fine and wrote no report: only then is "must run Python" the hint
        assert "exited 0" in err and "must run Python" in err
