"""The catch-up tuner: the teacher teaches once the student has caught up with its labels.

Measured on the bench, a distillation term at T 4 cuts mismatches where the compressed
student can follow the reference (moderate compression), and costs accuracy and
mismatches alike where it cannot yet (heavy compression in a short recovery): there the
user's loss has work left to do, and the teacher's soft targets compete with it.

Which case a run is in shows on its own training batches. The ground truth's gradient
on the logits, ``softmax(z) - onehot(y)``, has a per-sample norm that measures how far
a model is from fitting a label. The reference has fitted its training data to some
degree; a student that matched the reference exactly would have the same norm. So

    gate = min(1, fit(reference) / fit(student)),  fit = mean_i ||softmax(z_i) - onehot(y_i)||

is 1 once the student fits the labels as well as the reference does, and falls as the
student lags behind. The teacher terms' configured weights are multiplied by the gate;
the user's loss keeps its weight. Both fits are summed on their device and read every
``interval`` steps (one host sync per interval), the gate being their ratio over that
interval.

The gate starts closed: the first training step is the user's loss alone, and the gate
measured on it applies from the second step on (a batch whose labels are all
``ignore_index`` measures nothing: the gate is read again at the next step). Opening it
before anything was measured gave a freshly quantized model one step of full teacher
weight; under SGD with momentum that step wrecked the bench's 2-bit Brevitas MLP for good
(test accuracy 96.5% plain, 21-36% after, on 3 seeds). A step without labels (the
gradient path never sees them) cannot be measured: then the configured weights apply
unchanged, and the report says the gate was never measured.

A pruning round during recovery (an adapter's ``labelkeep_student_changed``: NNI's
scheduled pruners update their masks every few steps) closes the gate again: the gate
measured on the less compressed student would give the freshly pruned one the teacher
weight of a student that had caught up.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins.config import Config, LossConfig
from labelkeep_plugins.errors import ConfigError
from labelkeep_plugins.hookspecs import hookimpl
from labelkeep_plugins.loss.labels import valid_labels
from labelkeep_plugins.tuners.base import LiveTuner, check_resumable, teacher_scaled

UPDATE_INTERVAL = 20  # training steps averaged into one reading of the gate
TRAJECTORY_LIMIT = 500


def label_fit(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum over valid samples of ``||softmax(z) - onehot(y)||``, the ground truth's gradient."""
    probabilities = F.softmax(logits.detach().float(), dim=1)
    one_hot = F.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    return ((probabilities - one_hot).norm(dim=1) * valid).sum()


class CatchUpTuner(LiveTuner):
    """Scales the teacher terms by how far the student has caught up (``tuner: catchup``)."""

    name = "catchup"

    def __init__(self, config: Config) -> None:
        self._base = config.loss
        self.interval = UPDATE_INTERVAL
        self.gate = 0.0  # closed until the first measurement (module docstring)
        self.measured = False
        self.steps = 0
        self.resets = 0  # pruning rounds that closed a measured gate
        self.trajectory: list[dict[str, Any]] = []
        self._sums: torch.Tensor | None = None  # (student fit, reference fit, samples)

    def loss_config(self) -> LossConfig:
        return teacher_scaled(self._base, self.gate)  # no user loss: the teacher alone trains

    @hookimpl
    def labelkeep_training_step(
        self,
        student_logits: torch.Tensor,
        reference_logits: torch.Tensor,
        targets: torch.Tensor | None,
        terms: dict[str, torch.Tensor],
    ) -> None:
        if (
            targets is None
            or targets.shape != student_logits.shape[:1]
            or targets.is_floating_point()  # soft targets: no labels to fit
        ):
            self._unmeasurable()
            return
        labels = targets.to(student_logits.device)
        valid = valid_labels(labels, student_logits.shape[1]).to(torch.float32)
        labels = labels.clamp(0, student_logits.shape[1] - 1)  # masked: no step waits on the device
        reference = reference_logits.to(student_logits.device)
        sums = torch.stack(
            [
                label_fit(student_logits, labels, valid),
                label_fit(reference, labels, valid),
                valid.sum(),
            ]
        )
        self._sums = sums if self._sums is None else self._sums + sums
        self.steps += 1
        if not self.measured or self.steps % self.interval == 0:
            self._update()

    @hookimpl
    def labelkeep_student_changed(self, student: nn.Module, where: str) -> None:
        """A pruning round: closed until the pruned student's first step is measured."""
        if self.measured:  # torch-pruning tells each group of a step: count a gate closed
            self.resets += 1
        self._sums = None
        self.measured = False
        if self.gate != 0.0:
            self.gate = 0.0
            self.switch()

    def _unmeasurable(self) -> None:
        """No labels to measure with: the configured weights apply, as with ``ce: 0``."""
        if not self.measured and self.gate != 1.0:
            self.gate = 1.0
            self.switch()

    def _update(self) -> None:
        """The gate over the steps since the last update (the first step alone, at first)."""
        assert self._sums is not None
        student, reference, samples = self._sums.cpu().tolist()  # the one sync
        self._sums = None
        if not samples > 0:  # every label was an ignore_index: nothing measured
            return
        # a student that fits its labels exactly lags behind nothing
        gate = min(1.0, reference / student) if student > 0 else 1.0
        self.gate, self.measured = gate, True
        self.trajectory.append(
            {
                "step": self.steps,
                "gate": gate,
                "student_fit": student / samples,
                "reference_fit": reference / samples,
            }
        )
        del self.trajectory[:-TRAJECTORY_LIMIT]
        self.switch()

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "name": self.name,
            "interval": self.interval,
            "gate": self.gate,
            "measured": self.measured,
            "steps": self.steps,
            "resets": self.resets,
            "trajectory": [dict(entry) for entry in self.trajectory],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; a state of another tuner or interval raises and changes nothing."""
        check_resumable(self.name, state)
        if state.get("interval") != self.interval:
            raise ConfigError(
                f"cannot resume tuner {self.name!r}: saved with interval "
                f"{state.get('interval')!r}, this run has {self.interval}"
            )
        self.gate, self.measured = float(state["gate"]), bool(state["measured"])
        self.steps = int(state["steps"])
        self.resets = int(state.get("resets", 0))  # absent in states saved before it existed
        self.trajectory = [dict(entry) for entry in state.get("trajectory", [])]
        self._sums = None
        self.switch()
