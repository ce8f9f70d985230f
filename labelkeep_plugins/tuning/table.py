"""The live table ``labelkeep tune`` prints on stderr: one line per finished trial.

Plain text, one line at a time, so it reads the same on a terminal, in a CI log or
through ``tee``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from labelkeep_plugins.experiments.objective import Measurement, Objective
from labelkeep_plugins.tuning.store import TrialRecord


class TextSink(Protocol):
    """Where the table's lines go: a text stream such as ``sys.stderr``, or anything that
    writes and flushes like one (the bench's ``PrefixedStream``, which prefixes each line)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def _columns(constrained: str) -> str:
    return (
        f"{'progress':>9}  {'trial':>5}  {'status':<6}  {'mismatches':>18}  {'neg.flips':>9}  "
        f"{constrained:>8}  {'best':>5}  settings"
    )


class LiveTable:
    """Prints the header once, then a row as each trial ends."""

    def __init__(self, stream: TextSink, total: int) -> None:
        self._stream = stream
        self._total = total
        self._started = False

    def note(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def row(self, record: TrialRecord, objective: Objective, best: int | None, done: int) -> None:
        if not self._started:
            self.note(_columns("accuracy" if objective.metric is None else "metric"))
            self._started = True
        progress = f"[{done:>{len(str(self._total))}}/{self._total}]"
        figures = _figures(record.measurement, objective) if record.ok else ("", "", "")
        status = _status(record, objective)
        best_text = "-" if best is None else f"#{best}"
        settings = _settings(record) if record.ok else (record.error or "").splitlines()[0]
        self.note(
            f"{progress:>9}  {record.trial:>5}  {status:<6}  {figures[0]:>18}  "
            f"{figures[1]:>9}  {figures[2]:>8}  {best_text:>5}  {settings}"
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
