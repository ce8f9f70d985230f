"""The zero-code runner: environment, exit codes, reports, subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labelkeep_plugins.env import ROOT_PID_ENV
from labelkeep_plugins.zero_code.report_files import (
    distributed_rank,
    other_process_reports,
    report_path,
)
from labelkeep_plugins.zero_code.runner import BOOTSTRAP_DIR, run_environment

SCRIPT_ACTIVE = textwrap.dedent("""
    import sys
    from labelkeep_plugins.zero_code.instrument import current_session
    print("active" if current_session() is not None else "inactive")
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
""")


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    environment.pop("LABELKEEP_AUTO", None)
    return subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def labelkeep_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "labelkeep_plugins.cli.main", "run", *args]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT_ACTIVE)
    return path


def test_environment_puts_bootstrap_first() -> None:
    env = run_environment({"PYTHONPATH": "/a:/b"}, report="r.json", strict=True)
    assert env["PYTHONPATH"].split(os.pathsep)[:3] == [str(BOOTSTRAP_DIR), "/a", "/b"]
    assert env["LABELKEEP_AUTO"] == "1" and env["LABELKEEP_STRICT"] == "1"
    assert Path(env["LABELKEEP_REPORT"]).is_absolute()


def test_child_is_instrumented_and_exit_code_passes_through(script: Path, tmp_path: Path) -> None:
    result = run(
        labelkeep_run("--report", "out.json", "--", sys.executable, str(script), "3"), tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "active"
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["references"] == [] and report["crashed"] is None


def test_a_script_without_compression_is_told_so_at_exit(script: Path, tmp_path: Path) -> None:
    result = run(labelkeep_run("--report", "out.json", "--", sys.executable, str(script)), tmp_path)
    notice = [line for line in result.stderr.splitlines() if "no compression was seen" in line]
    assert len(notice) == 1 and "LabelPreservingLoss" in notice[0] and "attach()" in notice[0]
    report = json.loads((tmp_path / "out.json").read_text())
    assert any("no compression was seen" in warning for warning in report["warnings"])


def test_plain_python_is_not_instrumented(script: Path, tmp_path: Path) -> None:
    result = run([sys.executable, str(script)], tmp_path)
    assert result.stdout.strip() == "inactive"


def test_subprocesses_are_instrumented_too(tmp_path: Path, script: Path) -> None:
    parent = tmp_path / "parent.py"
    parent.write_text(
        f"import subprocess, sys\nsys.exit(subprocess.call([sys.executable, {str(script)!r}]))\n"
    )
    result = run(labelkeep_run("--", sys.executable, str(parent)), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "active"


def test_missing_command_exits_127(tmp_path: Path) -> None:
    result = run(labelkeep_run("--", "no-such-command-labelkeep"), tmp_path)
    assert result.returncode == 127
    assert "command not found: 'no-such-command-labelkeep'" in result.stderr


def test_crash_keeps_exit_code_and_writes_report(tmp_path: Path) -> None:
    crash = tmp_path / "crash.py"
    crash.write_text("raise ValueError('boom')\n")
    result = run(labelkeep_run("--report", "r.json", "--", sys.executable, str(crash)), tmp_path)
    assert result.returncode == 1
    assert "ValueError: boom" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["crashed"] == "ValueError: boom"


def test_bad_config_fails_before_the_command_runs(tmp_path: Path, script: Path) -> None:
    (tmp_path / "bad.yaml").write_text("loss:\n  temperature: 0\n")
    result = run(labelkeep_run("--config", "bad.yaml", "--", sys.executable, str(script)), tmp_path)
    assert result.returncode == 2
    assert "temperature must be a number > 0" in result.stderr
    assert "active" not in result.stdout


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("loss:\n  weights: {kdd: 1.0}\n", "unknown loss term 'kdd' in weights; known terms: ce"),
        ("tuner: nope\n", "unknown tuner 'nope'; registered tuners: catchup"),
    ],
)
def test_a_config_naming_an_unregistered_term_or_tuner_fails_before_the_command(
    tmp_path: Path, script: Path, text: str, said: str
) -> None:
    """A config file is plain data; the runner checks its names against the plugins."""
    (tmp_path / "names.yaml").write_text(text)
    result = run(
        labelkeep_run("--config", "names.yaml", "--", sys.executable, str(script)), tmp_path
    )
    assert result.returncode == 2
    assert "config file 'names.yaml': " + said in result.stderr
    assert "active" not in result.stdout


def test_labelkeep_run_entry_point(tmp_path: Path, script: Path) -> None:
    result = run(
        [
            sys.executable,
            "-c",
            "import sys; from labelkeep_plugins.zero_code.runner import labelkeep_run_main as m; "
            "sys.exit(m(sys.argv[1:]))",
            sys.executable,
            str(script),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "active"


def test_existing_sitecustomize_still_runs(tmp_path: Path, script: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import builtins\nbuiltins.THEIRS = True\n")
    probe = tmp_path / "probe.py"
    probe.write_text("import builtins\nprint(getattr(builtins, 'THEIRS', False))\n")
    result = run(labelkeep_run("--", sys.executable, str(probe)), tmp_path, PYTHONPATH=str(theirs))
    assert result.stdout.strip() == "True", result.stderr


def test_report_path_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv(ROOT_PID_ENV, str(os.getpid()))
    assert report_path("out/r.json") == Path("out/r.json")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert report_path("out/r.json") == Path("out/r.rank1.json")
    assert report_path(None) is None


def test_a_worker_process_writes_a_report_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A multiprocessing worker without RANK: named by its torch.distributed rank, else pid."""
    import multiprocessing

    monkeypatch.delenv("RANK", raising=False)
    assert report_path("out/r.json") == Path("out/r.json")  # a command or its subprocess
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    assert report_path("out/r.json") == Path(f"out/r.pid{os.getpid()}.json")
    assert report_path("out/r.json", distributed_rank=3) == Path("out/r.rank3.json")


