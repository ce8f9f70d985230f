"""Would a longer recovery have helped? The trend of mismatches over the last evaluation passes.

The gain of the label-preserving loss grows with the recovery budget: if mismatches
with the reference are still falling when recovery ends, more steps would likely cut
them further. A few passes of a few hundred samples are noisy, so the trend is a
weighted least-squares slope of the mismatch rate, each pass weighted by its binomial
counting variance, and only a slope beyond ``z`` standard errors counts as a trend;
"falling" also needs the last pass below the one before it (the fall goes on to the end).
A rise beyond counting noise from one pass to the next is no part of recovery (a new
compression step of iterative pruning): only the passes after the last such rise are judged.

Pure arithmetic on per-pass counts (no torch), so it can judge any recorded history.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BudgetVerdict", "PassCount", "mismatch_trend"]

FALLING, FLAT, RISING = "falling", "flat", "rising"
TOO_FEW_PASSES, NO_PASSES = "too_few_passes", "no_passes"
MIN_PASSES = 3  # two points always fit a line exactly: no noise left to judge a slope by
_ADVICE = "evaluate after each epoch to learn whether a longer recovery would help"


@dataclass(frozen=True)
class PassCount:
    """The counts of one evaluation pass (negative flips cover its ``labelled`` samples)."""

    pass_id: int
    samples: int
    mismatches: int
    labelled: int = 0
    negative_flips: int = 0


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether mismatches were still falling at the end of recovery, and the figures behind it.

    ``slope_per_pass`` is the change of the mismatch rate per evaluation pass and
    ``standard_error`` its counting-noise standard error (both None without a trend test);
    ``mismatches`` are the counts of the passes used, of ``samples_per_pass`` samples each.
    """

    status: str  # falling | flat | rising | too_few_passes | no_passes
    passes_used: int
    slope_per_pass: float | None
    standard_error: float | None
    mismatches: tuple[int, ...]
    samples_per_pass: int | None
    negative_flips: tuple[int, ...] | None  # None unless every pass used had labels
    mixed_sample_counts: bool  # passes of other sizes (another data set) were left out
    evaluation_passes: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (tuples become lists)."""
        out = dict(vars(self))
        out["mismatches"] = list(self.mismatches)
        if self.negative_flips is not None:
            out["negative_flips"] = list(self.negative_flips)
        return out


def mismatch_trend(
    passes: Sequence[PassCount], window: int = 5, *, z: float = 2.0
) -> BudgetVerdict:
    """The verdict over the last up to ``window`` passes of one data set, oldest first.

    Passes of a different sample count than the series judged (e.g. a test loader
    interleaved with the validation loader) are left out, since their rates differ
    for reasons other than training.
    """
    if window < MIN_PASSES:
        raise ValueError(f"window must be at least {MIN_PASSES} passes, got {window}")
    passes = [p for p in passes if p.samples > 0]
    if not passes:
        return _untested(NO_PASSES, [], 0, f"the script ran no evaluation pass; {_ADVICE}")
    series = _series(passes)
    jump = last_jump_up(series, z)
    used = series[jump:][-window:]
    if len(used) < MIN_PASSES:
        message = _too_few(passes) if jump == 0 else _too_few_after_jump(series, jump)
        return _untested(TOO_FEW_PASSES, used, len(passes), message)
    slope, error = weighted_slope([(p.mismatches, p.samples) for p in used])
    status = FLAT
    if slope < -z * error and _rate(used[-1]) < _rate(used[-2]):  # and falling to the end
        status = FALLING
    elif slope > z * error:
        status = RISING
    mixed = len(series) < len(passes)
    message = _trend_message(status, used, mixed=mixed)
    return _verdict(status, used, len(passes), message, mixed=mixed, slope=(slope, error))


def weighted_slope(counts: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """Slope of the mismatch rate against pass index, and its standard error.

    ``counts`` are (mismatches, samples) per pass. Each rate's variance is the binomial
    p(1-p)/n with p = (m+1)/(n+2), so a pass with no mismatch still has some noise and
    never takes all the weight. The passes share one data set, so their noise is
    correlated and this error errs on the large side: a "falling" verdict is conservative.
    """
    if len(counts) < 2:
        raise ValueError("a slope needs at least two passes")
    points = []
    for index, (mismatches, samples) in enumerate(counts):
        count = PassCount(index, samples, mismatches)
        points.append((index, _rate(count), 1 / _rate_variance(count)))
    total = sum(w for _, _, w in points)
    x_mean = sum(w * x for x, _, w in points) / total
    y_mean = sum(w * y for _, y, w in points) / total
    sxx = sum(w * (x - x_mean) ** 2 for x, _, w in points)
    sxy = sum(w * (x - x_mean) * (y - y_mean) for x, y, w in points)
    return sxy / sxx, 1 / math.sqrt(sxx)


def last_jump_up(series: Sequence[PassCount], z: float = 2.0) -> int:
    """Index of the last pass whose rate rose over its predecessor's beyond ``z`` errors; 0 if none.

    Recovery does not do that: a new compression step (iterative pruning) does, or a pass
    over other data of the same size. The passes before it belong to another model.
    """
    for index in range(len(series) - 1, 0, -1):
        before, after = series[index - 1], series[index]
        spread = math.sqrt(_rate_variance(before) + _rate_variance(after))
        if _rate(after) - _rate(before) > z * spread:
            return index
    return 0


def _rate(count: PassCount) -> float:
    return count.mismatches / count.samples


def _rate_variance(count: PassCount) -> float:
    """Binomial p(1-p)/n with p = (m+1)/(n+2): no pass is ever noiseless."""
    p = (count.mismatches + 1) / (count.samples + 2)
    return p * (1 - p) / count.samples


def _series(passes: list[PassCount]) -> list[PassCount]:
    """The passes of one data set: the last pass's sample count, else the most frequent one.

    The fallback covers a final test pass after per-epoch validation: the validation
    series still tells whether recovery had levelled off.
    """
    same = [p for p in passes if p.samples == passes[-1].samples]
    if len(same) >= MIN_PASSES:
        return same
    frequency = Counter(p.samples for p in passes)
    recent = {p.samples: i for i, p in enumerate(passes)}  # ties go to the more recent size
    size = max(frequency, key=lambda s: (frequency[s], recent[s]))
    other = [p for p in passes if p.samples == size]
    return other if len(other) >= MIN_PASSES else same


def _untested(status: str, used: list[PassCount], seen: int, message: str) -> BudgetVerdict:
    return _verdict(status, used, seen, message, mixed=len(used) < seen, slope=None)


def _verdict(
    status: str,
    used: list[PassCount],
    seen: int,
    message: str,
    *,
    mixed: bool,
    slope: tuple[float, float] | None,
) -> BudgetVerdict:
    """The verdict over the passes ``used`` of ``seen``; ``slope`` with its error, if fitted."""
    labelled = bool(used) and all(p.labelled for p in used)
    return BudgetVerdict(
        status=status,
        passes_used=len(used),
        slope_per_pass=None if slope is None else slope[0],
        standard_error=None if slope is None else slope[1],
        mismatches=tuple(p.mismatches for p in used),
        samples_per_pass=used[-1].samples if used else None,
        negative_flips=tuple(p.negative_flips for p in used) if labelled else None,
        mixed_sample_counts=mixed,
        evaluation_passes=seen,
        message=message,
    )


def _too_few(passes: list[PassCount]) -> str:
    count = len(passes)
    if count < MIN_PASSES:
        return f"the script evaluated {count} time{'s' if count > 1 else ''}; {_ADVICE}"
    sizes = ", ".join(str(size) for size in sorted({p.samples for p in passes}))
    return (
        f"the script evaluated {count} times but on data of different sizes ({sizes} samples); "
        "evaluate the same data after each epoch to learn whether a longer recovery would help"
    )


def _too_few_after_jump(series: Sequence[PassCount], jump: int) -> str:
    before, after = series[jump - 1], series[jump]
    return (
        f"mismatches with the reference rose from {before.mismatches} to {after.mismatches} "
        f"of {after.samples} samples at evaluation pass {after.pass_id} (a new compression "
        f"step?), and {len(series) - jump} pass(es) followed: too few to judge whether a "
        "longer recovery would help; evaluate after each epoch of the last recovery"
    )


def _trend_message(status: str, used: list[PassCount], *, mixed: bool) -> str:
    """One plain sentence: what the counts did, and what it means for the budget."""
    first, last = used[0].mismatches, used[-1].mismatches
    figures = f"{first} → {last} of {used[-1].samples} samples"
    if mixed:
        figures += "; passes of other sizes were left out"
    span = f"over the last {len(used)} evaluation passes ({figures})"
    if status == FALLING:
        return (
            f"mismatches with the reference were still falling {span}: "
            "a longer recovery would likely cut them further"
        )
    if status == RISING:
        return (
            f"mismatches with the reference were rising {span}: the student is drifting "
            "away from its reference, and a longer recovery would not cut them"
        )
    return (
        f"mismatches with the reference levelled off {span}, within counting noise: "
        "a longer recovery is unlikely to cut them much"
    )
