"""The live table ``labelkeep tune`` prints on stderr: one line per finished trial.

One line at a time (:class:`~labelkeep_plugins.experiments.tables.LiveTable`), so it reads
the same on a terminal, in a CI log or through ``tee``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labelkeep_plugins.experiments.objective import Measurement, Objective
from labelkeep_plugins.experiments.tables import Column, LiveTable, TextSink
from labelkeep_plugins.tuning.store import TrialRecord


def _columns(total: int, constrained: str) -> list[Column]:
    return [
        Column("progress", "right", width=max(9, 2 * len(str(total)) + 3)),
        Column("trial", "right", width=5),
        Column("status", width=6),
        Column("mismatches", "right", width=18),
        Column("neg.flips", "right", width=9),
        Column(constrained, "right", width=8),
        Column("best", "right", width=5),
        Column("settings"),
    ]


class TrialTable:
    """Prints the header once, then a row as each trial ends."""

    def __init__(self, stream: TextSink, total: int) -> None:
        self._stream = stream
        self._total = total
        self._table: LiveTable | None = None

    def note(self, text: str) -> None:
        self._stream.write(f"{text}\n")
        self._stream.flush()

    def row(self, record: TrialRecord, objective: Objective, best: int | None, done: int) -> None:
        if self._table is None:
            constrained = "accuracy" if objective.metric is None else "metric"
            self._table = LiveTable(_columns(self._total, constrained), self._stream)
        figures = _figures(record.measurement, objective) if record.ok else ("", "", "")
        settings = _settings(record) if record.ok else (record.error or "").splitlines()[0]
        self._table.row(
            [
                f"[{done:>{len(str(self._total))}}/{self._total}]",
                str(record.trial),
                _status(record, objective),
                *figures[:2],
                figures[2],
                "-" if best is None else f"#{best}",
                settings,
            ]
        )


def describe(measured: Measurement) -> str:
    """One phrase for a trial's figures, as the summary and the table use them."""
    parts = [f"{measured.mismatches}/{measured.samples} mismatches"]
    if measured.negative_flips is not None:
        parts.append(f"{measured.negative_flips} negative flips")
    if measured.accuracy is not None:
        parts.append(f"accuracy {measured.accuracy:.2%}")
    if measured.metric is not None:
        parts.append(f"metric {measured.metric:.4g}")
    return ", ".join(parts)


def format_figure(value: float | None, objective: Objective) -> str:
    """The constrained figure: a percentage, or a "min" metric (a loss) as printed."""
    if value is None:
        return "-"
    return f"{value:.4g}" if objective.metric == "min" else f"{value:.2%}"


def format_parameters(parameters: Mapping[str, Any] | None) -> str:
    if not parameters:
        return "plain: weights {ce: 1.0}"
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in parameters.items()
    )


def _figures(measured: Measurement | None, objective: Objective) -> tuple[str, str, str]:
    if measured is None:
        return ("", "", "")
    flips = "-" if measured.negative_flips is None else str(measured.negative_flips)
    constrained = format_figure(objective.figure(measured), objective)
    mismatches = f"{measured.mismatches}/{measured.samples} ({measured.mismatch_rate:.2%})"
    return mismatches, flips, constrained


def _status(record: TrialRecord, objective: Objective) -> str:
    if not record.ok:
        return "failed"
    if record.measurement is not None and not objective.feasible(record.measurement):
        return "above" if objective.metric == "min" else "below"  # on the wrong side
    return "plain" if record.trial == 0 else "ok"


def _settings(record: TrialRecord) -> str:
    return format_parameters(record.parameters)
