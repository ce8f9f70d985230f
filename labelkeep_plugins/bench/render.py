"""The bench's table as plain text (terminal) and as Markdown (``results.md``, the README).

Plain text on purpose: it reads the same on a terminal, in a CI log and through ``tee``,
and needs no dependency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from labelkeep_plugins.bench.aggregate import MethodSummary, Spread
from labelkeep_plugins.bench.cells import CELLS
from labelkeep_plugins.bench.plan import METHOD_LABELS, PLAIN

HEADERS = (
    "cell",
    "model, compression",
    "method",
    "seeds",
    "accuracy %",
    "mismatches",
    "neg. flips",
    "mism. red.",
    "flip red.",
)
TARGETS = (
    "targets (issue 5): tuned median mismatch reduction >= 2x, best cell >= 4.1x; "
    "negative flips best cell >= 5.7x; accuracy not below plain in any cell"
)


def table_rows(rows: Sequence[MethodSummary]) -> list[tuple[str, ...]]:
    """One tuple of cell texts per row; '*' marks a mean accuracy below plain's."""
    shapes = {cell.key: f"{cell.shape}, {cell.compression}" for cell in CELLS}
    lines = []
    for row in rows:
        below = row.accuracy_vs_plain is not None and row.accuracy_vs_plain < 0
        seeds = f"{len(row.seeds)}" + (f" ({row.failed} failed)" if row.failed else "")
        lines.append(
            (
                row.cell,
                shapes.get(row.cell, ""),
                METHOD_LABELS.get(row.method, row.method),
                seeds,
                spread(row.accuracy, 1) + ("*" if below else ""),
                spread(row.mismatches, 1),
                spread(row.negative_flips, 1),
                "-" if row.method == PLAIN else factor(row.mismatch_reduction),
                "-" if row.method == PLAIN else factor(row.flip_reduction),
            )
        )
    return lines


def text_table(rows: Sequence[MethodSummary]) -> str:
    """Aligned columns, a rule between cells."""
    body = table_rows(rows)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(HEADERS)]
    rule = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)), rule]
    previous = None
    for line in body:
        if previous is not None and line[0] != previous:
            out.append(rule)
        previous = line[0]
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(out)


def markdown_table(rows: Sequence[MethodSummary]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    return "\n".join(lines)


def headline_lines(headlines: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per method across cells, then the issue's targets."""
    lines = []
    for h in headlines:
        if not h.get("cells"):
            continue
        not_reduced = ", ".join(h["cells_not_reduced"]) or "none"
        below = ", ".join(h["cells_below_plain_accuracy"]) or "none"
        lines.append(
            f"{METHOD_LABELS.get(h['method'], h['method'])} over {h['cells']} cell(s): "
            f"median mismatch reduction {factor(h['median_mismatch_reduction'])}, best "
            f"{factor(h['best_mismatch_reduction'])} ({h['best_mismatch_cell']}); best "
            f"negative-flip reduction {factor(h['best_flip_reduction'])} ({h['best_flip_cell']}); "
            f"not reduced (<= 1x): {not_reduced}; mean accuracy below plain: {below}"
        )
    return [*lines, TARGETS] if lines else []


def spread(value: Spread, digits: int) -> str:
    if value.mean is None:
        return "n/a"
    if value.n < 2:
        return f"{value.mean:.{digits}f}"
    return f"{value.mean:.{digits}f} ± {value.sd:.{digits}f}"


def factor(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf (none left)"
    return f"{value:.2f}x"


def markdown_document(
    rows: Sequence[MethodSummary],
    headlines: Sequence[Mapping[str, Any]],
    context: Sequence[str],
    appendix: Sequence[str] = (),
) -> str:
    """``results.md``: how it was produced, the table, the headline, the notes, the appendix."""
    parts = ["# labelkeep bench", "", *context, "", markdown_table(rows), ""]
    parts += [f"- {line}" for line in headline_lines(headlines)]
    if appendix:
        parts += ["", *appendix]
    notes = [f"- {r.cell} {r.method}: {n}" for r in rows for n in r.notes]
    if notes:
        parts += ["", "Notes:", *notes]
    return "\n".join(parts) + "\n"
