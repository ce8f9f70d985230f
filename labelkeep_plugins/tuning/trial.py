"""Run one trial of ``labelkeep tune``: the user's command under the runner, with one config.

The command runs as a child process (not ``exec``: the search goes on after it) in
exactly the environment ``labelkeep run`` gives it (:func:`run_environment`), with
``--config`` and ``--report`` pointing into the trial's folder. Its output goes to the
trial's ``output.log`` so that the live table stays readable.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.runner import run_environment
from labelkeep_plugins.tuning.store import CONFIG_FILE, LOG_FILE, REPORT_FILE

_LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class TrialRun:
    """What one run of the command left: exit code, report (parsed) and a problem if any."""

    exit_code: int | None
    seconds: float
    report: Any | None
    problem: str | None


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
    with log.open("wb") as output:
        try:
            completed = subprocess.run(
                list(command),
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except OSError as exc:
            return TrialRun(None, time.monotonic() - started, None, f"cannot start: {exc}")
    seconds = time.monotonic() - started
    return TrialRun(completed.returncode, seconds, *_read_report(report, log))


def _read_report(report: Path, log: Path) -> tuple[Any | None, str | None]:
    if not report.exists():
        return None, (
            f"no run report was written ({report}); labelkeep measures inside Python "
            f"processes, so the command must run Python. Output: {log}"
        )
    try:
        return json.loads(report.read_text(encoding="utf-8")), None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"its run report {str(report)!r} cannot be read ({exc})"


def log_tail(directory: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a trial's output, for a failure message."""
    try:
        text = (directory / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
