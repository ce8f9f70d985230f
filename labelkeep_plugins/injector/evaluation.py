"""Agreement over the evaluation passes a script runs, the latest one kept apart.

A script that evaluates after every epoch should be judged on its final model,
not on the sum over epochs, and a script that evaluates twice in a row (a
validation loader, then the test loader) on its last pass, not on both. The
latest pass has its own meter; the counts of recent passes are kept as well, so
the report can tell whether mismatches were still falling when recovery ended
(:mod:`labelkeep_plugins.budget`).

Where one pass ends and the next begins is :mod:`labelkeep_plugins.injector.passes`.
"""

from __future__ import annotations

import torch
from torch import nn

from labelkeep_plugins.budget import PassCount
from labelkeep_plugins.injector.passes import EvaluationBatch, PassBoundaries
from labelkeep_plugins.metrics import AgreementMeter

__all__ = ["EvaluationBatch", "PassMeters"]

HISTORY_PASSES = 64  # a trend needs the last few passes; 20,000 steps must not grow memory
_TALLIES = ("samples", "mismatches", "labelled", "negative_flips")  # PassCount's fields


class PassMeters:
    """All evaluation forwards, those of the latest evaluation pass, and recent passes' counts."""

    def __init__(self, history: int = HISTORY_PASSES) -> None:
        self.all = AgreementMeter()
        self.last = AgreementMeter()
        self.boundaries = PassBoundaries()
        self._last_pass = 0
        self._max_history = max(1, history)
        self._history: dict[int, list[int]] = {}  # pass id -> tallies, in _TALLIES order
        self._forgotten = 0  # passes up to this id were dropped from the history

    @property
    def passes(self) -> int:
        return self.boundaries.passes

    def pass_of_next_forward(self, training: bool, batch: EvaluationBatch | None = None) -> int:
        """The pass number of a forward now starting (0 for training forwards).

        Without ``batch`` only rules 1-3 of the module docstring apply.
        """
        if training:
            self.boundaries.training()
            return 0
        return self.boundaries.evaluation(batch)

    def watch(self, student: nn.Module) -> None:
        """Hear ``student``'s eval()/train() calls and DataLoader iterators (undo: unwatch)."""
        self.boundaries.watch(student)

    def unwatch(self) -> None:
        self.boundaries.unwatch()

    def ambiguities(self) -> tuple[str, ...]:
        """One sentence per kind of pass boundary that could not be told apart, or none."""
        return tuple(
            f"{message} (seen {times} time{'s' if times > 1 else ''}, latest at pass {latest})"
            for message, (times, latest) in self.boundaries.ambiguous.items()
        )

    def update(
        self,
        pass_id: int,
        reference: torch.Tensor,
        student: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> None:
        """Count one evaluation batch (batches may arrive after their pass ended)."""
        before = _tallies(self.all)
        self.all.update(reference, student, targets)
        self._record(pass_id, before, _tallies(self.all))
        if pass_id > self._last_pass:
            self.last = AgreementMeter()
            self._last_pass = pass_id
        if pass_id == self._last_pass:
            self.last.update(reference, student, targets)

    def history(self) -> tuple[PassCount, ...]:
        """The counts of the latest passes (at most ``history`` of them), oldest first."""
        return tuple(
            PassCount(pass_id, *self._history[pass_id]) for pass_id in sorted(self._history)
        )

    def _record(self, pass_id: int, before: tuple[int, ...], after: tuple[int, ...]) -> None:
        """Add one batch's counts to its own pass; the oldest pass goes when the bound is hit."""
        if pass_id <= self._forgotten:  # training (0) or a late batch of a dropped pass
            return
        tallies = self._history.get(pass_id)
        if tallies is None:
            tallies = self._history[pass_id] = [0] * len(_TALLIES)
            if len(self._history) > self._max_history:
                oldest = min(self._history)
                del self._history[oldest]
                self._forgotten = max(self._forgotten, oldest)
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            tallies[index] += new - old


def _tallies(meter: AgreementMeter) -> tuple[int, ...]:
    """The meter's running counts; a batch's own counts are the difference across its update.

    So one formula (AgreementMeter.update) counts both the run and each pass, without a
    second pass over the batch.
    """
    counts = meter.counts
    return tuple(counts[name] for name in _TALLIES)
