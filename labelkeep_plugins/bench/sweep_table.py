"""The sweep's comparison table: each setting against a baseline setting, as the README has it.

One Markdown row per cell: the baseline's mean mismatches (each seed's in brackets), then
per setting the mismatch reduction with its paired bootstrap interval, the negative-flip
reduction and the accuracy difference to the baseline, ``*`` where accuracy is more than
:data:`~.aggregate.ACCURACY_TOLERANCE` points below the lower of the baseline's and the
reference's. Then the median reduction of each setting over the cells of each level, and
how many of its cells are starred. The same statistics as ``labelkeep bench`` (:mod:`.aggregate`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from labelkeep_plugins.bench.aggregate import ACCURACY_TOLERANCE, Comparison, compare
from labelkeep_plugins.bench.cells import LEVELS
from labelkeep_plugins.bench.plan import RunKey
from labelkeep_plugins.bench.render import factor, interval, signed
from labelkeep_plugins.bench.store import RunResult
from labelkeep_plugins.experiments.tables import Column, markdown_table

Results = Mapping[tuple[str, int, str], Mapping[str, Any]]


def comparison_table(
    results: Results,
    cells: Sequence[str],
    names: Sequence[str],
    seeds: Sequence[int],
    baseline: str,
) -> list[str]:
    """The Markdown table and the medians per level (empty without the baseline setting)."""
    others = [name for name in names if name != baseline]
    if baseline not in names or not others:
        return []
    columns = [Column("cell"), Column(f"{baseline} mismatches"), *map(Column, others)]
    rows = []
    verdicts: dict[str, list[tuple[str, Comparison]]] = {name: [] for name in others}
    for cell in cells:
        plain = _seeds(results, cell, baseline, seeds)
        entries = []
        for name in others:
            versus = compare(plain, _seeds(results, cell, name, seeds), {})
            verdicts[name].append((cell, versus))
            entries.append(_entry(versus))
        rows.append((cell, _counts(plain), *entries))
    return [*markdown_table(columns, rows).splitlines(), "", *_medians(verdicts)]


def _seeds(results: Results, cell: str, name: str, seeds: Sequence[int]) -> dict[int, RunResult]:
    """The finished runs of one setting in one cell, by seed."""
    found = {}
    for seed in seeds:
        figures = results.get((cell, seed, name))
        if figures is not None and "error" not in figures:
            found[seed] = RunResult(RunKey(cell, name, seed), "ok", 0.0, figures=dict(figures))
    return found


def _counts(runs: Mapping[int, RunResult]) -> str:
    if not runs:
        return "n/a"
    counts = [int(runs[seed].figures["mismatches"]) for seed in sorted(runs)]
    return f"{statistics.fmean(counts):.1f} ({', '.join(map(str, counts))})"


def _entry(versus: Comparison) -> str:
    if versus.mismatch_reduction is None:
        return "n/a"
    star = "*" if _below(versus) else ""
    return (
        f"{interval(versus.mismatch_reduction, versus.mismatch_reduction_ci, True)} "
        f"nf {factor(versus.flip_reduction)} {signed(versus.accuracy_vs_plain)}pt{star}"
    )


def _below(versus: Comparison) -> bool:
    gap = versus.accuracy_vs_guard
    return gap is not None and gap < -ACCURACY_TOLERANCE


def _medians(verdicts: Mapping[str, list[tuple[str, Comparison]]]) -> list[str]:
    """``setting: moderate 1.20x, heavy 0.94x; 4 cells starred`` for each setting."""
    lines = []
    for name, found in verdicts.items():
        parts = []
        for level in LEVELS:
            values = [
                v.mismatch_reduction
                for cell, v in found
                if cell.rsplit("/", 1)[-1] == level and v.mismatch_reduction is not None
            ]
            if values:
                parts.append(f"{level} {factor(statistics.median(values))}")
        starred = sum(_below(v) for _, v in found)
        lines.append(f"{name}: median {', '.join(parts) or 'n/a'}; {starred} cells starred")
    return lines
