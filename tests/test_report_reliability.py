"""The report asked for is written whatever happens: a bad config, a kill, a bad report path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from labelkeep_plugins.config import Config
from labelkeep_plugins.env import ROOT_PID_ENV
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.jsonfile import unwritable_reason, write_json
from labelkeep_plugins.plugins import get_plugin_manager
from labelkeep_plugins.zero_code import auto
from labelkeep_plugins.zero_code.instrument import instrumented
from labelkeep_plugins.zero_code.runner import BOOTSTRAP_DIR

SCRIPT = textwrap.dedent("""
    import sys
    from labelkeep_plugins.zero_code.instrument import current_session
    print("script started", file=sys.stderr, flush=True)
    print("active" if current_session() is not None else "inactive")
""")

# Trains a tiny model with the loss attached, and stops itself with a signal after 5 steps.
TRAIN = textwrap.dedent("""
    import os, signal, sys
    import torch
    from torch import nn
    from labelkeep_plugins.zero_code.instrument import current_session

    stop = {"asked": False}
    if "--own-handler" in sys.argv:  # installed after labelkeep's: it must stay in charge
        signal.signal(signal.SIGTERM, lambda number, frame: stop.update(asked=True))
    session = current_session()
    model = nn.Sequential(nn.Linear(4, 3))
    session.reference_for(model, framework="test", where="train.py")
    session.attach(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1000):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
        optimizer.step()
        if stop["asked"]:
            print("stopped gracefully")
            sys.exit(0)
        if step == 4:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    print("not reached")
""")

BAD_CONFIG = "loss:\n  temperature: 0\n"


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    for name in ("LABELKEEP_AUTO", "LABELKEEP_CONFIG", "LABELKEEP_REPORT", "LABELKEEP_STRICT"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        args,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """A shell's background job ignores SIGINT, and Python then never raises
    KeyboardInterrupt; the user's terminal run does not, so neither do these."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def labelkeep_run(*args: str) -> list[str]:
    """The ``labelkeep-run`` entry point, with this interpreter."""
    main = "import sys; from labelkeep_plugins.zero_code.runner import labelkeep_run_main as m; "
    return [sys.executable, "-c", main + "sys.exit(m(sys.argv[1:]))", *args]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def labelkeep_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("labelkeep:")]


# --- 3. an invalid auto-found configuration -------------------------------------------------


