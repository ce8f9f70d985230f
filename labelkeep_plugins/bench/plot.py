"""``mismatches.png``: per budget, mismatches per cell and row, and reductions against plain.

Two panels per budget, stacked so that 12 cells stay readable: the mismatch rate (a rate,
not a count, so that cells with test sets of different sizes share an axis; error bars:
sd over seeds) and the reduction factor against plain (error bars: the paired bootstrap
95% interval). Error bars only on bars with more than one seed, and each title says over
how many seeds. The limit row (10x epochs) is drawn with the x1 rows, the budget it is
the limit of.

matplotlib is optional (``pip install 'labelkeep[bench]'``): without it the plot is
skipped with one line and everything else is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelkeep_plugins.bench.aggregate import MethodSummary
from labelkeep_plugins.bench.plan import KNOWN_METHODS, LIMIT, METHOD_LABELS, PLAIN

PLOT_FILE = "mismatches.png"
MISSING = (
    "plot skipped: matplotlib is not installed (pip install 'labelkeep[bench]' or "
    "pip install matplotlib); the table, results.json and results.md are written"
)

# One bar: cell, row, height and its error (an sd, a (below, above) pair, or None: no bar).
Bar = tuple[str, str, float, float | tuple[float, float] | None]


def write_plot(rows: Sequence[MethodSummary], out: Path) -> tuple[Path | None, str]:
    """Draw the figure; returns its path (None if skipped) and a line saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        return None, MISSING
    cells = list(dict.fromkeys(r.cell for r in rows))
    if not cells:
        return None, "plot skipped: no finished runs"
    budgets = sorted({panel_budget(r) for r in rows})
    width = max(8.0, 0.9 * len(cells) + 3)
    figure, axes = plt.subplots(
        2 * len(budgets), 1, figsize=(width, 4.2 * 2 * len(budgets)), layout="constrained"
    )
    for index, budget in enumerate(budgets):
        chosen = [r for r in rows if panel_budget(r) == budget]
        _mismatch_bars(axes[2 * index], chosen, cells, budget)
        _reduction_bars(axes[2 * index + 1], chosen, cells, budget)
    path = out / PLOT_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path, f"wrote {path}"


def panel_budget(row: MethodSummary) -> int:
    return 1 if row.method == LIMIT else row.budget


def _mismatch_bars(axis: Any, rows: Sequence[MethodSummary], cells: list[str], budget: int) -> None:
    """Grouped bars: mean mismatch rate per cell and row (sd over seeds when n > 1)."""
    drawn = [r for r in rows if r.mismatch_rate.mean is not None]
    bars: list[Bar] = [
        (r.cell, r.method, mean, _sd(r))
        for r in drawn
        if (mean := r.mismatch_rate.mean) is not None
    ]
    _grouped(axis, bars, cells)
    axis.set_ylabel("mismatches, % of test samples")
    spread = seed_phrase([r.mismatch_rate.n for r in drawn], "mean ± sd")
    axis.set_title(f"Mismatches with the reference, recovery budget x{budget}\n{spread}")
    _legend(axis)


def _reduction_bars(
    axis: Any, rows: Sequence[MethodSummary], cells: list[str], budget: int
) -> None:
    """Grouped bars: plain's mismatches over the row's (bootstrap 95% interval when n > 1)."""
    bars: list[Bar] = []
    pairs: list[int] = []
    for r in rows:
        value, bounds = r.versus.mismatch_reduction, r.versus.mismatch_reduction_ci
        if r.method == PLAIN or value is None or math.isinf(value):
            continue
        error = None
        if bounds is not None and not any(math.isinf(b) for b in bounds):
            error = (max(value - bounds[0], 0.0), max(bounds[1] - value, 0.0))
        bars.append((r.cell, r.method, value, error))
        pairs.append(_paired_seeds(r, rows))
    _grouped(axis, bars, cells)
    axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="plain (1x)")
    axis.set_ylabel("mismatch reduction vs plain (x)")
    spread = seed_phrase(pairs, "bootstrap 95% CI", paired=True)
    axis.set_title(f"Mismatch reduction against plain recovery, budget x{budget}\n{spread}")
    _legend(axis)


def seed_phrase(counts: Sequence[int], interval: str, *, paired: bool = False) -> str:
    """A title's second line: what the error bars are, over how many seeds (never over one)."""
    seeds = "paired seeds" if paired else "seeds"
    several = sorted({n for n in counts if n > 1})
    if not several:
        return f"{'one paired seed' if paired else 'one seed'}: no error bars"
    span = str(several[0]) if len(several) == 1 else f"{several[0]}-{several[-1]}"
    text = f"{interval} over {span} {seeds}"
    if any(n <= 1 for n in counts):
        text += "; a bar with no error bar has one seed"
    return text


def _paired_seeds(row: MethodSummary, rows: Sequence[MethodSummary]) -> int:
    """Seeds the row shares with its cell's plain row: what its bootstrap resamples."""
    plain = next((r for r in rows if r.cell == row.cell and r.method == PLAIN), None)
    return len(row.seeds) if plain is None else len(set(row.seeds) & set(plain.seeds))


def _grouped(axis: Any, bars: list[Bar], cells: list[str]) -> None:
    """Bars grouped by cell, one colour per row; ``error``: sd or (below, above) or None.

    Error bars are drawn only where there is one (more than one seed): a zero-height cap
    on a single-seed bar would read as an interval of zero width.
    """
    methods = list(dict.fromkeys(method for _, method, _, _ in bars))
    width = 0.8 / max(len(methods), 1)
    for m_index, method in enumerate(methods):
        mine = [b for b in bars if b[1] == method]
        xs = [cells.index(c) + (m_index - (len(methods) - 1) / 2) * width for c, *_ in mine]
        label = METHOD_LABELS.get(method, method)
        colour = _colour(method)  # the same row has the same colour in every panel
        axis.bar(xs, [b[2] for b in mine], width, label=label, color=colour)
        errors = [(x, b[2], b[3]) for x, b in zip(xs, mine, strict=True) if b[3] is not None]
        if errors:
            pairs = [e if isinstance(e, tuple) else (e, e) for _, _, e in errors]
            axis.errorbar(
                [x for x, _, _ in errors],
                [y for _, y, _ in errors],
                yerr=[[p[0] for p in pairs], [p[1] for p in pairs]],
                fmt="none",
                ecolor="black",
                capsize=2,
            )
    axis.set_xticks(range(len(cells)), [c.replace("/", "\n") for c in cells], fontsize=7)
    axis.set_xlabel("cell: framework, dataset, compression level")


def _colour(method: str) -> str:
    index = KNOWN_METHODS.index(method) if method in KNOWN_METHODS else len(KNOWN_METHODS)
    return f"C{index % 10}"


def _legend(axis: Any) -> None:
    """Beside the panel, so that it never hides a bar."""
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _sd(row: MethodSummary) -> float | None:
    return row.mismatch_rate.sd if row.mismatch_rate.n > 1 else None
