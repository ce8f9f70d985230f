"""torch-pruning under DistributedDataParallel: prune a 1-D CNN on MNIST-1D, fine-tune on 2 ranks.

A plain user script for ``torchrun`` on CPU (gloo backend). Every rank trains the
same model (standing in for loading pretrained weights), prunes it with the same
``MetaPruner`` (the weights are identical on all ranks, so are the removed
channels), wraps the pruned model in DDP again and fine-tunes it.

    torchrun --nproc_per_node 2 examples/torchrun_torch_pruning.py
    labelkeep-run --report report.json torchrun --nproc_per_node 2 \
        examples/torchrun_torch_pruning.py      # report.rank0.json, report.rank1.json
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.distributed as dist
import torch_pruning as tp
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


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


def train(model, loader, sampler, epochs, lr, first_epoch=0):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(first_epoch, first_epoch + epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()


def evaluate(model, loader):
    """Accuracy and mean loss over the whole test set (each rank scores its shard)."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    totals = torch.zeros(3)
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            totals += torch.tensor(
                [(out.argmax(1) == y).sum().item(), len(y), criterion(out, y).item()]
            )
    dist.all_reduce(totals)
    return (totals[0] / totals[1]).item(), (totals[2] / totals[1]).item()


def run(args):
    rank = dist.get_rank()
    torch.manual_seed(args.seed)
    data = make_dataset(get_dataset_args())
    train_set = TensorDataset(
        torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.int64)
    )
    test_set = TensorDataset(
        torch.tensor(data["x_test"], dtype=torch.float32),
        torch.tensor(data["y_test"], dtype=torch.int64),
    )
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=64, sampler=sampler)
    test_loader = DataLoader(
        test_set, batch_size=256, sampler=DistributedSampler(test_set, shuffle=False)
    )

    model = Net()
    ddp_model = DDP(model)
    train(ddp_model, train_loader, sampler, args.pretrain_epochs, args.lr)
    accuracy, _ = evaluate(ddp_model, test_loader)
    if rank == 0:
        print(f"pretrained: accuracy {accuracy:.4f}")

    example_inputs = torch.randn(1, 40)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=args.pruning_ratio,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    if rank == 0:
        print(f"pruned: params {params:.0f}, MACs {macs:.0f}")

    ddp_model = DDP(model)  # wrap again: the pruned model has new parameters
    train(ddp_model, train_loader, sampler, args.epochs, args.lr, args.pretrain_epochs)
    accuracy, loss = evaluate(ddp_model, test_loader)
    if rank == 0:
        print(f"fine-tuned: test accuracy {accuracy:.4f}, test loss {loss:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs after pruning")
    parser.add_argument("--pruning-ratio", type=float, default=0.8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    try:
        run(args)
        gc.collect()  # free the DDP wrappers (they sit in reference cycles) while gloo is up
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
