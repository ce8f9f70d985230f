"""The tuning objective: fewest mismatches, accuracy no lower than plain recovery's.

Pure functions over run reports (``labelkeep run --report``), so ``labelkeep tune``,
the NNI trial hook and the tests share one definition. Figures come from the
``agreement`` section of a report, which the runner measures on the script's own
evaluation passes (held-out data, as the user evaluates). With ``labelkeep tune
--metric`` the constraint is on a metric read from the trial's output instead
(:mod:`.metric`), in either direction: "max" (an accuracy) or "min" (a loss).

Trials are compared on *rates* (mismatches / samples): the same ordering as raw
counts when every trial evaluates the same data, which is the normal case, and
still fair when a trial saw fewer evaluation batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from labelkeep_plugins.errors import ConfigError, LabelkeepError

# Accuracies are ratios of integer counts; equal counts give equal floats, so this only
# absorbs rounding when a user gives a tolerance like 0.1 + 0.2.
_EPSILON = 1e-9
# Weight of the negative-flip rate in the scalar a tuner minimizes: a tie-breaker, smaller than
# one mismatch unless a trial has over 1,000 mismatches (negative flips are a subset of them).
# The ranking itself (Objective.sort_key) compares the two figures exactly.
_TIE_BREAK = 1e-3


class NoAgreementError(LabelkeepError):
    """A run report has no agreement figures: the script never evaluated the compressed model."""

    def __init__(self, source: str) -> None:
        super().__init__(
            f"{source}: the run report has no agreement figures, so labelkeep saw no evaluation "
            "pass of the compressed model and there is nothing to tune on. Make the script "
            "evaluate the model after fine-tuning on held-out data in eval mode (model.eval() "
            "and/or torch.no_grad()), and compute its loss on those batches (e.g. "
            "F.cross_entropy(outputs, labels)) so accuracy and negative flips can be counted"
        )


@dataclass(frozen=True)
class Measurement:
    """The agreement of one trial's compressed model with its reference."""

    samples: int
    mismatches: int
    negative_flips: int | None = None
    accuracy: float | None = None
    metric: float | None = None  # the user's --metric, read from the trial's output

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.samples

    @property
    def negative_flip_rate(self) -> float:
        """Per evaluated sample; 0 when the script gave no labels (no flips can be counted)."""
        return (self.negative_flips or 0) / self.samples

    def to_dict(self) -> dict[str, Any]:
        figures = {
            "samples": self.samples,
            "mismatches": self.mismatches,
            "negative_flips": self.negative_flips,
            "accuracy": self.accuracy,
        }
        return figures if self.metric is None else {**figures, "metric": self.metric}


def measurement_from_report(report: Any, *, source: str) -> Measurement:
    """Read the agreement figures of a run report; ``source`` names it in errors."""
    if not isinstance(report, Mapping):
        raise LabelkeepError(f"{source}: not a labelkeep run report (expected a JSON object)")
    agreement = report.get("agreement")
    if agreement is None:
        raise NoAgreementError(source)
    if not isinstance(agreement, Mapping):
        raise LabelkeepError(f"{source}: 'agreement' must be a JSON object, got {agreement!r}")
    samples, mismatches = agreement.get("samples"), agreement.get("mismatches")
    if not _is_count(samples) or not _is_count(mismatches) or samples == 0:
        raise NoAgreementError(source)
    flips = agreement.get("negative_flips")
    accuracy = agreement.get("compressed_accuracy")
    return Measurement(
        samples=samples,
        mismatches=mismatches,
        negative_flips=flips if _is_count(flips) else None,
        accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
    )


@dataclass(frozen=True)
class Objective:
    """Fewest mismatches subject to ``accuracy >= baseline_accuracy - tolerance``.

    ``baseline_accuracy`` is the plain trial's (``loss: {weights: {ce: 1.0}}``); when it is
    unknown (no labels, or the plain trial failed) every trial counts as feasible. With
    ``metric`` ("max" or "min") the constrained figure is :attr:`Measurement.metric`, and
    "min" turns the floor into a ceiling: ``metric <= baseline_accuracy + tolerance``.
    """

    baseline_accuracy: float | None = None
    tolerance: float = 0.0
    metric: str | None = None  # None: the report's accuracy; "max" | "min": the user's metric

    def __post_init__(self) -> None:
        if self.metric not in (None, "max", "min"):
            raise ConfigError(f"metric mode must be max or min, got {self.metric!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, int | float):
            raise ConfigError(f"tolerance must be a number, got {self.tolerance!r}")
        if self.metric == "min" and self.tolerance >= 0:
            return  # in the metric's own units (a loss may exceed 1)
        if not 0 <= self.tolerance < 1:
            raise ConfigError(
                f"tolerance must be >= 0 and < 1 (a fraction of accuracy: 0.005 allows half "
                f"a percentage point below plain recovery), got {self.tolerance!r}"
            )

    @property
    def accuracy_floor(self) -> float | None:
        """The bound a trial must meet: a floor, or a ceiling for a "min" metric."""
        if self.baseline_accuracy is None:
            return None
        if self.metric == "min":
            return self.baseline_accuracy + self.tolerance
        return self.baseline_accuracy - self.tolerance

    def figure(self, measured: Measurement) -> float | None:
        """The constrained figure of a trial: its accuracy, or the user's metric."""
        return measured.accuracy if self.metric is None else measured.metric

    def deficit(self, measured: Measurement) -> float:
        """How far on the wrong side of the bound a trial is (0 when it meets it)."""
        bound = self.accuracy_floor
        if bound is None:
            return 0.0
        value = self.figure(measured)
        if value is None:
            return 1.0  # cannot be shown to meet the bound
        shortfall = value - bound if self.metric == "min" else bound - value
        return shortfall if shortfall > _EPSILON else 0.0

    def feasible(self, measured: Measurement) -> bool:
        return self.deficit(measured) == 0.0

    def sort_key(self, measured: Measurement) -> tuple[float, ...]:
        """Feasible trials first by mismatch rate, then negative flips; the rest by shortfall."""
        if self.feasible(measured):
            return (0.0, measured.mismatch_rate, measured.negative_flip_rate)
        return (1.0, self.deficit(measured), measured.mismatch_rate, measured.negative_flip_rate)

    def value(self, measured: Measurement) -> float:
        """One number for a tuner to minimize, ordered like :meth:`sort_key`.

        Feasible trials score in [0, 1.001]; an infeasible one scores above 1 by its
        shortfall, so no accuracy loss beyond the tolerance is ever preferred.
        """
        score = measured.mismatch_rate + _TIE_BREAK * measured.negative_flip_rate
        deficit = self.deficit(measured)
        return score if deficit == 0.0 else 1.0 + _TIE_BREAK + deficit + score


@dataclass(frozen=True)
class Ranked:
    """One trial in the ranking."""

    trial: int
    measurement: Measurement
    feasible: bool
    value: float


def rank(measurements: Mapping[int, Measurement], objective: Objective) -> list[Ranked]:
    """Trials best first; equal figures keep the lower trial number (the plain trial is 0)."""
    order = sorted(measurements, key=lambda t: (objective.sort_key(measurements[t]), t))
    ranked = []
    for trial in order:
        measured = measurements[trial]
        ranked.append(
            Ranked(trial, measured, objective.feasible(measured), objective.value(measured))
        )
    return ranked


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
