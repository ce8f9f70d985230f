"""Class labels from what a loss was given: one reading for the injector, the loss and tuners.

A target may be class indices ``(N,)`` or class probabilities ``(N, C)`` (label smoothing,
mixup); both give indices. Entries outside ``[0, C)`` (an ``ignore_index`` such as -100 or
255) stay in place and are masked by whoever counts them, so that no training step waits
on the device to filter them.
"""

from __future__ import annotations

from typing import Any

import torch


def class_labels(target: Any) -> torch.Tensor | None:
    """Detached class indices ``(N,)`` from a target, or None where it holds none."""
    if not isinstance(target, torch.Tensor):
        return None
    if target.is_floating_point():
        return target.detach().argmax(dim=1) if target.dim() == 2 else None
    return target.detach() if target.dim() == 1 else None


def valid_labels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """True where a label names one of the ``classes`` (not an ``ignore_index``)."""
    return (labels >= 0) & (labels < classes)
