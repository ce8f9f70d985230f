"""Run one bench run: the cell's script under the runner, read back as a :class:`RunResult`.

The child process gets exactly the environment ``labelkeep run`` gives a user's command
(``labelkeep tune``'s trial runner, reused), with its own ``labelkeep.yaml`` and
``report.json``; the figures come from the run report's ``agreement`` section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.plan import RunKey
from labelkeep_plugins.bench.store import RunResult
from labelkeep_plugins.config import Config
from labelkeep_plugins.errors import LabelkeepError
from labelkeep_plugins.experiments.objective import measurement_from_report
from labelkeep_plugins.experiments.trial import run_trial

RunFunction = Callable[[RunKey, Sequence[str], Config, Path], RunResult]


def execute_run(key: RunKey, command: Sequence[str], config: Config, directory: Path) -> RunResult:
    """Run ``command`` once under labelkeep; a failing command gives a failed result."""
    header = f"labelkeep bench: {key.label}"
    run = run_trial(command, directory, config, header=header)
    loss = config.to_dict()["loss"]
    if run.exit_code not in (0, None) or run.report is None:
        return RunResult(key, "failed", run.seconds, loss=loss, error=str(run.problem))
    try:
        figures = figures_from_report(run.report, source=str(directory / "report.json"))
    except LabelkeepError as exc:
        return RunResult(key, "failed", run.seconds, loss=loss, error=str(exc))
    return RunResult(key, "ok", run.seconds, figures=figures, loss=loss)


def figures_from_report(report: Any, *, source: str) -> dict[str, Any]:
    """The figures the bench keeps of one run report (raises when it has no agreement)."""
    measured = measurement_from_report(report, source=source)
    agreement: Mapping[str, Any] = report["agreement"]
    per_class = agreement.get("per_class_mismatch_rate")
    return {
        "samples": measured.samples,
        "mismatches": measured.mismatches,
        "negative_flips": measured.negative_flips,
        "accuracy": measured.accuracy,
        "reference_accuracy": agreement.get("reference_accuracy"),
        "per_class_mismatch_rate": _per_class(per_class),
        "training_steps_with_loss": report.get("training_steps_with_loss"),
        "reference_intact": report.get("reference_intact"),
        "failures": list(report.get("failures") or []),
    }


def _per_class(value: Any) -> dict[str, float] | None:
    """Per-class rates keyed by class index as a string (JSON object keys are strings)."""
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}
    if isinstance(value, list):
        return {str(i): float(v) for i, v in enumerate(value) if isinstance(v, int | float)}
    return None
