"""Structured pruning of a 1-D CNN on MNIST-1D with torch-pruning, then fine-tuning.

A plain user script, written the way torch-pruning's README shows: build a
``MetaPruner`` with a magnitude importance, call ``pruner.step()``, then recover
the accuracy with an ordinary training loop; with ``--steps N``, prune iteratively
(``iterative_steps=N``: a ``step()`` then ``--epochs`` of fine-tuning, N times). (A
real user would load pretrained weights; here the script trains them first, which
takes a few seconds.)

    python examples/torch_pruning_mnist1d.py
    labelkeep-run --report report.json python examples/torch_pruning_mnist1d.py
    python examples/torch_pruning_mnist1d.py --steps 4 --epochs 3 --pruning-ratio 0.6
"""

from __future__ import annotations

import argparse

import torch
import torch_pruning as tp
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """Three conv blocks and a linear classifier over 40-sample signals."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
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
        self.classifier = nn.Linear(width * 10, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


def train(model, loader, epochs, lr):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()


def evaluate(model, loader):
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    correct, total, loss = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += criterion(out, y).item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return correct / total, loss / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs per step")
    parser.add_argument("--steps", type=int, default=1, help="iterative pruning steps")
    parser.add_argument("--pruning-ratio", type=float, default=0.8)
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

    model = Net()
    train(model, train_loader, args.pretrain_epochs, args.lr)  # stands in for loading weights
    accuracy, _ = evaluate(model, test_loader)
    print(f"pretrained: accuracy {accuracy:.4f}")

    # Prune, as in torch-pruning's README.
    example_inputs = torch.randn(1, 40)
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=args.pruning_ratio,
        iterative_steps=args.steps,
        ignored_layers=[model.classifier],
    )
    for _ in range(args.steps):
        pruner.step()
        train(model, train_loader, args.epochs, args.lr)  # fine-tune to recover the accuracy
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    print(f"pruned: params {base_params:.0f} -> {params:.0f}, MACs {base_macs:.0f} -> {macs:.0f}")

    accuracy, loss = evaluate(model, test_loader)
    print(f"fine-tuned: test accuracy {accuracy:.4f}, test loss {loss:.4f}")


if __name__ == "__main__":
    main()
