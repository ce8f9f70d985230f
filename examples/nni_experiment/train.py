"""Prune a 1-D CNN on MNIST-1D with torch-pruning, fine-tune it, evaluate it: a plain user script.

Nothing in it knows about labelkeep or NNI. Run as an NNI trial through
``labelkeep-run python train.py`` (see config.yml), labelkeep's torch-pruning adapter
snapshots the reference when ``MetaPruner`` is built, the fine-tuning loop trains
against the label-preserving loss with the weights NNI proposed, and the evaluation at
the end is what NNI receives (mismatches with the reference, to minimize).

The pretrained weights stand in for a user's checkpoint: the first run trains them
(a few seconds) and saves ``pretrained.pt`` beside this script; later trials load it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch_pruning as tp
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CHECKPOINT = Path(__file__).with_name("pretrained.pt")


class Net(nn.Module):
    """Two conv blocks and a linear classifier over 40-sample signals."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(width * 20, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> None:
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    criterion = nn.CrossEntropyLoss()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            criterion(out, y)  # the usual test loss; it also shows labelkeep the labels
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def pretrained(loader: DataLoader, epochs: int, lr: float) -> Net:
    """Load the checkpoint, or make it (written atomically: trials may run side by side)."""
    model = Net()
    if CHECKPOINT.exists():
        model.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
        return model
    train(model, loader, epochs, lr)
    partial = CHECKPOINT.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    os.replace(partial, CHECKPOINT)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs after pruning")
    parser.add_argument("--pruning-ratio", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = make_dataset(get_dataset_args())
    train_set = TensorDataset(
        torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.int64)
    )
    test_set = TensorDataset(
        torch.tensor(data["x_test"], dtype=torch.float32),
        torch.tensor(data["y_test"], dtype=torch.int64),
    )
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)

    model = pretrained(train_loader, args.pretrain_epochs, args.lr)
    print(f"pretrained: accuracy {evaluate(model, test_loader):.4f}")

    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 40),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=args.pruning_ratio,
        ignored_layers=[model.classifier],
    )
    pruner.step()

    train(model, train_loader, args.epochs, args.lr)
    print(f"fine-tuned: test accuracy {evaluate(model, test_loader):.4f}")


if __name__ == "__main__":
    main()
