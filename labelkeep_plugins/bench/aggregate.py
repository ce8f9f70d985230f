"""From finished runs to the bench's figures: one row per cell, budget and method.

Each row holds the mean and spread over seeds of accuracy, mismatches and negative flips;
against plain recovery at the same budget (on the seeds both finished, which compress the
same pretrained models): the reduction factors with their paired bootstrap intervals
(:mod:`.stats`), the accuracy against the guard (the lower of plain's and the reference's)
and, when the cell has a limit row, the share of plain's gap to that limit the row closes.
Spreads are sample standard deviations over seeds (0 with one seed).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from labelkeep_plugins.bench.cells import LEVELS
from labelkeep_plugins.bench.plan import LIMIT, LIMIT_BUDGET, PLAIN, RunKey
from labelkeep_plugins.bench.stats import (
    bootstrap_interval,
    bootstrap_mean_interval,
    ratio_of_sums,
)
from labelkeep_plugins.bench.store import RunResult

# Points of accuracy a row may lose against min(plain, reference) before it is flagged:
# below this, the difference is within one or two test samples' worth of seed noise.
ACCURACY_TOLERANCE = 0.3
Seeds = Mapping[int, RunResult]


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
class Comparison:
    """A row against plain recovery on the paired seeds (and against the cell's limit)."""

    mismatch_reduction: float | None = None
    mismatch_reduction_ci: tuple[float, float] | None = None
    flip_reduction: float | None = None
    flip_reduction_ci: tuple[float, float] | None = None
    accuracy_vs_plain: float | None = None  # points, mean over the paired seeds
    accuracy_vs_plain_ci: tuple[float, float] | None = None  # its paired bootstrap interval
    accuracy_guard: float | None = None  # min(plain's, the reference's) mean accuracy, points
    accuracy_vs_guard: float | None = None
    gap_closed: float | None = None  # percent of plain's mismatch gap to the limit row


@dataclass(frozen=True)
class MethodSummary:
    """One row of the table: a method in a cell at a budget, over its finished seeds."""

    cell: str
    method: str
    budget: int
    seeds: tuple[int, ...]
    accuracy: Spread
    reference_accuracy: Spread
    mismatches: Spread
    mismatch_rate: Spread  # percent of the evaluated samples (cells differ in test-set size)
    negative_flips: Spread
    versus: Comparison
    per_class: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    notes: tuple[str, ...] = ()

    @property
    def level(self) -> str:
        """The cell's compression level (``all`` for a cell key without one)."""
        last = self.cell.rsplit("/", 1)[-1]
        return last if last in LEVELS else "all"

    @property
    def below_plain_beyond_noise(self) -> bool:
        """Accuracy below plain's beyond the seeds' spread: its 95% interval ends below 0."""
        bounds = self.versus.accuracy_vs_plain_ci
        return bounds is not None and bounds[1] < 0

    @property
    def below_guard(self) -> bool:
        gap = self.versus.accuracy_vs_guard
        return gap is not None and gap < -ACCURACY_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("versus"))
        data["level"], data["below_accuracy_guard"] = self.level, self.below_guard
        data["accuracy_below_plain_beyond_noise"] = self.below_plain_beyond_noise
        return data


def summarize(
    runs: Mapping[RunKey, RunResult],
    cells: Sequence[str],
    methods: Sequence[str],
    budgets: Sequence[int] = (1,),
) -> list[MethodSummary]:
    """A row per cell, budget and method that has a run (finished or failed); limit last."""
    rows = []
    for cell in cells:
        limit = _ok(runs, cell, LIMIT, LIMIT_BUDGET)
        for budget in budgets:
            plain = _ok(runs, cell, PLAIN, budget)
            for method in methods:
                results = _all(runs, cell, method, budget) if method != LIMIT else []
                if results:
                    rows.append(_summary(cell, method, budget, results, plain, limit))
        if LIMIT in methods and _all(runs, cell, LIMIT, LIMIT_BUDGET):
            plain = _ok(runs, cell, PLAIN, budgets[0])
            results = _all(runs, cell, LIMIT, LIMIT_BUDGET)
            rows.append(_summary(cell, LIMIT, LIMIT_BUDGET, results, plain, {}))
    return rows


