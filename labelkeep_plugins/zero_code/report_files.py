"""Which file each process of a command writes its report to, and finding the others'.

One command can run labelkeep in several processes: ``torchrun`` workers, workers started
by ``torch.multiprocessing.spawn``, subprocesses. Each process that took a reference writes
its report, and none overwrites another's:

* a torchrun rank (``RANK`` set, ``WORLD_SIZE`` not 1): ``report.rank{RANK}.json``;
* a ``multiprocessing`` worker without ``RANK`` (``mp.spawn``'s workers pass their rank to
  ``init_process_group`` instead): ``report.rank{r}.json`` with the ``torch.distributed``
  rank it had when it took its reference, else ``report.pid{pid}.json``;
* any other process (the command's own, a subprocess it runs): ``report.json`` itself.

The command's own process, when it took no reference itself (torchrun's launcher, a script
that spawns its workers or runs a training subprocess), lists the workers' files and leaves
a ``report.json`` another process wrote during the command as it is, rather than replacing
it with one that says no compression was seen.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from labelkeep_plugins.env import ROOT_PID_ENV


def report_path(base: str | None, *, distributed_rank: int | None = None) -> Path | None:
    """The report file of this process (the rules above); ``None`` without a base path."""
    if not base:
        return None
    path = Path(base)
    rank = os.environ.get("RANK")
    if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1":
        return _sibling(path, f"rank{rank}")
    if rank is None and is_worker_process():
        if distributed_rank is not None:
            return _sibling(path, f"rank{distributed_rank}")
        return _sibling(path, f"pid{os.getpid()}")
    return path


def is_command_process() -> bool:
    """This is the process ``labelkeep run`` started (``exec`` keeps the runner's pid)."""
    return os.environ.get(ROOT_PID_ENV) == str(os.getpid())


def is_worker_process() -> bool:
    """Started by ``multiprocessing`` (``mp.spawn``, a ``Process``, a pool), not as a command."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def distributed_rank() -> int | None:
    """This process's rank in an initialised ``torch.distributed`` group, else ``None``.

    Read when a reference is taken: by the end of a run the group is usually destroyed.
    """
    dist = sys.modules.get("torch.distributed")  # never the import that loads it
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except (RuntimeError, ValueError):
        return None
    return None


def other_process_reports(base: Path, since: float) -> list[str]:
    """Reports the command's other processes wrote since ``since``: ``base`` itself (this
    process has not written it yet) and the workers' files beside it."""
    suffix = base.suffix or ".json"
    found = [str(base)] if _modified_since(base, since) else []
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
