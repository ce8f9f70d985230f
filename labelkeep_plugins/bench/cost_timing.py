"""Step time of a plain and an instrumented training loop, interleaved in one process.

Every repetition runs each variant once, in a shuffled order, on the same student, so
drift in the machine's load (other processes, frequency scaling) hits every variant alike;
the figure is the median over repetitions. Attaching and detaching happen outside the
timed region, so the plain steps run with no labelkeep patch in place at all.

Variants: ``plain`` (the user's step), ``instrumented`` (the step with labelkeep attached,
cache off, fixed weights), ``default_tuner`` (the same with the default tuner measuring every step,
auto mode's default), ``cached`` (cache on, every sample seen before), ``cached_fresh``
(cache on, every sample new: the fingerprinting overhead on top of the forward),
``reference_forward`` (the reference alone under ``no_grad``), ``handwritten_kd`` (the
default loss written into the loop by hand, no labelkeep) and ``fingerprint`` (hashing one
batch).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from labelkeep_plugins.bench.cost_models import (
    CostCase,
    RepeatingBatches,
    cnn,
    handwritten_kd_step,
    training_step,
)
from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.injector.attach import InjectionHandle
from labelkeep_plugins.loss.composer import LossComposer
from labelkeep_plugins.reference.cache import ReferenceCache
from labelkeep_plugins.reference.snapshot import snapshot_reference
from labelkeep_plugins.tuners.base import make_tuner

VARIANTS = (
    "plain",
    "instrumented",
    "default_tuner",
    "cached",
    "cached_fresh",
    "reference_forward",
    "handwritten_kd",
    "fingerprint",
)


@dataclass
class Timings:
    """Median seconds per variant, and every sample (for the spread)."""

    samples: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def to_dict(self) -> dict[str, Any]:
        return {
            variant: {
                "median_ms": 1e3 * self.median(variant),
                "p25_ms": 1e3 * _quantile(values, 0.25),
                "p75_ms": 1e3 * _quantile(values, 0.75),
                "repetitions": len(values),
            }
            for variant, values in self.samples.items()
        }


class _Loop:
    """The models, data and cache of one case, and one timed call per variant."""

    def __init__(self, case: CostCase, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.reference = snapshot_reference(cnn(case.reference_width))
        self.student = cnn(case.student_width)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=1e-3)
        self.data = RepeatingBatches(case, seed)
        self.cache = ReferenceCache()
        self.composer = LossComposer(LossConfig())
        self.tuner = make_tuner(Config())  # the default tuner, as labelkeep-run has it
        self.tuned_composer = LossComposer(self.tuner.loss_config())
        bind = getattr(self.tuner, "bind", None)  # as the session binds a tuner that learns
        if callable(bind):
            bind(self.tuned_composer.defer)

    def warm(self, steps: int) -> None:
        """Fill the cache with the whole pool and let every code path run once."""
        passes = -(-len(self.data.y) // self.data.batch)
        for _ in range(max(steps, passes)):
            for variant in VARIANTS:
                self.timed(variant)

    def timed(self, variant: str) -> float:
        x, y = self.data.fresh() if variant == "cached_fresh" else self.data.next()
        handle = self._attach(variant)
        try:
            started = time.perf_counter()
            self._body(variant, x, y)
            return time.perf_counter() - started
        finally:
            if handle is not None:
                handle.detach()

    def _attach(self, variant: str) -> InjectionHandle | None:
        if variant == "instrumented":
            return InjectionHandle(self.student, self.reference, self.composer)
        if variant == "default_tuner":
            # the tuner hears each training step, as a session's does
            return InjectionHandle(
                self.student, self.reference, self.tuned_composer, listener=self.tuner
            )
        if variant in ("cached", "cached_fresh"):
            return InjectionHandle(
                self.student, self.reference, self.composer, reference_cache=self.cache
            )
        return None

    def _body(self, variant: str, x: torch.Tensor, y: torch.Tensor) -> None:
        if variant == "reference_forward":
            with torch.no_grad():
                self.reference(x)
        elif variant == "handwritten_kd":
            handwritten_kd_step(self.student, self.reference, self.optimizer, (x, y))
        elif variant == "fingerprint":
            self.cache.fingerprints((x,), {})
        else:
            training_step(self.student, self.optimizer, x, y)


def time_case(case: CostCase, repetitions: int, warmup: int, seed: int = 0) -> Timings:
    """Interleaved timing of every variant; ``repetitions`` samples each."""
    loop = _Loop(case, seed)
    loop.warm(warmup)
    timings = Timings()
    order = list(VARIANTS)
    shuffle: Callable[[list[str]], None] = random.Random(seed).shuffle
    for _ in range(repetitions):
        shuffle(order)
        for variant in order:
            timings.samples[variant].append(loop.timed(variant))
    return timings


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
