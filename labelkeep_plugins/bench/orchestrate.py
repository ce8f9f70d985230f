"""The bench loop: the runs that train the shared checkpoints first, then everything else.

The first run of each model and seed pretrains the checkpoint that the other methods,
levels and budgets of that model load, so those runs go first (``jobs`` at a time) and
the rest follow; tuning runs in the main thread meanwhile (holding one of the ``jobs``
slots), and the tuned runs come last, when the plain runs they may reuse are finished.
Finished runs (from ``--resume``) are skipped; every result is saved at once. How a run
is executed and how a cell is tuned are parameters, so the loop, resume and interrupt
handling are tested without training anything.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.cells import Cell
from labelkeep_plugins.bench.execute import RunFunction, execute_run
from labelkeep_plugins.bench.plan import (
    PLAIN,
    PLAIN_LOSS,
    TUNED,
    BenchSettings,
    RunKey,
    method_config,
    pretrained_path,
    script_command,
)
from labelkeep_plugins.bench.pool import RunPool
from labelkeep_plugins.bench.progress import PrefixedStream, Progress
from labelkeep_plugins.bench.store import BenchRecord, RunResult
from labelkeep_plugins.bench.tuned import TuningOutcome, tune_cell, tune_directory
from labelkeep_plugins.config import Config
from labelkeep_plugins.experiments.tables import TextSink
from labelkeep_plugins.tuning.store import RESULTS_FILE

TuneFunction = Callable[[Cell, BenchSettings, Path, TextSink], TuningOutcome]
REUSED_PLAIN = (
    "tuning kept plain recovery (no searched setting beat it on the validation seeds), "
    "so these are plain's runs"
)


class Orchestrator:
    """Runs what ``record`` does not hold yet, ``jobs`` at a time; saves after every change."""

    def __init__(
        self,
        record: BenchRecord,
        cells: dict[str, Cell],
        out: Path,
        progress: Progress,
        save: Callable[[], None],
        *,
        run: RunFunction = execute_run,
        tune: TuneFunction = tune_cell,
        tune_stream: TextSink | None = None,
        jobs: int = 1,
    ) -> None:
        self.record, self.cells, self.out = record, cells, out
        self.settings: BenchSettings = record.settings
        self.progress, self.save = progress, save
        self._run, self._tune = run, tune
        self._tune_stream = tune_stream
        self.jobs = max(1, jobs)
        self._lock = threading.Lock()  # the record, its files and the progress line
        self._pool = RunPool(1)

    def total_steps(self) -> int:
        tuning = (self.settings.trials + 1) * len(self.settings.cells)
        return len(self.settings.run_keys()) + (tuning if TUNED in self.settings.methods else 0)

    def steps_done(self) -> int:
        """Steps an earlier invocation finished: ok runs and recorded tuning trials."""
        done = sum(self.record.finished(key) for key in self.settings.run_keys())
        if TUNED in self.settings.methods:
            done += sum(self._trials_recorded(self.cells[c]) for c in self.settings.cells)
        return done

    def run(self) -> None:
        """Everything missing; an interrupt (or a job's error) stops the rest and re-raises."""
        pending = [k for k in self.settings.run_keys() if not self.record.finished(k)]
        untuned = [k for k in pending if k.method != TUNED]
        tuned = [k for k in pending if k.method == TUNED]
        first = self.checkpoint_runs(untuned)
        self._pool = pool = RunPool(self.jobs)
        try:
            pool.wait([pool.submit(self._job, key) for key in first])
            later = [pool.submit(self._job, key) for key in untuned if key not in first]
            outcomes = self._tune_cells(tuned)
            pool.wait(later)
            pool.wait([pool.submit(self._tuned_job, k, outcomes[k.cell]) for k in tuned])
        except BaseException:
            pool.close(interrupted=True)
            raise
        pool.close()

    def checkpoint_runs(self, keys: Sequence[RunKey]) -> list[RunKey]:
        """One run per model and seed whose checkpoint is missing: plain at x1 when pending."""
        chosen: dict[tuple[str, int], RunKey] = {}
        for key in sorted(keys, key=lambda k: (k.method != PLAIN, k.budget)):
            cell = self.cells[key.cell]
            checkpoint = Path(pretrained_path(cell, self.out).replace("{seed}", str(key.seed)))
            if not checkpoint.exists():
                chosen.setdefault((cell.model_slug, key.seed), key)
        first = set(chosen.values())
        return [key for key in keys if key in first]

    def _job(self, key: RunKey) -> None:
        self._execute(self.cells[key.cell], key, method_config(key.method))

    def _tune_cells(self, tuned: Sequence[RunKey]) -> dict[str, TuningOutcome]:
        """Tune each cell that has tuned runs to do, one at a time, holding one job slot."""
        outcomes = {}
        for cell_key in dict.fromkeys(key.cell for key in tuned):
            with self._pool.slot():
                outcomes[cell_key] = self._tuning(self.cells[cell_key])
        return outcomes

    def _tuning(self, cell: Cell) -> TuningOutcome:
        before = self._trials_recorded(cell)
        seeds = ", ".join(map(str, self.settings.validation_seeds))
        self.progress.note(f"tuning {cell.key} on validation seed(s) {seeds}, val split")
        stream = PrefixedStream(self._tune_stream, f"{cell.key} ") if self._tune_stream else None
        outcome = self._tune(cell, self.settings, self.out, stream or _Null())
        steps = max(self.settings.trials + 1 - before, 0)
        with self._lock:
            self.record.tuning[cell.key] = outcome.to_dict()
            self.save()
            self.progress.step(f"{cell.key} tuned: {describe_outcome(outcome)}", steps=steps)
        return outcome

    def _tuned_job(self, key: RunKey, outcome: TuningOutcome) -> None:
        cell = self.cells[key.cell]
        if outcome.loss is None:
            self._store(RunResult(key, "failed", 0.0, error=f"not run: {outcome.error}"))
            return
        plain = self.record.runs.get(RunKey(cell.key, PLAIN, key.seed, key.budget))
        if outcome.kept_plain and plain is not None and plain.ok:
            reused = RunResult(key, "ok", 0.0, dict(plain.figures), PLAIN_LOSS, note=REUSED_PLAIN)
            self._store(reused)
            return
        self._execute(cell, key, method_config(TUNED, outcome.loss))

    def _execute(self, cell: Cell, key: RunKey, config: Config) -> None:
        command = script_command(cell, [key.seed], "test", self.settings, self.out, key.budget)
        self._store(self._run(key, command, config, key.directory(self.out)))

    def _store(self, result: RunResult) -> None:
        if self._pool.stopped.is_set():  # finished after an interrupt: its child was stopped
            return
        with self._lock:
            self.record.runs[result.key] = result
            self.save()
            self.progress.step(describe(result))

    def _trials_recorded(self, cell: Cell) -> int:
        path = tune_directory(self.out, cell) / RESULTS_FILE
        try:
            trials = json.loads(path.read_text(encoding="utf-8")).get("trials", [])
        except (OSError, ValueError, AttributeError):
            return 0
        return min(len(trials), self.settings.trials + 1)


def describe(result: RunResult) -> str:
    """The progress text of one finished run."""
    if not result.ok:
        first = (result.error or "").splitlines()[0] if result.error else "failed"
        return f"{result.key.label}: FAILED ({first})"
    f = result.figures
    accuracy = f.get("accuracy")
    acc = "n/a" if accuracy is None else f"{100 * accuracy:.1f}%"
    took = "reused plain" if result.note == REUSED_PLAIN else f"{result.seconds:.1f} s"
    return (
        f"{result.key.label}: {f.get('mismatches')}/{f.get('samples')} mismatches, "
        f"{f.get('negative_flips')} negative flips, accuracy {acc} ({took})"
    )


def describe_outcome(outcome: TuningOutcome) -> str:
    if outcome.loss is None:
        return f"no configuration ({outcome.error})"
    if outcome.kept_plain:
        return "plain recovery kept (no searched setting beat it on validation)"
    return f"trial {outcome.best_trial}: {_short(outcome.parameters)}"


def _short(parameters: dict[str, Any] | None) -> str:
    if not parameters:
        return "-"
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in parameters.items()
    )


class _Null:
    """A stream that drops what is written (tuning's own table when nobody wants it)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None
