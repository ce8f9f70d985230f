"""What ``labelkeep bench --cost`` trains: a reference CNN, its student, data, and one step.

The models are the bench's MNIST-1D CNN shape at two widths: a student of 1/8 the
reference's width (what 87.5% channel pruning leaves) and one of equal width (what
quantization leaves). The cached variant is the handle with its ``reference_cache``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelkeep_plugins.config import DEFAULT_TEMPERATURE, DEFAULT_WEIGHTS

LENGTH = 40
CLASSES = 10


@dataclass(frozen=True)
class CostCase:
    """A reference and a student width; ``batch`` samples per step, ``pool`` samples repeating."""

    name: str
    reference_width: int
    student_width: int
    batch: int = 128
    pool: int = 1024


CASES = (
    CostCase("student 1/8 of the reference's width", reference_width=128, student_width=16),
    CostCase("student as wide as the reference", reference_width=64, student_width=64),
)


def cnn(width: int) -> nn.Module:
    """Three conv blocks (two strided) and a linear head, as in the torch-pruning script."""
    return nn.Sequential(
        nn.Unflatten(1, (1, LENGTH)),
        nn.Conv1d(1, width, 5, padding=2),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * LENGTH // 4, CLASSES),
    )


class RepeatingBatches:
    """Batches drawn from a fixed pool, reshuffled every pass: samples repeat, batches do not."""

    def __init__(self, case: CostCase, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(case.pool, LENGTH, generator=generator)
        self.y = torch.randint(0, CLASSES, (case.pool,), generator=generator)
        self.batch = case.batch
        self._generator = generator
        self._order = torch.empty(0, dtype=torch.long)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self._order) < self.batch:
            self._order = torch.randperm(len(self.y), generator=self._generator)
        index, self._order = self._order[: self.batch], self._order[self.batch :]
        return self.x[index], self.y[index]

    def fresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch never seen before (every row a cache miss)."""
        x = torch.randn(self.batch, LENGTH, generator=self._generator)
        return x, torch.randint(0, CLASSES, (self.batch,), generator=self._generator)


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    """The user's step, unchanged in every variant: forward, cross-entropy, backward, step."""
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def handwritten_kd_step(
    model: nn.Module,
    reference: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    temperature: float = DEFAULT_TEMPERATURE,
) -> None:
    """The same step with labelkeep's default loss written into the loop by hand.

    ``ce * cross_entropy + kd * KL(reference || student at T) * T^2`` at the default weights:
    what a user who edits their script gets, and so the yardstick for labelkeep's own overhead.
    """
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    with torch.no_grad():
        target = F.log_softmax(reference(x) / temperature, dim=1)
    student = F.log_softmax(logits / temperature, dim=1)
    kd = F.kl_div(student, target, reduction="batchmean", log_target=True)
    ce_weight, kd_weight = DEFAULT_WEIGHTS["ce"], DEFAULT_WEIGHTS["kd"]
    (ce_weight * F.cross_entropy(logits, y) + kd_weight * kd * temperature**2).backward()
    optimizer.step()


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every leaf module's output on one batch (an upper bound on what is live)."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total
