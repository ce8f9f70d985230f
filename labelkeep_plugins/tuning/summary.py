"""The end of ``labelkeep tune``: ranking, ``results.json``, ``best.yaml`` and the summary lines."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.experiments.objective import Measurement, Objective, Ranked, rank
from labelkeep_plugins.experiments.trial import LOG_FILE, trial_config, write_config
from labelkeep_plugins.tuning.store import (
    BEST_FILE,
    SearchSettings,
    TrialRecord,
    save_results,
    trial_dir,
)
from labelkeep_plugins.tuning.table import TrialTable, describe, format_figure, format_parameters

ALL_FAILED = 1
_RANKING = "fewest mismatches per evaluated sample, then fewest negative flips, among trials "
OBJECTIVE_RULE = _RANKING + "whose accuracy is >= the plain trial's minus the tolerance"
_RULES = {
    None: OBJECTIVE_RULE,
    "max": _RANKING + "whose --metric value is >= the plain trial's minus the tolerance",
    "min": _RANKING + "whose --metric value is <= the plain trial's plus the tolerance",
}


def finish(
    out: Path,
    settings: SearchSettings,
    records: dict[int, TrialRecord],
    objective: Objective,
    label: str,
    table: TrialTable,
) -> int:
    """Rank, write the results and the best configuration, print the summary; the exit code."""
    measured = {n: r.measurement for n, r in records.items() if r.measurement is not None}
    ranking = rank(measured, objective)
    searched_ok = any(n > 0 for n in measured)
    best = ranking[0] if ranking and searched_ok else None
    summary = _summary(records, label, _objective_entry(settings, objective), ranking, best)
    save_results(out, settings, records, summary)
    best_path = out / BEST_FILE
    if best is None:
        best_path.unlink(missing_ok=True)
        _report_failure(out, records, table)
        return ALL_FAILED
    config = trial_config(
        Config.from_dict(settings.base_config), LossConfig.from_value(records[best.trial].loss)
    )
    write_config(best_path, config, _best_header(settings, records, best, label, best_path))
    _report_best(out, settings, records, objective, best, table)
    return 0


def _summary(
    records: dict[int, TrialRecord],
    label: str,
    objective: dict[str, Any],
    ranking: list[Ranked],
    best: Ranked | None,
) -> dict[str, Any]:
    return {
        "complete": True,
        "algorithm": label,
        "objective": objective,
        "ranking": [
            {"trial": r.trial, "feasible": r.feasible, "value": r.value, **r.measurement.to_dict()}
            for r in ranking
        ],
        "failed": sorted(n for n, r in records.items() if not r.ok),
        "best": None if best is None else _best_entry(records, best),
    }


def _objective_entry(settings: SearchSettings, objective: Objective) -> dict[str, Any]:
    """With --metric, the "accuracy" keys hold the metric (a ceiling for metric_mode min)."""
    return {
        "rule": _RULES[objective.metric],
        "plain_accuracy": objective.baseline_accuracy,
        "tolerance": objective.tolerance,
        "accuracy_floor": objective.accuracy_floor,
        "metric": settings.metric,
        "metric_mode": objective.metric,
    }


def _best_entry(records: dict[int, TrialRecord], best: Ranked) -> dict[str, Any]:
    record = records[best.trial]
    return {
        "trial": best.trial,
        "config": BEST_FILE,
        "parameters": record.parameters,
        "loss": record.loss,
        "agreement": best.measurement.to_dict(),
        "mismatch_reduction_vs_plain": _reduction(records, best.measurement),
    }


def _reduction(records: dict[int, TrialRecord], best: Measurement) -> float | None:
    """Plain trial's mismatch rate over the best one's (None when either is unknown or 0)."""
    plain = records[0].measurement if 0 in records else None
    if plain is None or best.mismatches == 0:
        return None
    return plain.mismatch_rate / best.mismatch_rate


def _best_header(
    settings: SearchSettings, records: dict[int, TrialRecord], best: Ranked, label: str, path: Path
) -> str:
    lines = [
        f"labelkeep tune: best of {len(records)} trial(s) with {label}: trial {best.trial}",
        f"{format_parameters(records[best.trial].parameters)}: {describe(best.measurement)}",
        f"use: labelkeep run --config {path} -- {shlex.join(settings.command)}",
    ]
    return "\n".join(lines)


def _report_best(
    out: Path,
    settings: SearchSettings,
    records: dict[int, TrialRecord],
    objective: Objective,
    best: Ranked,
    table: TrialTable,
) -> None:
    table.note(_counts(records, objective))
    plain = records[0].measurement if 0 in records else None
    if best.trial == 0:
        table.note(
            "best: the plain trial 0; no searched setting had fewer mismatches within "
            f"the {'accuracy floor' if objective.metric is None else 'metric bound'}, so "
            "best.yaml keeps plain recovery"
        )
    else:
        table.note(
            f"best: trial {best.trial} ({format_parameters(records[best.trial].parameters)})"
            f": {describe(best.measurement)}"
        )
    if plain is not None and best.trial != 0:
        reduction = _reduction(records, best.measurement)
        factor = f"; {reduction:.2f}x fewer mismatches" if reduction else ""
        table.note(f"plain (trial 0): {describe(plain)}{factor}")
    best_path = out / BEST_FILE
    table.note(
        f"wrote {best_path} and {out / 'results.json'}; use: labelkeep run --config "
        f"{best_path} -- {shlex.join(settings.command)}"
    )


def _counts(records: dict[int, TrialRecord], objective: Objective) -> str:
    failed = sum(not r.ok for r in records.values())
    below = sum(
        r.measurement is not None and not objective.feasible(r.measurement)
        for r in records.values()
    )
    floor = objective.accuracy_floor
    where = " (unknown: the plain trial gave none)"
    if floor is not None:
        where = f" ({format_figure(floor, objective)})"
    bound = {None: "below the accuracy floor", "max": "below the metric's floor"}.get(
        objective.metric, "above the metric's ceiling"
    )
    return (
        f"labelkeep tune: {len(records)} trial(s): {len(records) - failed} ok, {failed} failed, "
        f"{below} {bound}{where}"
    )


def _report_failure(out: Path, records: dict[int, TrialRecord], table: TrialTable) -> None:
    failed = [r for n, r in sorted(records.items()) if not r.ok]
    searched = [r for r in failed if r.trial > 0]
    first = (searched or failed)[0]
    plain = "; the plain trial 0 failed too" if 0 in records and not records[0].ok else ""
    table.note(
        f"labelkeep tune: all {len(searched)} searched trial(s) failed{plain}; no best.yaml "
        f"was written. First failure (trial {first.trial}): {first.error}\n"
        f"Each trial's output is in {trial_dir(out, first.trial).parent}/NNN/{LOG_FILE}; "
        f"results: {out / 'results.json'}"
    )
