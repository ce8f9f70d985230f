"""Turning the record into the bench's outputs: results.json, results.md, terminal table, plot."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.aggregate import MethodSummary, summarize
from labelkeep_plugins.bench.headline import headlines as headline_groups
from labelkeep_plugins.bench.plan import LIMIT, LIMIT_BUDGET, TUNED
from labelkeep_plugins.bench.render import LEGEND, headline_lines, markdown_document, text_table
from labelkeep_plugins.bench.stats import BOOTSTRAP_SEED, CONFIDENCE, RESAMPLES
from labelkeep_plugins.bench.store import BenchRecord

MARKDOWN_FILE = "results.md"


class Outputs:
    """Writes the files after every run; prints the table and draws the plot at the end."""

    def __init__(self, record: BenchRecord, out: Path, argv: Sequence[str]) -> None:
        self.record, self.out = record, out
        self.command = "labelkeep bench " + shlex.join(argv)

    def rows(self) -> list[MethodSummary]:
        settings = self.record.settings
        return summarize(self.record.runs, settings.cells, settings.methods, settings.budgets)

    def headlines(self, rows: Sequence[MethodSummary]) -> list[dict[str, Any]]:
        return headline_groups(rows, self.record.settings.methods)

    def save(self) -> None:
        rows = self.rows()
        headlines = self.headlines(rows)
        summary = {
            "command": self.command,
            "rows": [row.to_dict() for row in rows],
            "headline": headlines,
            "bootstrap": {
                "resamples": RESAMPLES,
                "confidence": CONFIDENCE,
                "seed": BOOTSTRAP_SEED,
                "paired": True,
            },
        }
        self.record.save(self.out, summary)
        document = markdown_document(rows, headlines, self.context(), self.tuned_settings())
        (self.out / MARKDOWN_FILE).write_text(document, encoding="utf-8")

    def context(self) -> list[str]:
        s = self.record.settings
        lines = [
            f"Command: `{self.command}` ({s.profile} profile)",
            "",
            f"Evaluation seeds {', '.join(map(str, s.seeds))} on each script's test split; "
            f"{s.pretrain_epochs} pretraining epochs, then recovery budgets "
            + ", ".join(f"x{b} ({b * s.epochs} epochs)" for b in s.budgets)
            + ".",
        ]
        if LIMIT in s.methods:
            lines.append(
                f"Limit: pure distillation (KD at temperature 4, no ground truth) for "
                f"{LIMIT_BUDGET * s.epochs} epochs, what recovery reaches in the cell at all."
            )
        if TUNED in s.methods:
            lines.append(
                f"Tuned: {s.trials} trial(s) of `labelkeep tune` per cell at x1 on seed"
                f"{'s' if len(s.validation_seeds) > 1 else ''} "
                f"{', '.join(map(str, s.validation_seeds))} (summed) and the validation split "
                "(never the test split); every budget runs the setting found."
            )
        lines.append(f"{LEGEND}.")
        lines += [f"Skipped {cell}: {why}" for cell, why in self.record.skipped.items()]
        return lines + list(self.record.notes)

    def tuned_settings(self) -> list[str]:
        """What the search chose per cell (on the validation seeds), for the record."""
        if not self.record.tuning:
            return []
        lines = ["Tuned settings (chosen on the validation seeds):"]
        for cell, outcome in self.record.tuning.items():
            if outcome.get("loss") is None:
                chosen = f"none ({outcome.get('error')})"
            elif outcome.get("kept_plain"):
                chosen = "plain recovery (no searched setting beat it)"
            else:
                parameters = outcome.get("parameters") or {}
                chosen = f"trial {outcome.get('best_trial')}: " + ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in parameters.items()
                )
            lines.append(f"- {cell}: {chosen}")
        return lines

    def print_table(self, stream: Any = None) -> None:
        stream = stream or sys.stdout
        rows = self.rows()
        print(text_table(rows) if rows else "no finished runs", file=stream)
        for line in headline_lines(self.headlines(rows)):
            print(line, file=stream)
        for row in rows:
            for note in row.notes:
                print(f"note: {row.cell} x{row.budget} {row.method}: {note}", file=stream)
        for cell, why in self.record.skipped.items():
            print(f"skipped: {cell}: {why}", file=stream)
        for note in self.record.notes:
            print(f"note: {note}", file=stream)

    def plot(self) -> str:
        from labelkeep_plugins.bench.plot import write_plot

        _, line = write_plot(self.rows(), self.out)
        return line
