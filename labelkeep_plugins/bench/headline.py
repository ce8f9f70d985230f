"""The bench's headline: per row, budget and compression level, the median over cells.

A median rather than a mean: one cell where a row removes every mismatch (an infinite
factor) or where recovery is chaotic must not decide the sentence.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from labelkeep_plugins.bench.aggregate import MethodSummary
from labelkeep_plugins.bench.cells import LEVELS
from labelkeep_plugins.bench.plan import PLAIN


def headlines(rows: Sequence[MethodSummary], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One headline per method (but plain), budget and level that has compared rows."""
    groups: list[tuple[str, int, str]] = []
    for method in methods:
        if method == PLAIN:
            continue
        budgets = dict.fromkeys(r.budget for r in rows if r.method == method)
        levels = [lv for lv in (*LEVELS, "all") if any(r.level == lv for r in rows)]
        groups += [(method, budget, level) for budget in budgets for level in levels]
    found = [headline(rows, *group) for group in groups]
    return [line for line in found if line["cells"]]


def headline(
    rows: Sequence[MethodSummary], method: str, budget: int = 1, level: str | None = None
) -> dict[str, Any]:
    """Across the cells of ``level`` (None: all): median and best reduction, flagged cells."""
    chosen = [
        r
        for r in rows
        if r.method == method
        and r.budget == budget
        and (level is None or r.level == level)
        and r.versus.mismatch_reduction is not None
    ]
    line: dict[str, Any] = {"method": method, "budget": budget, "level": level, "cells": 0}
    if not chosen:
        return line
    mismatch = [r.versus.mismatch_reduction or 0.0 for r in chosen]
    flips = [
        (r.versus.flip_reduction, r.cell) for r in chosen if r.versus.flip_reduction is not None
    ]
    gaps = [r.versus.gap_closed for r in chosen if r.versus.gap_closed is not None]
    best = max(chosen, key=lambda r: r.versus.mismatch_reduction or 0.0)
    line.update(
        cells=len(chosen),
        median_mismatch_reduction=statistics.median(mismatch),
        median_flip_reduction=_median([f for f, _ in flips]),
        median_gap_closed=_median(gaps),
        best_mismatch_reduction=best.versus.mismatch_reduction,
        best_mismatch_cell=best.cell,
        best_flip_reduction=max(flips)[0] if flips else None,
        best_flip_cell=max(flips)[1] if flips else None,
        cells_not_reduced=[r.cell for r in chosen if (r.versus.mismatch_reduction or 0) <= 1.0],
        cells_below_accuracy_guard=[r.cell for r in chosen if r.below_guard],
        cells_below_plain_beyond_noise=[r.cell for r in chosen if r.below_plain_beyond_noise],
    )
    return line


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None
