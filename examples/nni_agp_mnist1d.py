"""Prune a 1-D CNN on MNIST-1D with NNI's AGP + Taylor pruner, speed it up and fine-tune it.

A user script written the way NNI 3.x's pruning quickstart shows: an ``nni.trace``d
optimizer, a ``TorchEvaluator(training_func, optimizer, training_step)``, a scheduled
pruner (``AGPPruner`` around ``TaylorPruner``), ``compress()``, ``unwrap_model()``,
``ModelSpeedup`` and then the user's own fine-tuning and evaluation. It trains its own
"pretrained" model first (a real script would load weights). MNIST-1D is generated
locally by the ``mnist1d`` package; nothing is downloaded.

    python examples/nni_agp_mnist1d.py
    labelkeep-run --report report.json python examples/nni_agp_mnist1d.py
"""

from __future__ import annotations

import argparse

import nni
import torch
import torch.nn.functional as F
from mnist1d.data import get_dataset_args, make_dataset
from nni.compression import TorchEvaluator
from nni.compression.pruning import AGPPruner, TaylorPruner
from nni.compression.speedup import ModelSpeedup
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small 1-D CNN for MNIST-1D's 40-sample sequences."""

    def __init__(self, width: int = 32, classes: int = 10, length: int = 40) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width * (length // 2), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def load_data(batch_size: int) -> tuple[DataLoader, DataLoader, torch.Tensor]:
    data = make_dataset(get_dataset_args())
    train = TensorDataset(
        torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.long)
    )
    test = TensorDataset(
        torch.tensor(data["x_test"], dtype=torch.float32),
        torch.tensor(data["y_test"], dtype=torch.long),
    )
    dummy_input = train.tensors[0][:8]
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(test, batch_size=500),
        dummy_input,
    )


def training_step(batch, model):
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_training_func(train_loader: DataLoader):
    """The ``training_func`` NNI's TorchEvaluator calls (and this script reuses)."""

    def training_model(
        model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None
    ):
        model.train()
        steps = 0
        for _ in range(max_epochs or 1_000_000):
            for batch in train_loader:
                optimizer.zero_grad()
                loss = training_step(batch, model)
                loss.backward()
                optimizer.step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    return
            if lr_scheduler is not None:
                lr_scheduler.step()

    return training_model


def evaluate(model: nn.Module, test_loader: DataLoader) -> tuple[float, float]:
    model.eval()
    correct, total_loss, total = 0, 0.0, 0
    with torch.no_grad():
        for x, y in test_loader:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=1) == y).sum().item()
            total += len(y)
    return correct / total, total_loss / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs after pruning")
    parser.add_argument(
        "--prune-steps", type=int, default=25, help="training steps between two AGP pruning rounds"
    )
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_loader, test_loader, dummy_input = load_data(batch_size=64)
    training_model = make_training_func(train_loader)

    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    training_model(model, optimizer, training_step, max_epochs=args.pretrain_epochs)
    accuracy, loss = evaluate(model, test_loader)
    print(f"pretrained: test accuracy {accuracy:.4f}, test loss {loss:.4f}")

    # Prune the convolutions' output channels gradually, as NNI's pruning quickstart does.
    config_list = [{"op_types": ["Conv1d"], "sparse_ratio": args.sparsity}]
    traced_optimizer = nni.trace(torch.optim.Adam)(model.parameters(), lr=1e-3)
    evaluator = TorchEvaluator(
        training_model, traced_optimizer, training_step, dummy_input=dummy_input
    )
    total_times = 4
    taylor = TaylorPruner(model, config_list, evaluator, training_steps=args.prune_steps)
    pruner = AGPPruner(taylor, interval_steps=args.prune_steps, total_times=total_times)
    _, masks = pruner.compress(max_steps=args.prune_steps * total_times, max_epochs=None)
    pruner.unwrap_model()

    # NNI's concrete tracer fails on torch 2.13 ('NoneType' object has no attribute
    # 'startswith'), so pass a torch.fx graph through ModelSpeedup's graph_module argument.
    graph_module = torch.fx.symbolic_trace(model)
    ModelSpeedup(model, dummy_input, masks, graph_module=graph_module).speedup_model()
    print(
        f"pruned {args.sparsity:.0%} of the conv channels: "
        f"{sum(p.numel() for p in model.parameters())} parameters left"
    )

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    training_model(model, optimizer, training_step, max_epochs=args.epochs)
    accuracy, loss = evaluate(model, test_loader)
    print(f"fine-tuned: test accuracy {accuracy:.4f}, test loss {loss:.4f}")


if __name__ == "__main__":
    main()
