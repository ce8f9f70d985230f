"""Atomic JSON files: a reader never sees half a report or half a results file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labelkeep_plugins.log import logger


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    The temporary file goes on every failure (a full disk, ``path`` being a directory), so a
    failed write leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def write_json_or_tell(path: Path, data: Mapping[str, Any], what: str = "the report") -> bool:
    """:func:`write_json`, where a failure costs one stderr line with the fix, never the run."""
    try:
        write_json(path, data)
    except OSError as exc:
        reason = unwritable_reason(path) or exc.strerror or str(exc)
        logger.error(f"cannot write {what} to {str(path)!r}: {reason}")
        return False
    return True


def unwritable_reason(path: Path) -> str | None:
    """Why :func:`write_json` could not write ``path``, with the fix; None when it should work.

    Checked before a run, so that a bad path is told at the start, not after hours of
    training. Creates no folder: it probes the nearest existing one with a temporary file.
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return f"it is a directory; give a file path such as {str(path / 'report.json')!r}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return (
            f"{str(folder)!r} is a file, not a folder; choose a path in a folder "
            "(or one that can be created)"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".labelkeep-probe-"):
            pass
    except OSError as exc:
        return (
            f"cannot create files in {str(folder)!r} ({exc.strerror or exc}); "
            "choose a folder you can write to"
        )
    return None
