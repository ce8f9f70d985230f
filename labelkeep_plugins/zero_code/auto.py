"""Zero-code activation inside a process started by ``labelkeep run``.

The runner sets ``LABELKEEP_AUTO`` and puts :mod:`labelkeep_plugins.zero_code.bootstrap`
first on ``PYTHONPATH``; its ``sitecustomize`` calls :func:`activate_from_environment`
in every Python process of the command (subprocesses and ``torchrun`` workers too).

Whatever happens, the user's run goes on (strict mode aside) and the report asked for is
written: with ``active: false`` and the error when labelkeep cannot start, at exit, and
before SIGTERM or SIGHUP end the process. Strict mode stops a process whose labelkeep
cannot start before its script runs (exit 2).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from labelkeep_plugins.env import AUTO_ENV, CONFIG_ENV, REPORT_ENV, STRICT_ENV
from labelkeep_plugins.errors import ConfigError, LabelkeepError, PluginError
from labelkeep_plugins.jsonfile import unwritable_reason, write_json_or_tell
from labelkeep_plugins.log import logger
from labelkeep_plugins.zero_code.exit_notices import NO_COMPRESSION_SEEN
from labelkeep_plugins.zero_code.report_files import (
    is_command_process,
    other_process_reports,
    report_path,
)

if TYPE_CHECKING:
    from labelkeep_plugins.config import Config
    from labelkeep_plugins.zero_code.report_schema import ActiveRunReport, InactiveRunReport
    from labelkeep_plugins.zero_code.session import Session

REFUSED_EXIT_CODE = 2
# Signals whose default action ends Python without atexit (SIGKILL cannot be caught). SIGINT is
# not among them: Python's own handler raises KeyboardInterrupt, and atexit writes the report.
REPORTED_SIGNALS = ("SIGTERM", "SIGHUP")


class _Reporting:
    """Who owns this process's report (a forked child holds a copy of it) and what was sent."""

    owner_pid: ClassVar[int | None] = None
    started_at: ClassVar[float] = time.time()  # reports written before this are another run's
    written: ClassVar[weakref.WeakSet[Any]] = weakref.WeakSet()


def activate_from_environment() -> None:
    """Instrument this process if the runner asked for it; never break the user's program.

    In strict mode a failure raises instead; ``sitecustomize`` then calls :func:`refuse_to_start`.
    """
    if not os.environ.get(AUTO_ENV):
        return
    strict = bool(os.environ.get(STRICT_ENV))
    source = config_source()
    try:
        session = _instrument(source, strict)
    except Exception as exc:
        if strict:
            raise
        run_without_labelkeep(exc, source)
        return
    _Reporting.owner_pid = os.getpid()
    _watch_crash(session)
    atexit.register(write_report_at_exit)
    _report_on_signals()
    _tell_plugins_started(session)  # their atexit work runs before the report is written


def _instrument(source: Path | None, strict: bool) -> Session:
    from labelkeep_plugins.config import Config, load_config
    from labelkeep_plugins.zero_code.instrument import instrument

    config = load_config(source) if source is not None else Config()
    config = replace(
        config,
        strict=config.strict or strict,
        report=os.environ.get(REPORT_ENV) or config.report,
    )
    config = adjusted_by_plugins(config)  # e.g. inside an NNI trial: its weights, its report
    check_report_path(config)
    return instrument(config)


def adjusted_by_plugins(config: Config) -> Config:
    """``config`` passed through each ``labelkeep_auto_config`` implementation in turn."""
    from labelkeep_plugins.config import Config
    from labelkeep_plugins.plugins import load_plugins

    caller = load_plugins(strict=config.strict).hook.labelkeep_auto_config
    for implementation in reversed(caller.get_hookimpls()):  # pluggy's call order
        changed = implementation.function(**{name: config for name in implementation.argnames})
        if changed is None:
            continue
        if not isinstance(changed, Config):
            raise PluginError(
                f"plugin {implementation.plugin_name!r}: labelkeep_auto_config returned "
                f"{type(changed).__name__}; return a Config (dataclasses.replace(config, ...)) "
                "or None"
            )
        config = changed
    return config


def _tell_plugins_started(session: Session) -> None:
    from labelkeep_plugins.plugins import load_plugins

    try:
        load_plugins().hook.labelkeep_session_started(session=session)
    except Exception as exc:
        if session.config.strict:
            raise
        logger.warning(f"a plugin failed when the session started ({type(exc).__name__}: {exc})")


def config_source() -> Path | None:
    """The file auto mode reads (``$LABELKEEP_CONFIG``, else ``./labelkeep.yaml`` if there).

    Absolute, so that an error names the file wherever the process runs.
    """
    from labelkeep_plugins.config import DEFAULT_CONFIG_FILE

    chosen = os.environ.get(CONFIG_ENV)
    if chosen:
        return Path(os.path.abspath(chosen))
    default = Path(DEFAULT_CONFIG_FILE)
    return Path(os.path.abspath(default)) if default.is_file() else None


def check_report_path(config: Config) -> None:
    """Tell at the start, not after training, that the report cannot be written.

    The run goes on (the path may be fixed before the end); strict mode refuses instead.
    """
    path = report_path(config.report)
    if path is None or not speaks_for_command():
        return
    reason = unwritable_reason(path)
    if reason is None:
        return
    message = f"cannot write the report to {str(path)!r}: {reason}"
    if config.strict:
        raise LabelkeepError(message)  # not a ConfigError: the path may come from --report
    if os.environ.get("RANK", "0") == "0":
        logger.warning(
            f"{message} (labelkeep stays active; the report is lost unless the "
            "path is fixed before the command ends)"
        )


