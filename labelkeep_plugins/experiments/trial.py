"""Run one trial of ``labelkeep tune``: the user's command under the runner, with one config.

The command runs as a child process (not ``exec``: the search goes on after it) in
exactly the environment ``labelkeep run`` gives it (:func:`run_environment`), with
``--config`` and ``--report`` pointing into the trial's folder. Its output (stdout and
stderr) goes to the trial's ``output.log`` so that the live table stays readable; a
failure is told by its exit code and the last lines of its stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.zero_code.runner import run_environment

_LOG_TAIL_LINES = 5
_TAIL_BYTES = 8192  # enough for the last lines of a traceback
_COPY_GRACE_SECONDS = 5.0

#: What a trial directory holds: the config it ran with, its report and its output.
CONFIG_FILE = "labelkeep.yaml"
REPORT_FILE = "report.json"
LOG_FILE = "output.log"


@dataclass(frozen=True)
class TrialRun:
    """What one run of the command left: exit code, report (parsed) and a problem if any.

    ``problem`` is the whole reason the run gives no figures (None when it gave a report
    and exited 0), worded once here so that tune and compare say the same.
    """

    exit_code: int | None
    seconds: float
    report: Any | None
    problem: str | None
    stderr_tail: str = ""  # the last lines of its stderr (a failure's traceback)


def trial_config(base: Config, loss: LossConfig) -> Config:
    """A trial's configuration: the user's, with the trial's loss and fixed weights."""
    return replace(base, loss=loss, tuner="fixed", report=None)


def write_config(path: Path, config: Config, header: str) -> None:
    """Write ``config`` as a labelkeep YAML file with a comment ``header`` on top."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comment + body, encoding="utf-8")


def run_trial(
    command: Sequence[str],
    directory: Path,
    config: Config,
    *,
    header: str,
    environ: Mapping[str, str] | None = None,
) -> TrialRun:
    """Run ``command`` once under labelkeep with ``config``; never raises for a failing command."""
    directory.mkdir(parents=True, exist_ok=True)
    report, log = directory / REPORT_FILE, directory / LOG_FILE
    report.unlink(missing_ok=True)  # a stale report must not pass for this run's
    write_config(directory / CONFIG_FILE, config, header)
    env = run_environment(
        dict(os.environ if environ is None else environ),
        config=str(directory / CONFIG_FILE),
        report=str(report),
        strict=config.strict,
    )
    started = time.monotonic()
    try:
        exit_code, stderr_tail = _run_logged(command, env, log)
    except OSError as exc:
        return TrialRun(None, time.monotonic() - started, None, f"the command cannot start: {exc}")
    seconds = time.monotonic() - started
    data, problem = _read_report(report, directory, stderr_tail)
    if exit_code != 0:  # its report, if any, is kept, but the run failed
        problem = exit_problem(exit_code, directory, stderr_tail)
    return TrialRun(exit_code, seconds, data, problem, stderr_tail)


def _run_logged(command: Sequence[str], env: Mapping[str, str], log: Path) -> tuple[int, str]:
    """Run with stdout and stderr both in ``log``; the exit code and stderr's last lines.

    stderr is copied through a pipe because its last lines are what explain a failure (the
    traceback), and in the log alone they can be buried: the child's buffered stdout is
    often flushed at exit, after the traceback.
    """
    log.write_bytes(b"")
    tail = bytearray()
    with log.open("ab") as output:
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=output,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        copier = threading.Thread(target=_copy, args=(process.stderr, log, tail), daemon=True)
        copier.start()
        try:
            exit_code = process.wait()
        except BaseException:  # ^C in labelkeep: end the command too, as subprocess.run does
            process.kill()
            process.wait()
            raise
        finally:
            copier.join(timeout=_COPY_GRACE_SECONDS)  # a lingering grandchild keeps the pipe
    text = tail.decode("utf-8", errors="replace").rstrip()
    return exit_code, "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def _copy(pipe: io.BufferedReader, log: Path, tail: bytearray) -> None:
    """Append every chunk of ``pipe`` to ``log`` as it comes; keep the last few KiB."""
    with pipe, log.open("ab") as output:
        while chunk := pipe.read1(65536):
            output.write(chunk)
            output.flush()
            tail.extend(chunk)
            del tail[:-_TAIL_BYTES]


def _read_report(report: Path, directory: Path, stderr_tail: str) -> tuple[Any | None, str | None]:
    """The run report, or why there is none when the command itself exited 0."""
    if not report.exists():
        return None, (
            f"no run report was written ({report}) although the command exited 0: labelkeep "
            "writes it from a Python process that compressed or attached a model, so the "
            f"command must run Python and get that far; {output_pointer(directory, stderr_tail)}"
        )
    try:
        return json.loads(report.read_text(encoding="utf-8")), None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"its run report {str(report)!r} cannot be read ({exc})"


def exit_problem(exit_code: int, directory: Path, stderr_tail: str = "") -> str:
    """A failing command as tune words it: its exit code (or signal), then its last lines."""
    how = f"exit code {exit_code}"
    if exit_code < 0:  # subprocess's way of saying a signal ended it
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-exit_code).name} ({how})"
    return f"{how}; {output_pointer(directory, stderr_tail)}"


def output_pointer(directory: Path, stderr_tail: str = "") -> str:
    """Where a trial's output is, then the last lines of its stderr (else of its output)."""
    where = f"output in {directory / LOG_FILE}"
    if stderr_tail:
        return f"{where}; the last lines of its stderr:\n{stderr_tail}"
    tail = log_tail(directory)
    return f"{where}:\n{tail}" if tail else f"{where} (empty)"


def log_tail(directory: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a trial's output, for a failure message."""
    try:
        text = (directory / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
