"""``labelkeep tune``: an offline search over the loss weights, one run of the command per trial.

Trial 0 runs the command with plain recovery (``loss: {weights: {ce: 1.0}}``): its
accuracy (or the ``--metric`` read from its output) sets the bound of the objective, and
its configuration stays a candidate, so the best configuration found is never worse than
plain recovery on what was measured.
Trials 1..N run the weights an NNI tuner proposes (see :mod:`.algorithms`).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError, LabelkeepError
from labelkeep_plugins.experiments.objective import Objective, measurement_from_report, rank
from labelkeep_plugins.experiments.tables import TextSink
from labelkeep_plugins.experiments.trial import (
    LOG_FILE,
    REPORT_FILE,
    TrialRun,
    run_trial,
    trial_config,
)
from labelkeep_plugins.tuning.algorithms import SearchAlgorithm, SpaceExhausted, make_algorithm
from labelkeep_plugins.tuning.metric import DEFAULT_MODE, Metric, MetricError
from labelkeep_plugins.tuning.space import describe_space, parameters_to_loss
from labelkeep_plugins.tuning.store import (
    SearchSettings,
    TrialRecord,
    load_results,
    save_results,
    trial_dir,
)
from labelkeep_plugins.tuning.summary import ALL_FAILED, finish
from labelkeep_plugins.tuning.table import TrialTable

PLAIN_LOSS = {"weights": {"ce": 1.0}}
DEFAULT_ALGORITHM = "tpe"
INTERRUPTED = 130


@dataclass(frozen=True)
class TuneRequest:
    """What the user asked for; ``None`` options take the stored value when resuming."""

    command: tuple[str, ...]
    trials: int
    out: Path
    search_space: dict[str, Any]
    base: Config
    algorithm: str | None = None
    seed: int | None = None
    tolerance: float | None = None
    metric: str | None = None  # --metric REGEX: constrain this instead of the report's accuracy
    metric_mode: str | None = None  # --metric-mode: max (default) | min


class PlainTrialFailed(LabelkeepError):
    """Trial 0 adds nothing to the command: whatever made it fail fails every other trial too."""

    def __init__(self, record: TrialRecord) -> None:
        if record.exit_code not in (0, None):
            why = "the command itself fails without labelkeep"
        else:
            why = "it ran, but could not be judged"
        super().__init__(
            f"the plain trial 0 failed, and it adds nothing to training: {why}, so no other "
            f"trial was run; fix that first. Trial 0: {record.error or 'no reason given'}"
        )


def tune(request: TuneRequest, stream: TextSink | None = None) -> int:
    """Run (or resume) the search; returns the exit code of ``labelkeep tune``."""
    if request.trials < 1:
        raise ConfigError(
            f"--trials must be at least 1 (weight settings to try after the plain trial), "
            f"got {request.trials}"
        )
    _check_metric(request)
    settings, records = resolve_settings(request)
    search = _Search(request, settings, records, stream or sys.stderr)
    try:
        search.run()
    except PlainTrialFailed as exc:
        search.table.note(f"labelkeep tune: {exc}")
        return ALL_FAILED
    except KeyboardInterrupt:
        search.table.note(
            f"labelkeep tune: interrupted; {len(search.records)} trial(s) are kept in "
            f"{request.out}. Run the same command again to resume"
        )
        return INTERRUPTED
    return finish(
        request.out, settings, search.records, search.objective, search.label, search.table
    )


def resolve_settings(request: TuneRequest) -> tuple[SearchSettings, dict[int, TrialRecord]]:
    """Fresh settings, or the stored ones when ``--out`` holds the same search."""
    loaded = load_results(request.out)
    if loaded is None:
        return _fresh_settings(request), {}
    stored, records = loaded
    wanted = {
        "command": (tuple(request.command), "the same command"),
        "search_space": (request.search_space, "the same --search-space/--terms"),
        "base_config": (request.base.to_dict(), "the same --config"),
        "algorithm": (request.algorithm, "the same --algorithm"),
        "seed": (request.seed, "the same --seed"),
        "tolerance": (request.tolerance, "the same --tolerance"),
        "metric": (request.metric, "the same --metric"),
        "metric_mode": (request.metric_mode, "the same --metric-mode"),
    }
    for key, (value, fix) in wanted.items():
        if value is not None and value != getattr(stored, key):
            raise ConfigError(
                f"{request.out / 'results.json'} holds a search with another {key} "
                f"({getattr(stored, key)!r}, now {value!r}); to resume it, rerun with {fix}; "
                f"to start a fresh search, pass another --out or delete {str(request.out)!r}"
            )
    return stored, records


def _fresh_settings(request: TuneRequest) -> SearchSettings:
    seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
    return SearchSettings(
        command=tuple(request.command),
        algorithm=request.algorithm or DEFAULT_ALGORITHM,
        seed=seed,
        tolerance=0.0 if request.tolerance is None else float(request.tolerance),
        search_space=request.search_space,
        base_config=request.base.to_dict(),
        metric=request.metric,
        metric_mode=request.metric_mode or DEFAULT_MODE,
    )


def _check_metric(request: TuneRequest) -> None:
    """Refuse a bad --metric before any trial runs (and before a resume compares it)."""
    if request.metric is None and request.metric_mode is not None:
        raise ConfigError(
            "--metric-mode needs --metric REGEX (the metric to read from each trial's output); "
            "without --metric the constraint is the run report's accuracy"
        )
    if request.metric is not None:
        Metric(request.metric, request.metric_mode or DEFAULT_MODE)


class _Search:
    """One run of ``labelkeep tune``: the plain trial, the replay, then new trials."""

    def __init__(
        self,
        request: TuneRequest,
        settings: SearchSettings,
        records: dict[int, TrialRecord],
        stream: TextSink,
    ) -> None:
        self.request, self.settings, self.records = request, settings, records
        self.table = TrialTable(stream, total=request.trials + 1)
        self.metric = settings.user_metric
        self.objective = self._objective(None)
        self.algorithm: SearchAlgorithm = make_algorithm(
            settings.algorithm,
            settings.search_space,
            seed=settings.seed,
            trials=request.trials,
            warn=self.table.note,
        )
        self.label = self.algorithm.label

    def run(self) -> None:
        resumed = sorted(self.records)
        self._introduce()
        if 0 not in self.records:
            self._finished(self._run(0, LossConfig.from_value(PLAIN_LOSS), None))
        if self.records[0].status == "failed":
            raise PlainTrialFailed(self.records[0])
        self._set_objective()
        for number in resumed:
            self._show(self.records[number], done=number + 1)
        self._replay()
        for trial in range(len(self.records), self.request.trials + 1):
            try:
                parameters = self.algorithm.propose(trial)
            except SpaceExhausted as exc:
                self.table.note(
                    f"labelkeep tune: {self.label} has no untried setting left after "
                    f"{trial - 1} trial(s) ({exc}); stopping the search there"
                )
                break
            record = self._run_proposed(trial, parameters)
            self.algorithm.tell(trial, self._value(record))
            self._finished(record)

    def _introduce(self) -> None:
        resumed = len(self.records)
        self.table.note(
            f"labelkeep tune: {self.request.trials} trial(s) with {self.label}, after the "
            f"plain trial 0; seed {self.settings.seed}; output in {self.request.out}"
            + (f" (resuming: {resumed} finished trial(s) read back)" if resumed else "")
        )
        self.table.note(
            f"labelkeep tune: {describe_space(self.settings.search_space, self.request.base.loss)}"
        )

    def _objective(self, baseline: float | None) -> Objective:
        mode = None if self.metric is None else self.metric.mode
        return Objective(baseline, self.settings.tolerance, mode)

    def _set_objective(self) -> None:
        """The bound comes from the plain trial (none if it failed or had no labels)."""
        plain = self.records[0].measurement
        self.objective = self._objective(None if plain is None else self.objective.figure(plain))

    def _replay(self) -> None:
        """Feed the finished trials to the tuner in order, as if it had just proposed them."""
        warned = False
        for trial in sorted(n for n in self.records if n > 0):
            record = self.records[trial]
            proposed = self.algorithm.propose(trial)
            if not warned and not _same_parameters(proposed, record.parameters):
                warned = True
                self.table.note(
                    "labelkeep tune: the tuner proposes other settings on replay than it did "
                    "first (another NNI version or plugins?); finished trials are kept as "
                    "they are, but the next proposals may differ from an uninterrupted search"
                )
            self.algorithm.tell(trial, self._value(record))

    def _run_proposed(self, trial: int, parameters: dict[str, Any]) -> TrialRecord:
        try:
            loss = parameters_to_loss(parameters, self.request.base.loss)
        except ConfigError as exc:
            return TrialRecord(trial, "failed", parameters, {}, None, 0.0, f"not run: {exc}")
        return self._run(trial, loss, parameters)

    def _run(self, trial: int, loss: LossConfig, parameters: dict[str, Any] | None) -> TrialRecord:
        directory = trial_dir(self.request.out, trial)
        config = trial_config(self.request.base, loss)
        what = "plain recovery" if parameters is None else f"parameters {parameters}"
        header = f"labelkeep tune, trial {trial}: {what}"
        run = run_trial(self.settings.command, directory, config, header=header)
        return _record(trial, parameters, config, run, directory, self.metric)

    def _finished(self, record: TrialRecord) -> None:
        self.records[record.trial] = record
        save_results(self.request.out, self.settings, self.records, {"complete": False})
        if record.trial == 0:
            self._set_objective()
        self._show(record, done=len(self.records))

    def _show(self, record: TrialRecord, done: int) -> None:
        so_far = {
            n: r.measurement
            for n, r in self.records.items()
            if n <= record.trial and r.measurement is not None
        }
        ranking = rank(so_far, self.objective)
        self.table.row(record, self.objective, ranking[0].trial if ranking else None, done)

    def _value(self, record: TrialRecord) -> float | None:
        if not record.ok or record.measurement is None:
            return None
        return self.objective.value(record.measurement)


def _record(
    trial: int,
    parameters: dict[str, Any] | None,
    config: Config,
    run: TrialRun,
    directory: Path,
    metric: Metric | None = None,
) -> TrialRecord:
    """Judge one run: failed (not started, exit code, no report, no metric) or ok with figures."""
    loss = config.to_dict()["loss"]
    problem = _failure(run, directory)
    if problem is not None:
        return TrialRecord(trial, "failed", parameters, loss, run.exit_code, run.seconds, problem)
    source = f"trial {trial}: run report {str(directory / REPORT_FILE)!r}"
    measured = measurement_from_report(run.report, source=source)  # no agreement: stop
    if metric is not None:
        try:
            measured = replace(measured, metric=metric.read_log(directory / LOG_FILE))
        except MetricError as exc:
            return TrialRecord(trial, "failed", parameters, loss, 0, run.seconds, str(exc))
    return TrialRecord(trial, "ok", parameters, loss, 0, run.seconds, None, measured)


def _failure(run: TrialRun, directory: Path) -> str | None:
    """Why the trial failed: :func:`run_trial` words it (exit code, last lines of stderr)."""
    return run.problem


def _same_parameters(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> bool:
    if b is None or set(a) != set(b):
        return False
    return all(
        math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12)
        if isinstance(a[k], int | float) and isinstance(b[k], int | float)
        else a[k] == b[k]
        for k in a
    )