def test_other_process_reports_are_this_runs_siblings(tmp_path: Path) -> None:
    base = tmp_path / "r.json"
    for name in ("r.rank0.json", "r.pid42.json", "r.rankx.json", "other.rank1.json"):
        (tmp_path / name).write_text("{}")
    for stale in (tmp_path / "r.rank9.json", base):  # an earlier run's
        stale.write_text("{}")
        os.utime(stale, (1.0, 1.0))
    found = other_process_reports(base, since=1000.0)
    assert found == sorted([str(tmp_path / "r.pid42.json"), str(tmp_path / "r.rank0.json")])
    base.write_text("{}")  # written during this run by another process
    assert str(base) in other_process_reports(base, since=1000.0)


def test_distributed_rank_is_read_from_an_initialised_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    assert distributed_rank() is None
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert distributed_rank() == 0
    finally:
        dist.destroy_process_group()
    assert distributed_rank() is None


SPAWNING_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    from torch import nn
    from labelkeep_plugins.zero_code.instrument import current_session

    def worker(index):
        model = nn.Linear(4, 3)
        current_session().reference_for(model, framework="test", where=f"worker {index}")

    if __name__ == "__main__":
        context = mp.get_context("spawn")
        workers = [context.Process(target=worker, args=(i,)) for i in range(2)]
        for process in workers:
            process.start()
        for process in workers:
            process.join()
""")


def test_spawned_workers_reports_are_kept_and_listed(tmp_path: Path) -> None:
    """mp.spawn-style workers write one report each; the launching process lists them
    instead of saying that no compression was seen."""
    script = tmp_path / "spawning.py"
    script.write_text(SPAWNING_SCRIPT)
    result = run(labelkeep_run("--report", "r.json", "--", sys.executable, str(script)), tmp_path)
    assert result.returncode == 0, result.stderr
    children = sorted(tmp_path.glob("r.pid*.json"))
    assert len(children) == 2, result.stderr
    wheres = sorted(json.loads(p.read_text())["references"][0]["where"] for p in children)
    assert wheres == ["worker 0", "worker 1"]
    root = json.loads((tmp_path / "r.json").read_text())
    assert root["process_reports"] == [str(p) for p in children]
    assert not any("no compression was seen" in w for w in root["warnings"])
    assert "no compression was seen" not in result.stderr
    assert "their reports:" in result.stderr


SUBPROCESS_TRAINING = textwrap.dedent("""
    import subprocess, sys
    child = "from torch import nn\\n" + (
        "from labelkeep_plugins.zero_code.instrument import current_session\\n"
        "current_session().reference_for(nn.Linear(4, 3), framework='test', where='child')\\n"
    )
    sys.exit(subprocess.call([sys.executable, "-c", child]))
""")


def test_a_training_subprocess_report_is_not_overwritten(tmp_path: Path) -> None:
    """The command's process (a launcher) compressed nothing: the report its training
    subprocess wrote stays, and no "no compression was seen" is said."""
    script = tmp_path / "launcher.py"
    script.write_text(SUBPROCESS_TRAINING)
    result = run(labelkeep_run("--report", "r.json", "--", sys.executable, str(script)), tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["where"] for r in report["references"]] == ["child"]
    assert "no compression was seen" not in result.stderr