@pytest.mark.parametrize("where", ["cwd", "env"])
def test_invalid_auto_config_runs_on_and_writes_an_inactive_report(
    tmp_path: Path, script: Path, where: str
) -> None:
    config = tmp_path / ("labelkeep.yaml" if where == "cwd" else "mine.yaml")
    config.write_text(BAD_CONFIG)
    env = {"LABELKEEP_CONFIG": "mine.yaml"} if where == "env" else {}
    result = run(labelkeep_run("--report", "r.json", sys.executable, str(script)), tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "inactive"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["active"] is False and report["config_file"] == str(config)
    assert str(config) in report["error"] and "temperature must be a number > 0" in report["error"]
    [line] = labelkeep_lines(result.stderr)
    assert str(config) in line and "temperature" in line and "typical values" in line
    assert "fix the file" in line and "active: false" in line


def test_strict_runner_refuses_an_invalid_auto_config(tmp_path: Path, script: Path) -> None:
    (tmp_path / "labelkeep.yaml").write_text(BAD_CONFIG)
    result = run(labelkeep_run("--strict", sys.executable, str(script)), tmp_path)
    assert result.returncode == 2
    assert "script started" not in result.stderr and result.stdout == ""
    [line] = labelkeep_lines(result.stderr)
    assert str(tmp_path / "labelkeep.yaml") in line and "temperature" in line


def test_strict_bootstrap_stops_before_the_script(tmp_path: Path, script: Path) -> None:
    """Without the runner's check (LABELKEEP_STRICT set by hand, a child process): exit 2."""
    (tmp_path / "labelkeep.yaml").write_text(BAD_CONFIG)
    env = {"LABELKEEP_AUTO": "1", "LABELKEEP_STRICT": "1", "PYTHONPATH": str(BOOTSTRAP_DIR)}
    result = run([sys.executable, str(script)], tmp_path, **env)
    assert result.returncode == 2
    assert "script started" not in result.stderr
    assert "Error in sitecustomize" not in result.stderr
    [line] = labelkeep_lines(result.stderr)
    assert "temperature" in line and "strict mode" in line


@pytest.mark.parametrize("where", ["runner", "bootstrap"])
def test_strict_refusal_still_writes_the_inactive_report(
    tmp_path: Path, script: Path, where: str
) -> None:
    """Strict mode stops before the script, and the report asked for says why."""
    (tmp_path / "labelkeep.yaml").write_text(BAD_CONFIG)
    if where == "runner":  # the runner's own check refuses to start the command
        args = labelkeep_run("--strict", "--report", "r.json", sys.executable, str(script))
        result = run(args, tmp_path)
    else:  # the process's own check (a torchrun rank speaks for itself: RANK is set)
        env = {
            "LABELKEEP_AUTO": "1",
            "LABELKEEP_STRICT": "1",
            "LABELKEEP_REPORT": str(tmp_path / "r.json"),
            "PYTHONPATH": str(BOOTSTRAP_DIR),
            "RANK": "0",
        }
        result = run([sys.executable, str(script)], tmp_path, **env)
    assert result.returncode == 2 and "script started" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["active"] is False and "temperature" in report["error"]
    assert report["config_file"] == str(tmp_path / "labelkeep.yaml")


# --- 4. signals -----------------------------------------------------------------------------


def test_sigterm_writes_the_report_and_keeps_the_exit_status(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    result = run(
        labelkeep_run("--report", "r.json", sys.executable, "train.py", "SIGTERM"), tmp_path
    )
    assert result.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), result.stderr
    assert "not reached" not in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["active"] is True and report["training_steps_with_loss"] == 5
    assert report["crashed"] == "terminated by SIGTERM"


def test_sigint_writes_the_report_through_keyboard_interrupt(tmp_path: Path) -> None:
    """Python's own SIGINT handler raises KeyboardInterrupt: atexit writes it, nothing added."""
    (tmp_path / "train.py").write_text(TRAIN)
    result = run(
        labelkeep_run("--report", "r.json", sys.executable, "train.py", "SIGINT"), tmp_path
    )
    assert result.returncode in (-signal.SIGINT, 128 + signal.SIGINT), result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["training_steps_with_loss"] == 5
    assert report["crashed"].startswith("KeyboardInterrupt")


def test_a_handler_the_script_installs_stays_in_charge(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    command = labelkeep_run("--report", "r.json", sys.executable, "train.py", "SIGTERM")
    result = run([*command, "--own-handler"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped gracefully"
    report = json.loads((tmp_path / "r.json").read_text())
    # the handler only sets a flag: the step under way when it ran finishes, then the loop stops
    assert report["training_steps_with_loss"] == 6 and report["crashed"] is None


class CountingReporter:
    def __init__(self) -> None:
        self.reports: list[dict] = []

    @hookimpl
    def labelkeep_run_finished(self, report, path) -> None:
        self.reports.append(report)


def test_the_report_is_handed_over_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A signal writes it, then atexit (or a second signal) must not write it again."""
    reporter = CountingReporter()
    get_plugin_manager().register(reporter)
    monkeypatch.setenv(ROOT_PID_ENV, str(os.getpid()))
    with instrumented(Config(report=str(tmp_path / "r.json"))):
        auto.write_report_at_exit()
        auto.write_report_at_exit()
    assert len(reporter.reports) == 1 and (tmp_path / "r.json").is_file()


def test_a_forked_child_does_not_write_its_parents_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reporter = CountingReporter()
    get_plugin_manager().register(reporter)
    monkeypatch.setenv(ROOT_PID_ENV, str(os.getpid()))
    monkeypatch.setattr(auto._Reporting, "owner_pid", os.getpid() + 1)  # activated elsewhere
    with instrumented(Config(report=str(tmp_path / "r.json"))) as session:
        session.reference_for(nn.Linear(2, 2), framework="test", where="parent")
        auto.write_report_at_exit()
    assert reporter.reports == [] and not (tmp_path / "r.json").exists()


# --- 5. a report path that cannot be written ------------------------------------------------


@pytest.mark.parametrize("report", ["out", "afile/r.json"])
def test_runner_refuses_an_unwritable_report_before_the_command(
    tmp_path: Path, script: Path, report: str
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("")
    result = run(labelkeep_run("--report", report, sys.executable, str(script)), tmp_path)
    assert result.returncode == 2
    assert "script started" not in result.stderr
    [line] = labelkeep_lines(result.stderr)
    assert str(tmp_path / report) in line and "cannot write the report" in line
    assert ("out/report.json" in line) if report == "out" else ("is a file" in line)


def test_auto_mode_tells_an_unwritable_report_at_the_start(tmp_path: Path, script: Path) -> None:
    """LABELKEEP_REPORT (or the config's report) is checked in the command: told, run goes on."""
    (tmp_path / "out").mkdir()
    env = {"LABELKEEP_REPORT": str(tmp_path / "out")}
    result = run(labelkeep_run(sys.executable, str(script)), tmp_path, **env)
    assert result.returncode == 0 and result.stdout.strip() == "active"
    lines = result.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if "cannot write the report" in line)
    assert first < lines.index("script started")
    assert "out/report.json" in lines[first]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_strict_refuses_an_unwritable_report_from_the_config(tmp_path: Path, script: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "labelkeep.yaml").write_text("report: out\n")
    result = run(labelkeep_run("--strict", sys.executable, str(script)), tmp_path)
    assert result.returncode == 2
    assert "script started" not in result.stderr
    assert "cannot write the report" in result.stderr


def test_write_json_leaves_no_temporary_file_when_the_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        write_json(tmp_path / "out", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_json_leaves_no_temporary_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_reason(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("")
    assert unwritable_reason(tmp_path / "new" / "deeper" / "r.json") is None
    assert not (tmp_path / "new").exists()  # checking creates no folder
    assert "is a directory" in (unwritable_reason(tmp_path / "out") or "")
    assert "is a file" in (unwritable_reason(tmp_path / "afile" / "r.json") or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out"]
