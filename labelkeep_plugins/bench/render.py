"""The bench's table as plain text (terminal) and as Markdown (``results.md``, the README).

Both from the one table renderer (:mod:`labelkeep_plugins.experiments.tables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from labelkeep_plugins.bench.aggregate import ACCURACY_TOLERANCE, MethodSummary, Spread
from labelkeep_plugins.bench.cells import CELLS
from labelkeep_plugins.bench.plan import LIMIT, METHOD_LABELS, PLAIN, TUNED
from labelkeep_plugins.experiments import tables
from labelkeep_plugins.experiments.tables import Column

HEADERS = (
    "cell",
    "model, compression",
    "budget",
    "method",
    "seeds",
    "accuracy %",
    "vs guard",
    "vs plain [95% CI]",
    "mismatches",
    "neg. flips",
    "mism. red. [95% CI]",
    "flip red. [95% CI]",
    "gap closed",
)
#: Figures read best aligned on the right; names and labels on the left.
COLUMNS = tuple(
    Column(header, "left" if index < 5 else "right") for index, header in enumerate(HEADERS)
)
TARGETS = (
    "targets (issue 5): tuned median mismatch reduction >= 2x, best cell >= 4.1x; "
    "negative flips best cell >= 5.7x; accuracy not below plain in any cell"
)
LEGEND = (
    f"'*': mean accuracy more than {ACCURACY_TOLERANCE} points below the guard, "
    "min(plain's, the reference's); vs plain: mean accuracy difference in points, '!' where "
    "its paired bootstrap 95% interval over seeds lies below 0 (beyond the noise); "
    "reductions: mean plain count / mean row count on the paired seeds, [paired bootstrap "
    "95% interval over seeds]; gap closed: "
    "(plain - row) / (plain - limit) mismatches"
)


def table_rows(rows: Sequence[MethodSummary]) -> list[tuple[str, ...]]:
    """One tuple of cell texts per row; '*' marks a mean accuracy below the guard."""
    shapes = {cell.key: f"{cell.shape}, {cell.compression}" for cell in CELLS}
    lines: list[tuple[str, ...]] = []
    for row in rows:
        versus, compared = row.versus, row.method != PLAIN
        seeds = f"{len(row.seeds)}" + (f" ({row.failed} failed)" if row.failed else "")
        lines.append(
            (
                row.cell,
                shapes.get(row.cell, ""),
                f"x{row.budget}",
                METHOD_LABELS.get(row.method, row.method),
                seeds,
                spread(row.accuracy, 1) + ("*" if row.below_guard else ""),
                signed(versus.accuracy_vs_guard),
                difference(versus.accuracy_vs_plain, versus.accuracy_vs_plain_ci, compared)
                + ("!" if row.below_plain_beyond_noise else ""),
                spread(row.mismatches, 1),
                spread(row.negative_flips, 1),
                interval(versus.mismatch_reduction, versus.mismatch_reduction_ci, compared),
                interval(versus.flip_reduction, versus.flip_reduction_ci, compared),
                percent(versus.gap_closed) if row.method not in (PLAIN, LIMIT) else "-",
            )
        )
    return lines


def text_table(rows: Sequence[MethodSummary]) -> str:
    """Aligned columns, a rule between cells."""
    body = table_rows(rows)
    between_cells = [i for i in range(len(body) - 1) if body[i][0] != body[i + 1][0]]
    return tables.text_table(COLUMNS, body, rule_after=between_cells)


def markdown_table(rows: Sequence[MethodSummary]) -> str:
    return tables.markdown_table(COLUMNS, table_rows(rows))


def headline_lines(headlines: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per method, budget and level across cells, then the issue's targets."""
    lines = []
    for h in headlines:
        if not h.get("cells"):
            continue
        level = "all levels" if h.get("level") in (None, "all") else f"{h['level']} compression"
        gap = h.get("median_gap_closed")
        lines.append(
            f"{METHOD_LABELS.get(h['method'], h['method'])}, x{h['budget']}, {level}, over "
            f"{h['cells']} cell(s): median mismatch reduction "
            f"{factor(h['median_mismatch_reduction'])}, median negative-flip reduction "
            f"{factor(h['median_flip_reduction'])}"
            + (f", median gap to the limit closed {percent(gap)}" if gap is not None else "")
            + f"; best {factor(h['best_mismatch_reduction'])} ({h['best_mismatch_cell']}); "
            f"not reduced (<= 1x): {', '.join(h['cells_not_reduced']) or 'none'}; below the "
            f"accuracy guard: {', '.join(h['cells_below_accuracy_guard']) or 'none'}; below "
            "plain's accuracy beyond the seeds' spread: "
            f"{', '.join(h.get('cells_below_plain_beyond_noise') or ()) or 'none'}"
        )
    tuned = any(h.get("method") == TUNED and h.get("cells") for h in headlines)
    return [*lines, TARGETS] if tuned else lines


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


def interval(value: float | None, bounds: tuple[float, float] | None, shown: bool) -> str:
    """``1.52x [1.20, 1.91]``; no interval with one seed; '-' for plain itself."""
    if not shown:
        return "-"
    if bounds is None or value is None:
        return factor(value)
    low, high = (("inf" if math.isinf(b) else f"{b:.2f}") for b in bounds)
    return f"{factor(value)} [{low}, {high}]"


def difference(value: float | None, bounds: tuple[float, float] | None, shown: bool) -> str:
    """``-0.4 [-0.7, -0.1]`` accuracy points; no interval with one seed; '-' for plain."""
    if not shown:
        return "-"
    if bounds is None or value is None:
        return signed(value)
    return f"{signed(value)} [{bounds[0]:+.1f}, {bounds[1]:+.1f}]"


def signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


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
    notes = [f"- {r.cell} x{r.budget} {r.method}: {n}" for r in rows for n in r.notes]
    if notes:
        parts += ["", "Notes:", *notes]
    return "\n".join(parts) + "\n"
