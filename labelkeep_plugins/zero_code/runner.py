"""``labelkeep run -- CMD`` and ``labelkeep-run CMD``: run a command with labelkeep active.

Like ``opentelemetry-instrument``: the bootstrap folder goes first on
``PYTHONPATH`` (its ``sitecustomize`` activates labelkeep in every Python process),
then the command replaces this process, so its exit code is the command's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from labelkeep_plugins.config import Config, load_config
from labelkeep_plugins.env import AUTO_ENV, CONFIG_ENV, REPORT_ENV, ROOT_PID_ENV, STRICT_ENV
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.jsonfile import unwritable_reason
from labelkeep_plugins.log import logger
from labelkeep_plugins.plugins import check_terms
from labelkeep_plugins.tuners.base import make_tuner
from labelkeep_plugins.zero_code.auto import config_source, write_inactive_report

COMMAND_NOT_FOUND = 127
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "bootstrap"


def run_environment(
    environ: dict[str, str],
    *,
    config: str | None = None,
    report: str | None = None,
    strict: bool = False,
) -> dict[str, str]:
    """The environment a command gets under labelkeep (``environ`` is not modified)."""
    env = dict(environ)
    paths = [str(BOOTSTRAP_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env[AUTO_ENV] = "1"
    if config is not None:
        env[CONFIG_ENV] = str(Path(config).resolve())
    if report is not None:
        env[REPORT_ENV] = str(Path(report).resolve())
    if strict:
        env[STRICT_ENV] = "1"
    env[ROOT_PID_ENV] = str(os.getpid())  # exec keeps the pid: the command's root process
    return env


def execute(
    command: Sequence[str],
    *,
    config: str | None = None,
    report: str | None = None,
    strict: bool = False,
) -> int:
    """Replace this process with ``command``; returns only if it cannot be started."""
    if not command:
        logger.error("no command given; usage: labelkeep run [options] -- CMD [ARGS...]")
        return 2
    try:
        check_before_start(config=config, report=report, strict=strict)
    except ConfigError as exc:  # the report asked for says so too (when it can be written)
        if report is not None:
            source = Path(config).resolve() if config is not None else config_source()
            write_inactive_report(str(Path(report).resolve()), exc, source, runner=True)
        raise
    executable = shutil.which(command[0])
    if executable is None:
        logger.error(f"command not found: {command[0]!r} (check the name and PATH)")
        return COMMAND_NOT_FOUND
    env = run_environment(dict(os.environ), config=config, report=report, strict=strict)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, list(command), env)
    except OSError as exc:
        logger.error(f"cannot run {command[0]!r}: {exc.strerror}")
        return 126
    return 0  # not reached


def check_before_start(*, config: str | None, report: str | None, strict: bool) -> None:
    """Refuse (exit 2), before the command starts, what would otherwise show only in it.

    That is a bad ``--config`` file, under ``--strict`` also a bad auto-found one
    (``$LABELKEEP_CONFIG``, ``./labelkeep.yaml``), and a ``--report`` path that cannot be
    written: asked for on this command line, it would be lost after the whole run. Without
    ``--strict``, the command's processes check the rest and run on without labelkeep (and
    say so) rather than stop the user's run.
    """
    if config is not None:
        check_against_plugins(load_config(config), config)
    elif strict or os.environ.get(STRICT_ENV):
        source = config_source()
        if source is not None:
            check_against_plugins(load_config(source), str(source))
    if report is not None:
        reason = unwritable_reason(Path(report))
        if reason is not None:
            raise ConfigError(
                f"cannot write the report to {str(Path(report).resolve())!r} "
                f"(--report {report}): {reason}"
            )


def check_against_plugins(config: Config, source: str) -> None:
    """What a file cannot check alone: that its terms and its tuner are registered ones."""
    try:
        check_terms(config.loss)
        make_tuner(config)
    except ConfigError as exc:
        raise ConfigError(f"config file {source!r}: {exc}") from exc


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="labelkeep YAML file (default: $LABELKEEP_CONFIG or ./labelkeep.yaml)"
    )
    parser.add_argument("--report", help="write the JSON run report here (per rank under DDP)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop on any labelkeep failure instead of warning and going on",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")


def run_from_options(options: argparse.Namespace) -> int:
    command = list(options.command)
    if command and command[0] == "--":
        command = command[1:]
    return execute(command, config=options.config, report=options.report, strict=options.strict)


def labelkeep_run_main(argv: Sequence[str] | None = None) -> int:
    """``labelkeep-run [--config F] [--report F] [--strict] CMD [ARGS...]``."""
    parser = argparse.ArgumentParser(
        prog="labelkeep-run", description="Run a command with labelkeep active."
    )
    add_run_arguments(parser)
    options = parser.parse_args(argv)
    from labelkeep_plugins.errors import LabelkeepError

    try:
        return run_from_options(options)
    except LabelkeepError as exc:
        logger.error(f"error: {exc}")
        return 2
