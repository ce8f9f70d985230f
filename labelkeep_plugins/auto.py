"""Zero-code activation inside a process started by ``labelkeep run``.

The runner sets ``LABELKEEP_AUTO`` and puts :mod:`labelkeep_plugins.bootstrap`
first on ``PYTHONPATH``; its ``sitecustomize`` calls :func:`activate_from_environment`
in every Python process of the command (subprocesses and ``torchrun`` workers too).
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import TracebackType

AUTO_ENV = "LABELKEEP_AUTO"
REPORT_ENV = "LABELKEEP_REPORT"
STRICT_ENV = "LABELKEEP_STRICT"
ROOT_PID_ENV = "LABELKEEP_ROOT_PID"


def activate_from_environment() -> None:
    """Instrument this process if the runner asked for it; never break the user's program."""
    if not os.environ.get(AUTO_ENV):
        return
    strict = bool(os.environ.get(STRICT_ENV))
    try:
        from labelkeep_plugins.config import load_config
        from labelkeep_plugins.instrumentation import instrument

        config = load_config()
        config = replace(
            config,
            strict=config.strict or strict,
            report=os.environ.get(REPORT_ENV) or config.report,
        )
        from labelkeep_plugins.tuning.nni_trial import prepare_config, start_reporting

        config = prepare_config(config)  # inside an NNI trial: its weights, its report folder
        session = instrument(config)
    except Exception as exc:
        if strict:
            raise
        print(
            f"labelkeep: not active in this process ({type(exc).__name__}: {exc}); "
            "the command runs without labelkeep",
            file=sys.stderr,
        )
        return
    _watch_crash(session)
    atexit.register(write_report_at_exit)
    start_reporting(session)  # NNI trial only; runs before the report is written


def report_path(base: str | None) -> Path | None:
    """The report file of this process: one per rank under DDP/torchrun, else ``base``."""
    if not base:
        return None
    rank = os.environ.get("RANK")
    if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1":
        path = Path(base)
        return path.with_name(f"{path.stem}.rank{rank}{path.suffix or '.json'}")
    return Path(base)


def write_report_at_exit() -> None:
    """Hand the report of this process to the reporters, if it is the command's own or a rank."""
    from labelkeep_plugins.instrumentation import current_session
    from labelkeep_plugins.plugins import load_plugins

    session = current_session()
    if session is None:
        return
    report = session.report()
    session.detach_all()
    is_root = os.environ.get(ROOT_PID_ENV) == str(os.getpid())
    is_rank = os.environ.get("RANK") is not None
    if is_root or is_rank or report["references"]:
        load_plugins().hook.labelkeep_run_finished(
            report=report, path=report_path(session.config.report)
        )


def _watch_crash(session: object) -> None:
    previous = sys.excepthook

    def excepthook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        session.crashed = f"{kind.__name__}: {value}"  # type: ignore[attr-defined]
        previous(kind, value, traceback)

    sys.excepthook = excepthook
