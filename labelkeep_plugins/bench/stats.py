"""Reduction factors against plain recovery, with a paired bootstrap interval over seeds.

Accuracy differences get the same kind of interval, of the mean per-seed difference: where it
lies wholly below zero, a row loses accuracy beyond the seeds' spread (the noise floor).

The factor is ``mean plain count / mean row count`` over the seeds both finished: a ratio
of sums, which one lucky seed with few mismatches cannot blow up (a mean of per-seed
ratios can). Its 95% interval resamples the seed indices with replacement, the same
resample for plain and the row (the seeds are paired: both compress the same pretrained
model), 2000 times, from a fixed generator seed so the table repeats exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
BOOTSTRAP_SEED = 20240917
CONFIDENCE = 0.95


def ratio_of_sums(before: Sequence[float], after: Sequence[float]) -> float | None:
    """``sum(before) / sum(after)``; ``inf`` when only ``after`` is 0, 1.0 when both are."""
    if not before or len(before) != len(after):
        return None
    total_before, total_after = float(sum(before)), float(sum(after))
    if total_after == 0:
        return 1.0 if total_before == 0 else math.inf
    return total_before / total_after


def bootstrap_interval(
    before: Sequence[float],
    after: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """The paired percentile interval of :func:`ratio_of_sums`; None with under 2 seeds.

    Percentiles are taken as resampled values (no interpolation), so a resample with
    nothing left (an infinite factor) gives an infinite bound rather than NaN.
    """
    if len(before) < 2 or len(before) != len(after):
        return None
    picks = _resampled_seeds(len(before), resamples, seed)
    sums_before = np.asarray(before, dtype=float)[picks].sum(axis=1)
    sums_after = np.asarray(after, dtype=float)[picks].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sums_before / sums_after
    ratios[(sums_after == 0) & (sums_before == 0)] = 1.0
    return _percentile_interval(ratios)


def bootstrap_mean_interval(
    differences: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """The percentile interval of the mean of paired per-seed ``differences``; None under 2."""
    if len(differences) < 2:
        return None
    picks = _resampled_seeds(len(differences), resamples, seed)
    return _percentile_interval(np.asarray(differences, dtype=float)[picks].mean(axis=1))


def _resampled_seeds(seeds: int, resamples: int, seed: int) -> np.ndarray:
    """Seed indices drawn with replacement, one row per resample, from a fixed generator."""
    return np.random.default_rng(seed).integers(0, seeds, size=(resamples, seeds))


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The central ``CONFIDENCE`` interval of resampled values, as values that were drawn."""
    tail = (1.0 - CONFIDENCE) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return float(low), float(high)
