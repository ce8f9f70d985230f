"""From finished runs to the bench's figures: mean and spread per cell and method, and ratios.

Reduction factors are ratios of sums over the seeds that both plain and the method
finished (``sum plain mismatches / sum method mismatches``): a paired comparison that one
lucky seed with few mismatches cannot blow up, unlike a mean of per-seed ratios. Spreads
are sample standard deviations over seeds (0 with one seed).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from labelkeep_plugins.bench.plan import PLAIN, RunKey
from labelkeep_plugins.bench.store import RunResult


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one figure over seeds."""

    mean: float | None
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(None, None, 0)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), sd, len(values))


@dataclass(frozen=True)
class MethodSummary:
    """One row of the table: a method in a cell, over its finished seeds."""

    cell: str
    method: str
    seeds: tuple[int, ...]
    accuracy: Spread
    reference_accuracy: Spread
    mismatches: Spread
    mismatch_rate: Spread  # percent of the evaluated samples (cells differ in test-set size)
    negative_flips: Spread
    mismatch_reduction: float | None
    flip_reduction: float | None
    accuracy_vs_plain: float | None  # mean accuracy minus plain's, over the paired seeds
    per_class: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    runs: Mapping[RunKey, RunResult], cells: Sequence[str], methods: Sequence[str]
) -> list[MethodSummary]:
    """A row per cell and method that has at least one run (finished or failed)."""
    rows = []
    for cell in cells:
        plain = _ok(runs, cell, PLAIN)
        for method in methods:
            results = [r for k, r in runs.items() if k.cell == cell and k.method == method]
            if results:
                rows.append(_summary(cell, method, results, plain))
    return rows


def _summary(
    cell: str, method: str, results: list[RunResult], plain: dict[int, RunResult]
) -> MethodSummary:
    ok = {r.key.seed: r for r in results if r.ok}
    paired = sorted(set(ok) & set(plain))
    return MethodSummary(
        cell=cell,
        method=method,
        seeds=tuple(sorted(ok)),
        accuracy=Spread.of(_values(ok.values(), "accuracy", scale=100.0)),
        reference_accuracy=Spread.of(_values(ok.values(), "reference_accuracy", scale=100.0)),
        mismatches=Spread.of(_values(ok.values(), "mismatches")),
        mismatch_rate=Spread.of(_rates(ok.values())),
        negative_flips=Spread.of(_values(ok.values(), "negative_flips")),
        mismatch_reduction=reduction(plain, ok, paired, "mismatches"),
        flip_reduction=reduction(plain, ok, paired, "negative_flips"),
        accuracy_vs_plain=_accuracy_gap(plain, ok, paired),
        per_class=_per_class_mean(ok.values()),
        failed=sum(not r.ok for r in results),
        notes=tuple(sorted({r.note for r in results if r.note})) + _warnings(ok.values(), method),
    )


def reduction(
    plain: Mapping[int, RunResult], method: Mapping[int, RunResult], seeds: Sequence[int], name: str
) -> float | None:
    """Sum of plain's figure over sum of the method's, on the paired seeds.

    None when there is no paired seed or a figure is missing; ``inf`` when plain had some
    and the method none; 1.0 when both had none (nothing to reduce).
    """
    if not seeds:
        return None
    before = [plain[s].figures.get(name) for s in seeds]
    after = [method[s].figures.get(name) for s in seeds]
    if any(v is None for v in before + after):
        return None
    total_before, total_after = sum(before), sum(after)
    if total_after == 0:
        return 1.0 if total_before == 0 else math.inf
    return total_before / total_after


def _accuracy_gap(
    plain: Mapping[int, RunResult], method: Mapping[int, RunResult], seeds: Sequence[int]
) -> float | None:
    gaps = []
    for seed in seeds:
        a, b = method[seed].figures.get("accuracy"), plain[seed].figures.get("accuracy")
        if a is None or b is None:
            return None
        gaps.append(100.0 * (a - b))
    return statistics.fmean(gaps) if gaps else None


def _ok(runs: Mapping[RunKey, RunResult], cell: str, method: str) -> dict[int, RunResult]:
    return {k.seed: r for k, r in runs.items() if k.cell == cell and k.method == method and r.ok}


def _values(results: Iterable[RunResult], name: str, scale: float = 1.0) -> list[float]:
    values = (r.figures.get(name) for r in results)
    return [scale * float(v) for v in values if isinstance(v, int | float)]


def _rates(results: Iterable[RunResult]) -> list[float]:
    figures = [r.figures for r in results]
    return [100.0 * f["mismatches"] / f["samples"] for f in figures if f.get("samples")]


def _per_class_mean(results: Iterable[RunResult]) -> dict[str, float]:
    """Mean per-class mismatch rate over seeds (a class missing in a seed is left out there)."""
    collected: dict[str, list[float]] = {}
    for result in results:
        for label, rate in (result.figures.get("per_class_mismatch_rate") or {}).items():
            collected.setdefault(str(label), []).append(float(rate))
    ordered = sorted(collected, key=lambda k: (len(k), k))
    return {label: statistics.fmean(collected[label]) for label in ordered}


def _warnings(results: Iterable[RunResult], method: str) -> tuple[str, ...]:
    """Signs that a run did not measure what it claims (loss never applied, reference changed)."""
    notes = set()
    for result in results:
        figures = result.figures
        if method != PLAIN and figures.get("training_steps_with_loss") == 0:
            notes.add(f"seed {result.key.seed}: labelkeep never reached a training step")
        if figures.get("reference_intact") is False:
            notes.add(f"seed {result.key.seed}: the reference changed during the run")
        for failure in figures.get("failures") or []:
            notes.add(f"seed {result.key.seed}: {failure}")
    return tuple(sorted(notes))


def headline(rows: Sequence[MethodSummary], method: str) -> dict[str, Any]:
    """Across cells, for one method: median and best reduction, cells below plain accuracy."""
    chosen = [r for r in rows if r.method == method and r.mismatch_reduction is not None]
    if not chosen:
        return {"method": method, "cells": 0}
    mismatch = [r.mismatch_reduction for r in chosen if r.mismatch_reduction is not None]
    flips = [(r.flip_reduction, r.cell) for r in chosen if r.flip_reduction is not None]
    best = max(chosen, key=lambda r: r.mismatch_reduction or 0.0)
    below = [r.cell for r in chosen if r.accuracy_vs_plain is not None and r.accuracy_vs_plain < 0]
    return {
        "method": method,
        "cells": len(chosen),
        "median_mismatch_reduction": statistics.median(mismatch),
        "best_mismatch_reduction": best.mismatch_reduction,
        "best_mismatch_cell": best.cell,
        "best_flip_reduction": max(flips)[0] if flips else None,
        "best_flip_cell": max(flips)[1] if flips else None,
        "cells_not_reduced": [r.cell for r in chosen if (r.mismatch_reduction or 0) <= 1.0],
        "cells_below_plain_accuracy": below,
    }
