"""The built-in reporter: the run report as a JSON file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.jsonfile import write_json


@hookimpl
def labelkeep_run_finished(report: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    try:
        write_json(path, report)
    except OSError as exc:
        print(f"labelkeep: cannot write the report to {str(path)!r}: {exc}", file=sys.stderr)
