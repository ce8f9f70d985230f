"""Zero-code activation inside a process started by ``labelkeep run``.

The runner sets ``LABELKEEP_AUTO`` and puts :mod:`labelkeep_plugins.bootstrap`
first on ``PYTHONPATH``; its ``sitecustomize`` calls :func:`activate_from_environment`
in every Python process of the command (subprocesses and ``torchrun`` workers too).
"""

from __future__ import annotations

import atexit
import json
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
    """Write the JSON report of this process, if it is the command's own or a training rank."""
    from labelkeep_plugins.instrumentation import current_session

    session = current_session()
    if session is None:
        return
    report = session.report()
    is_root = os.environ.get(ROOT_PID_ENV) == str(os.getpid())
    is_rank = os.environ.get("RANK") is not None
    session.detach_all()
    if not (is_root or is_rank or report["references"]):
        return
    path = report_path(session.config.report)
    if path is None:
        return
    try:
        write_json(path, report)
    except OSError as exc:
        print(f"labelkeep: cannot write the report to {str(path)!r}: {exc}", file=sys.stderr)


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write atomically, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _watch_crash(session: object) -> None:
    previous = sys.excepthook

    def excepthook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        session.crashed = f"{kind.__name__}: {value}"  # type: ignore[attr-defined]
        previous(kind, value, traceback)

    sys.excepthook = excepthook
