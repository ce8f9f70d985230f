"""Which file each process of a command writes its report to, and finding the others'.

One command can run labelkeep in several processes: ``torchrun`` workers, workers started
by ``torch.multiprocessing.spawn``, subprocesses. Each process that took a reference writes
its own report, so none overwrites another:

* a torchrun rank (``RANK`` set, in a child of the command or with ``WORLD_SIZE`` not 1):
  ``report.rank{RANK}.json``;
* another child process: ``report.rank{r}.json`` with its ``torch.distributed`` rank when it
  had joined a process group (``mp.spawn`` workers pass their rank to
  ``init_process_group``, not through ``RANK``), else ``report.pid{pid}.json``;
* the command's own process: ``report.json`` itself.

When the command's own process took no reference (torchrun's launcher, a script that only
spawns its workers), its report lists the files its children wrote during the command
rather than saying that no compression was seen.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelkeep_plugins.env import ROOT_PID_ENV


def report_path(base: str | None, *, distributed_rank: int | None = None) -> Path | None:
    """The report file of this process (the rules above); ``None`` without a base path."""
    if not base:
        return None
    path = Path(base)
    rank = os.environ.get("RANK")
    command = is_command_process()
    if rank is not None and (os.environ.get("WORLD_SIZE", "1") != "1" or not command):
        return _sibling(path, f"rank{rank}")
    if command:
        return path
    if distributed_rank is not None:
        return _sibling(path, f"rank{distributed_rank}")
    return _sibling(path, f"pid{os.getpid()}")


def is_command_process() -> bool:
    """This is the process the runner started (or no runner started this one at all)."""
    root = os.environ.get(ROOT_PID_ENV)
    return root is None or root == str(os.getpid())


def distributed_rank() -> int | None:
    """This process's rank in an initialised ``torch.distributed`` group, else ``None``.

    Read when a reference is taken: by the end of a run the group is usually destroyed.
    """
    import sys

    dist = sys.modules.get("torch.distributed")  # never the import that loads it
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except (RuntimeError, ValueError):
        return None
    return None


def other_process_reports(base: Path, since: float) -> list[str]:
    """Reports the command's other processes wrote next to ``base`` since ``since``."""
    suffix = base.suffix or ".json"
    found = []
    for kind in ("rank", "pid"):
        for candidate in base.parent.glob(f"{base.stem}.{kind}*{suffix}"):
            tag = candidate.name[len(base.stem) + 1 + len(kind) : -len(suffix)]
            if tag.isdigit() and _modified_since(candidate, since):
                found.append(str(candidate))
    return sorted(found)


def _modified_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:  # removed meanwhile
        return False


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}.{tag}{path.suffix or '.json'}")
