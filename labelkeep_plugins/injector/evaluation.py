"""Agreement over the evaluation passes a script runs, the latest one kept apart.

A script that evaluates after every epoch should be judged on its final model,
not on the sum over epochs: a pass is a run of evaluation forwards between
training forwards, and the latest pass has its own meter.
"""

from __future__ import annotations

import torch

from labelkeep_plugins.metrics import AgreementMeter


class PassMeters:
    """All evaluation forwards, and those of the latest evaluation pass."""

    def __init__(self) -> None:
        self.all = AgreementMeter()
        self.last = AgreementMeter()
        self.passes = 0
        self._last_pass = 0
        self._in_pass = False

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
        self.all.update(reference, student, targets)
        if pass_id > self._last_pass:
            self.last = AgreementMeter()
            self._last_pass = pass_id
        if pass_id == self._last_pass:
            self.last.update(reference, student, targets)
