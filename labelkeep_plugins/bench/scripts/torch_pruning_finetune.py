"""Structured pruning of a 1-D CNN or ResNet with torch-pruning, then fine-tuning.

A user script the way torch-pruning's README shows: a ``MetaPruner`` with a magnitude
importance, ``pruner.step()``, then an ordinary training loop to recover the accuracy,
and a final evaluation. It knows nothing of labelkeep; ``labelkeep run`` adds the loss.

    python torch_pruning_finetune.py --dataset mnist1d --seed 0 --epochs 6 --width 64 --arch cnn
"""

from __future__ import annotations

import argparse

import torch
import torch_pruning as tp
from _benchdata import (
    DATASETS,
    SPLITS,
    add_recovery_args,
    evaluate,
    load_data,
    pretrained,
    recovery_optimizer,
    recovery_seed,
    train,
)
from torch import nn


class Net(nn.Module):
    """Three conv blocks (two strided) and a linear classifier over 1-D signals."""

    def __init__(self, width: int, length: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(width * ((length + 3) // 4), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


class Residual(nn.Module):
    """Two conv-BN layers with an identity shortcut (torch-pruning prunes both ends together)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.BatchNorm1d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResNet(nn.Module):
    """A stem, two residual blocks with a strided conv between them, and a linear head."""

    def __init__(self, width: int, length: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            Residual(width),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            Residual(width),
        )
        self.classifier = nn.Linear(width * ((length + 1) // 2), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


ARCHITECTURES = {"cnn": Net, "resnet": ResNet}


def fit(model: nn.Module, loader, epochs: int, optimizer: torch.optim.Optimizer) -> None:
    """Cross-entropy and the given optimizer, the way torch-pruning's examples fine-tune."""
    train(model, loader, nn.CrossEntropyLoss(), optimizer, epochs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="mnist1d")
    parser.add_argument("--split", choices=SPLITS, default="test", help="evaluated split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="cnn")
    parser.add_argument("--width", type=int, default=64, help="channels per conv layer")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs after pruning")
    parser.add_argument("--pruning-ratio", type=float, default=0.8, help="channels removed")
    add_recovery_args(parser)
    parser.add_argument(
        "--pretrained", help="checkpoint to load, or to write after training ({seed}: the seed)"
    )
    parser.add_argument("--data-dir", help="folder caching the data set as .npz")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_data(args.dataset, args.split, args.data_dir)
    torch.manual_seed(args.seed)
    model = ARCHITECTURES[args.arch](args.width, data.features, data.classes)

    def pretrain() -> None:
        fit(model, data.train, args.pretrain_epochs, torch.optim.Adam(model.parameters(), 3e-3))

    pretrained(model, args.pretrained, pretrain, args.seed)
    torch.manual_seed(recovery_seed(args))  # the same batches whether trained or loaded
    accuracy, _ = evaluate(model, data.evaluate)
    print(f"pretrained: {args.split} accuracy {accuracy:.4f}")

    example_inputs = torch.randn(1, data.features)
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=args.pruning_ratio,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    print(f"pruned: params {base_params:.0f} -> {params:.0f}, MACs {base_macs:.0f} -> {macs:.0f}")

    fit(model, data.train, args.epochs, recovery_optimizer(args, model.parameters()))
    accuracy, loss = evaluate(model, data.evaluate)
    print(f"fine-tuned: {args.split} accuracy {accuracy:.4f}, loss {loss:.4f}")


if __name__ == "__main__":
    main()
