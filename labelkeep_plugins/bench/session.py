"""One invocation of ``labelkeep bench``: run what is missing, save after each run, report.

An interrupt (^C) stops the run in flight, keeps everything finished, and says how to
resume; the exit code is then 130 like any interrupted command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from labelkeep_plugins.bench.cells import Cell
from labelkeep_plugins.bench.execute import RunFunction, execute_run
from labelkeep_plugins.bench.orchestrate import Orchestrator, TuneFunction
from labelkeep_plugins.bench.outputs import MARKDOWN_FILE, Outputs
from labelkeep_plugins.bench.progress import PrefixedStream, Progress
from labelkeep_plugins.bench.store import RESULTS_FILE, BenchRecord
from labelkeep_plugins.bench.tuned import tune_cell

INTERRUPTED = 130
ALL_FAILED = 1
THREADS_ENV = "OMP_NUM_THREADS"


def run_bench(
    record: BenchRecord,
    cells: dict[str, Cell],
    out: Path,
    argv: Sequence[str],
    *,
    stream: TextIO | None = None,
    run: RunFunction | None = None,
    tune: TuneFunction | None = None,
    jobs: int = 1,
) -> int:
    """Run (or resume) the bench in ``out``, ``jobs`` runs at a time; returns the exit code.

    ``run`` and ``tune`` default to the real child-process runner and ``labelkeep tune``
    (looked up at call time, so tests can replace them).
    """
    err = stream or sys.stderr
    outputs = Outputs(record, out, argv)
    progress = Progress(0, err)
    tune_stream = PrefixedStream(err, "    tune | ")
    run, tune = run or execute_run, tune or tune_cell
    orchestrator = Orchestrator(
        record, cells, out, progress, outputs.save, run=run, tune=tune, tune_stream=tune_stream
    )
    orchestrator.jobs = max(1, jobs)
    _start(orchestrator, outputs, progress)
    try:
        with single_threaded_children():
            orchestrator.run()
    except KeyboardInterrupt:
        outputs.save()
        kept = sum(r.ok for r in record.runs.values())
        progress.note(
            f"labelkeep bench: interrupted; {kept} finished run(s) are kept in {out}. "
            f"Rerun the same command with --resume to continue"
        )
        return INTERRUPTED
    return _finish(outputs, record, out, err)


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """One intra-op thread per run unless the user chose (``OMP_NUM_THREADS`` inherited).

    The bench's models are small: a second thread buys little, and one thread per run
    makes the figures repeat exactly from one bench to the next on the same machine.
    """
    chosen = THREADS_ENV in os.environ
    if not chosen:
        os.environ[THREADS_ENV] = "1"
    try:
        yield
    finally:
        if not chosen:
            os.environ.pop(THREADS_ENV, None)


def _start(orchestrator: Orchestrator, outputs: Outputs, progress: Progress) -> None:
    """Count what is to do and what a resumed bench already did; say so; write the files."""
    progress.total = orchestrator.total_steps()
    done = orchestrator.steps_done()
    progress.skip(done)
    _introduce(orchestrator.record, orchestrator.out, progress, done)
    outputs.save()


def _introduce(record: BenchRecord, out: Path, progress: Progress, done: int) -> None:
    s = record.settings
    resumed = f"; resuming: {done} step(s) already done" if done else ""
    budgets = ", ".join(f"x{b}" for b in s.budgets)
    progress.note(
        f"labelkeep bench ({s.profile}): {len(s.cells)} cell(s) x {', '.join(s.methods)} x "
        f"{len(s.seeds)} seed(s) x budget(s) {budgets}, {s.trials} tuning trial(s) per cell; "
        f"{progress.total} step(s); output in {out}{resumed}"
    )


def _finish(outputs: Outputs, record: BenchRecord, out: Path, err: TextIO) -> int:
    outputs.save()
    print("", file=err, flush=True)
    outputs.print_table(sys.stdout)
    print(outputs.plot(), file=err)
    print(f"wrote {out / RESULTS_FILE} and {out / MARKDOWN_FILE}", file=err)
    if record.runs and not any(r.ok for r in record.runs.values()):
        print("labelkeep bench: every run failed; see the output.log of each", file=err)
        return ALL_FAILED
    return 0