def _summary(
    cell: str, method: str, budget: int, results: list[RunResult], plain: Seeds, limit: Seeds
) -> MethodSummary:
    ok = {r.key.seed: r for r in results if r.ok}
    return MethodSummary(
        cell=cell,
        method=method,
        budget=budget,
        seeds=tuple(sorted(ok)),
        accuracy=Spread.of(_values(ok.values(), "accuracy", scale=100.0)),
        reference_accuracy=Spread.of(_values(ok.values(), "reference_accuracy", scale=100.0)),
        mismatches=Spread.of(_values(ok.values(), "mismatches")),
        mismatch_rate=Spread.of(_rates(ok.values())),
        negative_flips=Spread.of(_values(ok.values(), "negative_flips")),
        versus=compare(plain, ok, limit if method != PLAIN else {}),
        per_class=_per_class_mean(ok.values()),
        failed=sum(not r.ok for r in results),
        notes=tuple(sorted({r.note for r in results if r.note})) + _warnings(ok.values(), method),
    )


def compare(plain: Seeds, row: Seeds, limit: Seeds) -> Comparison:
    """The row against plain on the seeds both finished (and the limit, where it ran too)."""
    paired = sorted(set(row) & set(plain))
    mismatches = _paired(plain, row, paired, "mismatches")
    flips = _paired(plain, row, paired, "negative_flips")
    guard, vs_plain, vs_guard = _accuracy(plain, row, paired)
    return Comparison(
        mismatch_reduction=ratio_of_sums(*mismatches) if mismatches else None,
        mismatch_reduction_ci=bootstrap_interval(*mismatches) if mismatches else None,
        flip_reduction=ratio_of_sums(*flips) if flips else None,
        flip_reduction_ci=bootstrap_interval(*flips) if flips else None,
        accuracy_vs_plain=vs_plain,
        accuracy_vs_plain_ci=_accuracy_interval(plain, row, paired),
        accuracy_guard=guard,
        accuracy_vs_guard=vs_guard,
        gap_closed=gap_closed(plain, row, limit),
    )


def reduction(plain: Seeds, method: Seeds, seeds: Sequence[int], name: str) -> float | None:
    """Sum of plain's figure over sum of the method's on ``seeds`` (None: nothing to pair)."""
    pairs = _paired(plain, method, seeds, name)
    return ratio_of_sums(*pairs) if pairs else None


def gap_closed(plain: Seeds, row: Seeds, limit: Seeds) -> float | None:
    """``(plain - row) / (plain - limit)`` mean mismatches, percent; None without a gap."""
    seeds = sorted(set(plain) & set(row) & set(limit))
    if not seeds:
        return None
    before, after, best = (_mean(runs, seeds, "mismatches") for runs in (plain, row, limit))
    if before is None or after is None or best is None or before - best <= 0:
        return None
    return 100.0 * (before - after) / (before - best)


def _accuracy(
    plain: Seeds, row: Seeds, seeds: Sequence[int]
) -> tuple[float | None, float | None, float | None]:
    """(guard, row - plain, row - guard) in accuracy points, means over ``seeds``."""
    mine, theirs = _mean(row, seeds, "accuracy"), _mean(plain, seeds, "accuracy")
    if mine is None or theirs is None:
        return None, None, None
    reference = _mean(row, seeds, "reference_accuracy")
    guard = 100.0 * (theirs if reference is None else min(theirs, reference))
    return guard, 100.0 * (mine - theirs), 100.0 * mine - guard


def _accuracy_interval(
    plain: Seeds, row: Seeds, seeds: Sequence[int]
) -> tuple[float, float] | None:
    """The paired bootstrap interval of the row's mean accuracy minus plain's, in points."""
    pairs = _paired(plain, row, seeds, "accuracy")
    if pairs is None:
        return None
    return bootstrap_mean_interval([100.0 * (a - b) for b, a in zip(*pairs, strict=True)])


def _paired(
    plain: Seeds, row: Seeds, seeds: Sequence[int], name: str
) -> tuple[list[float], list[float]] | None:
    before = [plain[s].figures.get(name) for s in seeds]
    after = [row[s].figures.get(name) for s in seeds]
    if not seeds or any(v is None for v in before + after):
        return None
    return [float(v) for v in before if v is not None], [float(v) for v in after if v is not None]


def _mean(runs: Seeds, seeds: Sequence[int], name: str) -> float | None:
    values = [runs[s].figures.get(name) for s in seeds]
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(float(v) for v in values if v is not None)


def _all(runs: Mapping[RunKey, RunResult], cell: str, method: str, budget: int) -> list[RunResult]:
    return [
        r for k, r in runs.items() if k.cell == cell and k.method == method and k.budget == budget
    ]


def _ok(runs: Mapping[RunKey, RunResult], cell: str, method: str, budget: int) -> dict[int, Any]:
    return {r.key.seed: r for r in _all(runs, cell, method, budget) if r.ok}


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
