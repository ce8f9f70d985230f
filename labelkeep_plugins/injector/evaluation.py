"""Agreement over the evaluation passes a script runs, the latest one kept apart.

A script that evaluates after every epoch should be judged on its final model,
not on the sum over epochs: a pass is a run of evaluation forwards between
training forwards, and the latest pass has its own meter. The counts of recent
passes are kept as well, so the report can tell whether mismatches were still
falling when recovery ended (:mod:`labelkeep_plugins.budget`).
"""

from __future__ import annotations

import torch

from labelkeep_plugins.budget import PassCount
from labelkeep_plugins.metrics import AgreementMeter

HISTORY_PASSES = 64  # a trend needs the last few passes; 20,000 steps must not grow memory
_TALLIES = ("samples", "mismatches", "labelled", "negative_flips")  # PassCount's fields


class PassMeters:
    """All evaluation forwards, those of the latest evaluation pass, and recent passes' counts."""

    def __init__(self, history: int = HISTORY_PASSES) -> None:
        self.all = AgreementMeter()
        self.last = AgreementMeter()
        self.passes = 0
        self._last_pass = 0
        self._in_pass = False
        self._max_history = max(1, history)
        self._history: dict[int, list[int]] = {}  # pass id -> tallies, in _TALLIES order
        self._forgotten = 0  # passes up to this id were dropped from the history

    def pass_of_next_forward(self, training: bool) -> int:
        """The pass number of a forward now starting (0 for training forwards)."""
        if training:
            self._in_pass = False
            return 0
        if not self._in_pass:
            self._in_pass = True
            self.passes += 1
        return self.passes

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
