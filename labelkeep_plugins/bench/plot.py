"""``mismatches.png``: mismatches per method and cell, and per-class mismatch rates.

matplotlib is optional (``pip install 'labelkeep[bench]'``): without it the plot is
skipped with one line and everything else is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from labelkeep_plugins.bench.aggregate import MethodSummary
from labelkeep_plugins.bench.plan import METHOD_LABELS

PLOT_FILE = "mismatches.png"
MISSING = (
    "plot skipped: matplotlib is not installed (pip install 'labelkeep[bench]' or "
    "pip install matplotlib); the table, results.json and results.md are written"
)


def write_plot(rows: Sequence[MethodSummary], out: Path) -> tuple[Path | None, str]:
    """Draw the figure; returns its path (None if skipped) and a line saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        return None, MISSING
    cells = list(dict.fromkeys(r.cell for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    if not cells:
        return None, "plot skipped: no finished runs"
    columns = min(3, len(cells))
    grid_rows = 1 + -(-len(cells) // columns)
    figure = plt.figure(figsize=(5 * columns + 2, 3.8 * grid_rows), layout="constrained")
    grid = figure.add_gridspec(grid_rows, columns)
    _mismatch_bars(figure.add_subplot(grid[0, :]), rows, cells, methods)
    for index, cell in enumerate(cells):
        axis = figure.add_subplot(grid[1 + index // columns, index % columns])
        _per_class(axis, [r for r in rows if r.cell == cell], methods, cell)
    path = out / PLOT_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path, f"wrote {path}"


def _mismatch_bars(axis, rows, cells, methods) -> None:
    """Grouped bars: mean mismatch rate (error bar: spread over seeds) per cell and method.

    Rates, not counts, so that cells with test sets of different sizes share one axis.
    """
    width = 0.8 / max(len(methods), 1)
    for m_index, method in enumerate(methods):
        xs, means, sds = [], [], []
        for c_index, cell in enumerate(cells):
            row = next((r for r in rows if r.cell == cell and r.method == method), None)
            if row is None or row.mismatch_rate.mean is None:
                continue
            xs.append(c_index + (m_index - (len(methods) - 1) / 2) * width)
            means.append(row.mismatch_rate.mean)
            sds.append(row.mismatch_rate.sd or 0.0)
        axis.bar(xs, means, width, yerr=sds, capsize=3, label=METHOD_LABELS.get(method, method))
    axis.set_xticks(range(len(cells)), cells)
    axis.set_ylabel("mismatches, % of test samples")
    axis.set_title("Mismatches per framework and dataset (mean ± sd over seeds)")
    axis.legend()


def _per_class(axis, rows, methods, cell: str) -> None:
    """Per-class mismatch rate (mean over seeds), one line per method."""
    for method in methods:
        row = next((r for r in rows if r.method == method), None)
        if row is None or not row.per_class:
            continue
        labels = list(row.per_class)
        wide = method == methods[0]  # plain: drawn wide and pale, so equal lines stay visible
        axis.plot(
            labels,
            [row.per_class[k] for k in labels],
            marker="o",
            label=method,
            linewidth=4 if wide else 1.5,
            alpha=0.45 if wide else 1.0,
        )
    axis.set_title(f"{cell}: per-class mismatch rate", fontsize=9)
    axis.set_xlabel("class (true label)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7)
