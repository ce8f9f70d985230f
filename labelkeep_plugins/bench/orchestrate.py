"""The bench loop: cell by cell, method by method, seed by seed; tuning before the tuned runs.

Finished runs (from ``--resume``) are skipped, everything else runs in a child process
and is saved at once. How a run is executed and how a cell is tuned are parameters, so
the loop, resume and interrupt handling are tested without training anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from labelkeep_plugins.bench.cells import Cell
from labelkeep_plugins.bench.execute import RunFunction, execute_run
from labelkeep_plugins.bench.plan import (
    PLAIN,
    PLAIN_LOSS,
    TUNED,
    BenchSettings,
    RunKey,
    method_config,
    script_command,
)
from labelkeep_plugins.bench.progress import Progress
from labelkeep_plugins.bench.store import BenchRecord, RunResult
from labelkeep_plugins.bench.tuned import TuningOutcome, tune_cell, tune_directory
from labelkeep_plugins.config import Config
from labelkeep_plugins.tuning.store import RESULTS_FILE

TuneFunction = Callable[[Cell, BenchSettings, Path, TextIO], TuningOutcome]
REUSED_PLAIN = (
    "tuning kept plain recovery (no searched setting beat it on the validation seeds), "
    "so these are plain's runs"
)


class Orchestrator:
    """Runs what ``record`` does not hold yet; calls ``save`` after every change."""

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
        tune_stream: TextIO | None = None,
    ) -> None:
        self.record, self.cells, self.out = record, cells, out
        self.settings: BenchSettings = record.settings
        self.progress, self.save = progress, save
        self._run, self._tune = run, tune
        self._tune_stream = tune_stream

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
        for cell_key in self.settings.cells:
            cell = self.cells[cell_key]
            for method in self.settings.methods:
                self._method(cell, method)

    def _method(self, cell: Cell, method: str) -> None:
        keys = [RunKey(cell.key, method, seed) for seed in self.settings.seeds]
        pending = [key for key in keys if not self.record.finished(key)]
        if not pending:
            return
        if method != TUNED:
            for key in pending:
                self._execute(cell, key, method_config(method))
            return
        outcome = self._tuning(cell)
        for key in pending:
            self._tuned_run(cell, key, outcome)

    def _tuning(self, cell: Cell) -> TuningOutcome:
        before = self._trials_recorded(cell)
        seeds = ", ".join(map(str, self.settings.validation_seeds))
        self.progress.note(f"tuning {cell.key} on validation seed(s) {seeds}, val split")
        outcome = self._tune(cell, self.settings, self.out, self._tune_stream or _Null())
        self.record.tuning[cell.key] = outcome.to_dict()
        self.save()
        steps = max(self.settings.trials + 1 - before, 0)
        self.progress.step(f"{cell.key} tuned: {describe_outcome(outcome)}", steps=steps)
        return outcome

    def _tuned_run(self, cell: Cell, key: RunKey, outcome: TuningOutcome) -> None:
        if outcome.loss is None:
            error = f"not run: {outcome.error}"
            self._store(RunResult(key, "failed", 0.0, error=error))
            return
        plain = self.record.runs.get(RunKey(cell.key, PLAIN, key.seed))
        if outcome.kept_plain and plain is not None and plain.ok:
            reused = RunResult(key, "ok", 0.0, dict(plain.figures), PLAIN_LOSS, note=REUSED_PLAIN)
            self._store(reused)
            return
        self._execute(cell, key, method_config(TUNED, outcome.loss))

    def _execute(self, cell: Cell, key: RunKey, config: Config) -> None:
        command = script_command(cell, [key.seed], "test", self.settings, self.out)
        self._store(self._run(key, command, config, key.directory(self.out)))

    def _store(self, result: RunResult) -> None:
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
