"""Data, pretrained weights and the plain loops of the bench's user-style scripts.

The scripts are what a user would write; this module is the part of them that a user
would have on disk already: a data set with a fixed train/validation/test split,
pretrained weights, and an ordinary training loop and evaluation (labelkeep's own data
loader is the one import: it activates nothing). ``--split val`` evaluates on a
validation slice carved out of the training data (never trained on), ``--split test``
on the held-out test split, so a tuner can search on ``val`` and the bench report
``test`` numbers it never tuned on.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from labelkeep_plugins.bench.cells import OPTIMIZERS  # the bench's grid; imports no torch
from labelkeep_plugins.experiments.data import (  # the one split; activates nothing
    DATASETS,
    dataset_arrays,
)

SPLITS = ("val", "test")
VALIDATION_FRACTION = 0.2
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class Data:
    """Loaders for training and for the evaluated split, and the input's shape."""

    train: DataLoader
    evaluate: DataLoader
    features: int
    classes: int


def load_data(dataset: str, split: str, data_dir: str | None, batch_size: int = 64) -> Data:
    """Training data without the validation slice, and the ``split`` to evaluate on."""
    x, y, x_test, y_test = _arrays(dataset, data_dir)
    cut = int(len(y) * (1 - VALIDATION_FRACTION))
    if split == "val":
        eval_x, eval_y = x[cut:], y[cut:]
    elif split == "test":
        eval_x, eval_y = x_test, y_test
    else:
        raise SystemExit(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    train = TensorDataset(_floats(x[:cut]), _labels(y[:cut]))
    evaluated = TensorDataset(_floats(eval_x), _labels(eval_y))
    return Data(
        train=DataLoader(train, batch_size=batch_size, shuffle=True),
        evaluate=DataLoader(evaluated, batch_size=256),
        features=int(x.shape[1]),
        classes=int(y.max()) + 1,
    )


def pretrained(model: nn.Module, path: str | None, train: Callable[[], None], seed: int) -> None:
    """Load ``model``'s weights from ``path`` if there, else ``train()`` it and save them.

    Stands in for the pretrained checkpoint a real user starts from; the bench shares
    it between the methods of one seed so they compress the very same model. ``{seed}``
    in ``path`` is replaced by the seed.
    """
    path = path.replace("{seed}", str(seed)) if path else None
    if path and Path(path).exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return
    train()
    if path:
        _atomic_save(lambda f: torch.save(model.state_dict(), f), Path(path))


def add_recovery_args(parser: argparse.ArgumentParser) -> None:
    """``--optimizer``, ``--lr`` and ``--recovery-seed`` of the recovery (pretraining always
    uses Adam, seeded by ``--seed``)."""
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=OPTIMIZERS[0], help="recovery optimizer"
    )
    parser.add_argument(
        "--lr", type=float, help="recovery learning rate (default: 1e-3 Adam, 1e-2 SGD)"
    )
    parser.add_argument(
        "--recovery-seed",
        type=int,
        help="seed of the recovery's randomness (batches, pruning draws) after the reference "
        "is trained or loaded (default: --seed + 1)",
    )


def recovery_seed(args: argparse.Namespace) -> int:
    """Another recovery seed gives the same reference another recovery: the noise floor."""
    seed: int = args.seed + 1 if args.recovery_seed is None else args.recovery_seed
    return seed


def optimizer_spec(args: argparse.Namespace) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The recovery optimizer's class and keyword arguments (NNI traces the class)."""
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if args.optimizer == "sgd":
        return torch.optim.SGD, {"lr": lr, "momentum": SGD_MOMENTUM}
    return torch.optim.Adam, {"lr": lr}


def recovery_optimizer(
    args: argparse.Namespace,
    parameters: Iterable[nn.Parameter],
    wrap: Callable[[type[torch.optim.Optimizer]], Any] | None = None,
) -> torch.optim.Optimizer:
    """The recovery optimizer over ``parameters``; ``wrap`` (``nni.trace``) wraps its class."""
    optimizer_class, options = optimizer_spec(args)
    make = optimizer_class if wrap is None else wrap(optimizer_class)
    optimizer: torch.optim.Optimizer = make(parameters, **options)
    return optimizer


def train(model: nn.Module, loader: DataLoader, criterion, optimizer, epochs: int) -> None:
    """The ordinary loop: forward, the criterion, backward, step."""
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            criterion(model(inputs), targets).backward()
            optimizer.step()


def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Accuracy and mean cross-entropy in eval mode without gradients."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for inputs, targets in loader:
            outputs = model(inputs)
            loss_sum += nn.functional.cross_entropy(outputs, targets, reduction="sum").item()
            correct += (outputs.argmax(dim=1) == targets).sum().item()
            total += len(targets)
    return correct / total, loss_sum / total


def _arrays(dataset: str, data_dir: str | None) -> tuple[np.ndarray, ...]:
    if dataset not in DATASETS:
        raise SystemExit(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    cached = Path(data_dir) / f"{dataset}.npz" if data_dir else None
    if cached is not None and cached.exists():
        with np.load(cached, allow_pickle=False) as stored:
            return tuple(stored[k] for k in ("x", "y", "x_test", "y_test"))
    arrays = dataset_arrays(dataset)
    if cached is not None:
        x, y, x_test, y_test = arrays
        _atomic_save(lambda f: np.savez(f, x=x, y=y, x_test=x_test, y_test=y_test), cached)
    return arrays


def _floats(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _atomic_save(write: Callable[[BinaryIO], None], path: Path) -> None:
    """Write through a temporary file, so a parallel or interrupted run never reads half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
