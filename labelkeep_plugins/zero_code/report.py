"""The built-in reporter: the run report as a JSON file, one line when recovery was cut short."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from labelkeep_plugins.budget import FALLING
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.jsonfile import write_json_or_tell
from labelkeep_plugins.log import logger
from labelkeep_plugins.zero_code.session import NO_COMPRESSION_SEEN

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.report_schema import ActiveRunReport, RunReport


@hookimpl
def labelkeep_run_finished(report: ActiveRunReport, path: Path | None) -> None:
    tell_recovery_budget(report)
    tell_no_compression(report)
    if path is not None:
        write_json_or_tell(path, report)


def tell_no_compression(report: RunReport) -> None:
    """One stderr line at exit when labelkeep had nothing to do in the command's process."""
    if os.environ.get("RANK", "0") == "0" and NO_COMPRESSION_SEEN in (report.get("warnings") or ()):
        logger.warning(NO_COMPRESSION_SEEN)


def tell_recovery_budget(report: ActiveRunReport) -> None:
    """One stderr line when mismatches were still falling: the budget, not the loss, fell short.

    Said once per command: under DDP each rank judges its own share of the data, and rank 0
    speaks for them all.
    """
    if os.environ.get("RANK", "0") != "0":
        return
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
