"""Scheduled pruning with NNI (AGP around Taylor) through a TorchEvaluator, then fine-tuning.

A user script the way NNI 3.x's pruning quickstart shows: an ``nni.trace``d optimizer, a
``TorchEvaluator(training_func, optimizer, training_step)``, ``AGPPruner`` around a
``TaylorPruner``, ``compress()``, ``unwrap_model()``, ``ModelSpeedup``, then the user's own
fine-tuning and evaluation. It knows nothing of labelkeep; ``labelkeep run`` adds the loss.

    python nni_agp_finetune.py --dataset mnist1d --seed 0 --epochs 6 --width 32
"""

from __future__ import annotations

import argparse

import nni
import torch
import torch.nn.functional as F
from _benchdata import (
    DATASETS,
    SPLITS,
    add_recovery_args,
    evaluate,
    load_data,
    pretrained,
    recovery_optimizer,
    recovery_seed,
)
from nni.compression import TorchEvaluator
from nni.compression.pruning import AGPPruner, TaylorPruner
from nni.compression.speedup import ModelSpeedup
from torch import nn

PRUNING_ROUNDS = 4


class Net(nn.Module):
    """Two conv blocks (one strided) and a linear classifier over 1-D signals."""

    def __init__(self, width: int, length: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width * ((length + 1) // 2), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def training_step(batch, model):
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_training_func(loader):
    """The ``training_func`` NNI's TorchEvaluator calls (and this script reuses)."""

    def training_model(
        model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None
    ):
        model.train()
        steps = 0
        for _ in range(max_epochs or 1_000_000):
            for batch in loader:
                optimizer.zero_grad()
                training_step(batch, model).backward()
                optimizer.step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    return
            if lr_scheduler is not None:
                lr_scheduler.step()

    return training_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="mnist1d")
    parser.add_argument("--split", choices=SPLITS, default="test", help="evaluated split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32, help="channels per conv layer")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs after pruning")
    parser.add_argument("--prune-steps", type=int, default=25, help="steps per AGP round")
    parser.add_argument("--sparsity", type=float, default=0.75, help="conv channels removed")
    add_recovery_args(parser)
    parser.add_argument(
        "--pretrained", help="checkpoint to load, or to write after training ({seed}: the seed)"
    )
    parser.add_argument("--data-dir", help="folder caching the data set as .npz")
    return parser.parse_args(argv)


def prune(model: nn.Module, training_model, dummy_input, args: argparse.Namespace) -> None:
    """AGP + Taylor through NNI's TorchEvaluator, unwrap, then speed the masks up."""
    config_list = [{"op_types": ["Conv1d"], "sparse_ratio": args.sparsity}]
    traced_optimizer = recovery_optimizer(args, model.parameters(), wrap=nni.trace)
    evaluator = TorchEvaluator(
        training_model, traced_optimizer, training_step, dummy_input=dummy_input
    )
    taylor = TaylorPruner(model, config_list, evaluator, training_steps=args.prune_steps)
    pruner = AGPPruner(taylor, interval_steps=args.prune_steps, total_times=PRUNING_ROUNDS)
    _, masks = pruner.compress(max_steps=args.prune_steps * PRUNING_ROUNDS, max_epochs=None)
    pruner.unwrap_model()
    # NNI's concrete tracer fails on torch 2.13; torch.fx is NNI's documented alternative.
    graph_module = torch.fx.symbolic_trace(model)
    ModelSpeedup(model, dummy_input, masks, graph_module=graph_module).speedup_model()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_data(args.dataset, args.split, args.data_dir)
    training_model = make_training_func(data.train)
    torch.manual_seed(args.seed)
    model = Net(args.width, data.features, data.classes)

    def pretrain() -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        training_model(model, optimizer, training_step, max_epochs=args.pretrain_epochs)

    pretrained(model, args.pretrained, pretrain, args.seed)
    torch.manual_seed(recovery_seed(args))  # the same batches whether trained or loaded
    accuracy, _ = evaluate(model, data.evaluate)
    print(f"pretrained: {args.split} accuracy {accuracy:.4f}")

    dummy_input = next(iter(data.evaluate))[0][:8]
    prune(model, training_model, dummy_input, args)
    print(f"pruned: {sum(p.numel() for p in model.parameters())} parameters left")

    optimizer = recovery_optimizer(args, model.parameters())
    training_model(model, optimizer, training_step, max_epochs=args.epochs)
    accuracy, loss = evaluate(model, data.evaluate)
    print(f"fine-tuned: {args.split} accuracy {accuracy:.4f}, loss {loss:.4f}")


if __name__ == "__main__":
    main()
