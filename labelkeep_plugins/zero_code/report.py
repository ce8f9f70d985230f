"""The built-in reporter: the run report as a JSON file, one line when recovery was cut short."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from labelkeep_plugins.budget import FALLING
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.jsonfile import write_json_or_tell
from labelkeep_plugins.log import logger
from labelkeep_plugins.zero_code.exit_notices import (
    EVAL_MODE_START,
    NEVER_TRAINED_START,
    NO_COMPRESSION_SEEN,
    OWN_ATTACHES_START,
    UNTRAINED_START,
)

#: The notices of a run where labelkeep did nothing, or nothing useful: told once, at exit.
EXIT_NOTICES = (
    NO_COMPRESSION_SEEN,
    NEVER_TRAINED_START,
    OWN_ATTACHES_START,
    UNTRAINED_START,
    EVAL_MODE_START,
)

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.report_schema import ActiveRunReport, RunReport


@hookimpl
def labelkeep_run_finished(report: ActiveRunReport, path: Path | None) -> None:
    tell_recovery_budget(report)
    tell_exit_notices(report)
    if path is not None:
        write_json_or_tell(path, report)


def speaks_for_all_ranks(report: RunReport) -> bool:
    """Rank 0 (or no rank) speaks for the command: torchrun's RANK, or the group rank that an
    ``mp.spawn`` worker had when it took its reference (the report's ``distributed_rank``)."""
    return os.environ.get("RANK", "0") == "0" and report.get("distributed_rank") in (None, 0)


def tell_exit_notices(report: RunReport) -> None:
    """One stderr line each at exit: nothing to do, nothing trained, an untrained reference."""
    if not speaks_for_all_ranks(report):
        return
    for warning in report.get("warnings") or ():
        if warning.startswith(EXIT_NOTICES):
            logger.warning(warning)


def tell_recovery_budget(report: ActiveRunReport) -> None:
    """One stderr line when mismatches were still falling: the budget, not the loss, fell short.

    Said once per command: under DDP each rank judges its own share of the data, and rank 0
    speaks for them all.
    """
    if not speaks_for_all_ranks(report) or not report.get("training_steps_with_loss"):
        return  # without a step trained with the loss, the passes may be training read as such
    falling = [
        verdict
        for verdict in report.get("recovery_budget") or ()
        if isinstance(verdict, dict) and verdict.get("status") == FALLING
    ]
    if not falling:
        return
    line = str(falling[0].get("message", ""))
    if len(falling) > 1:
        line = f"{falling[0].get('student')}: {line} (and {len(falling) - 1} other model(s))"
    logger.info(line)