def describe(exc: BaseException, source: Path | None) -> str:
    """One line for an error; a configuration error always names the file it came from."""
    text = str(exc) if isinstance(exc, LabelkeepError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConfigError) and source is not None and str(source) not in text:
        text = f"config file {str(source)!r}: {text}"
    return text


def run_without_labelkeep(exc: Exception, source: Path | None) -> None:
    """Labelkeep cannot start here: say why and how to fix it, on stderr and in the report."""
    error = describe(exc, source)
    fix = "run with --strict to stop before the command starts"
    if isinstance(exc, ConfigError) and source is not None:
        fix = f"fix the file, or {fix}"
    path = report_path(os.environ.get(REPORT_ENV))
    written = write_inactive_report(os.environ.get(REPORT_ENV), exc, source)  # nothing changes it
    told = f"; the report {str(path)!r} says active: false" if written else ""
    logger.error(
        f"not active in this process: {error}; the command runs without labelkeep{told} ({fix})"
    )


def inactive_report(error: str, source: Path | None) -> InactiveRunReport:
    """The report of a process labelkeep could not start in: so a reader is not left guessing."""
    from labelkeep_plugins._version import __version__

    return {
        "labelkeep_version": __version__,
        "active": False,
        "error": error,
        "config_file": None if source is None else str(source),
        "references": [],
        "training_steps_with_loss": 0,
        "agreement": None,
        "failures": [error],
        "warnings": [],
        "crashed": None,
    }


def refuse_to_start(exc: BaseException) -> NoReturn:
    """Strict mode: say why labelkeep cannot start, and end the process before its script runs.

    Called from ``sitecustomize``, where ``SystemExit`` is no way out (Python makes it a fatal
    "Failed to import the site module" with a traceback and exit code 1): so ``os._exit``.
    """
    source = config_source()
    logger.error(f"error: {describe(exc, source)} (strict mode: stopping before the script runs)")
    write_inactive_report(os.environ.get(REPORT_ENV), exc, source)
    _flush_streams()
    os._exit(REFUSED_EXIT_CODE)


def write_inactive_report(
    base: str | None, exc: BaseException, source: Path | None, *, runner: bool = False
) -> bool:
    """The ``active: false`` report, at once, where this process speaks for the command
    (the runner itself does, when it refuses to start the command)."""
    path = report_path(base)
    speaks = runner or speaks_for_command()
    if path is None or not speaks or unwritable_reason(path) is not None:
        return False
    return write_json_or_tell(path, inactive_report(describe(exc, source), source))


def speaks_for_command() -> bool:
    """This process writes the report: the command's own process, or a torchrun rank."""
    return is_command_process() or os.environ.get("RANK") is not None


def write_report_at_exit() -> None:
    """Hand the report of this process to the reporters, once, if it is the command's or a rank's.

    A forked child (a DataLoader worker) skips it: its session is a stale copy of its parent's.
    """
    from labelkeep_plugins.plugins import load_plugins
    from labelkeep_plugins.zero_code.instrument import current_session

    session = current_session()
    if session is None or session in _Reporting.written or not _owns_session():
        return
    _Reporting.written.add(session)
    report = session.report()
    session.detach_all()
    path = report_path(session.config.report, distributed_rank=session.distributed_rank)
    if is_command_process() and not report["references"] and path is not None:
        path = _point_to_other_processes(report, path)
    if speaks_for_command() or report["references"]:
        load_plugins().hook.labelkeep_run_finished(report=report, path=path)


def _point_to_other_processes(report: ActiveRunReport, path: Path) -> Path | None:
    """The command's process compressed nothing itself: list the reports other processes
    wrote during the command (DDP ranks, ``mp.spawn`` workers, a training subprocess) instead
    of saying that no compression was seen. Returns where to write this report: nowhere when
    another process wrote ``path`` itself (``torchrun --nproc-per-node 1``, a subprocess)."""
    others = other_process_reports(path, since=_Reporting.started_at)
    if not others:
        return path
    report["process_reports"] = others
    report["warnings"] = [w for w in report["warnings"] if w != NO_COMPRESSION_SEEN]
    logger.info(
        f"the compression ran in {len(others)} other process(es) of this command; "
        f"their reports: {', '.join(others)}"
    )
    return None if str(path) in others else path


def _owns_session() -> bool:
    return _Reporting.owner_pid in (None, os.getpid())


def _report_on_signals() -> None:
    """Write the report before SIGTERM or SIGHUP end the process, which skips atexit.

    Only over the default action, and only now: a Python handler already in place keeps the
    process's fate in Python's hands, an ignored signal stays ignored, and a handler the
    script installs later replaces this one.
    """
    for name in REPORTED_SIGNALS:
        number = getattr(signal, name, None)
        try:
            if number is not None and signal.getsignal(number) == signal.SIG_DFL:
                signal.signal(number, _report_then_die)
        except (OSError, ValueError):  # not the main thread, or refused by this platform
            continue


def _report_then_die(number: int, frame: FrameType | None) -> None:
    """Write the report, then let the signal end the process as it would have (same status)."""
    signal.signal(number, signal.SIG_DFL)  # a second signal while writing ends it at once
    if _owns_session():
        from labelkeep_plugins.zero_code.instrument import current_session

        session = current_session()
        try:
            if session is not None and session.crashed is None:
                session.crashed = f"terminated by {signal.Signals(number).name}"
            write_report_at_exit()
        except Exception as exc:
            logger.error(f"no report ({type(exc).__name__}: {exc})")
    _flush_streams()
    os.kill(os.getpid(), number)
    os._exit(128 + number)  # not reached: the default action of these signals ends the process


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _watch_crash(session: object) -> None:
    previous = sys.excepthook

    def excepthook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        session.crashed = f"{kind.__name__}: {value}"  # type: ignore[attr-defined]
        previous(kind, value, traceback)

    sys.excepthook = excepthook
