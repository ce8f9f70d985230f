"""An end-to-end demo of the drop-in loss: prune a trained classifier, recover it, count mismatches.

For each seed: train a reference 1-D CNN, prune 90% of its weights by magnitude
(``torch.nn.utils.prune``, so no compression framework is needed), then recover
the pruned copy twice from the same start and batch order: once with plain
cross-entropy, once with :class:`LabelPreservingLoss`. Both are compared with the
reference on the held-out split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from labelkeep_plugins.experiments.data import Split, load_dataset
from labelkeep_plugins.injector.dropin import LabelPreservingLoss
from labelkeep_plugins.metrics import AgreementReport, agreement
from labelkeep_plugins.reference.snapshot import snapshot_reference


class Conv1dClassifier(nn.Module):
    """A small 1-D CNN for sequences of ``features`` values."""

    def __init__(self, features: int, classes: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.head = nn.Linear(width * ((features + 1) // 2), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.unsqueeze(1)).flatten(1))


@dataclass(frozen=True)
class DemoSettings:
    dataset: str = "mnist1d"
    seeds: tuple[int, ...] = (0, 1, 2)
    reference_epochs: int = 25
    recovery_epochs: int = 6
    sparsity: float = 0.7
    batch_size: int = 64
    learning_rate: float = 1e-3


LossFactory = Callable[[nn.Module, nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def train(
    model: nn.Module,
    split: Split,
    epochs: int,
    settings: DemoSettings,
    seed: int,
    make_loss: LossFactory | None = None,
    reference: nn.Module | None = None,
) -> None:
    """A plain training loop, as a user would write it; only the criterion differs."""
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.CrossEntropyLoss()
    if make_loss is not None and reference is not None:
        criterion = make_loss(reference, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(split.y_train), generator=order)
        for start in range(0, len(permutation), settings.batch_size):
            index = permutation[start : start + settings.batch_size]
            optimizer.zero_grad()
            loss = criterion(model(split.x_train[index]), split.y_train[index])
            loss.backward()
            optimizer.step()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x)


def prune_weights(model: nn.Module, sparsity: float) -> nn.Module:
    """Global magnitude pruning of every conv and linear weight; masks stay during recovery."""
    targets = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv1d | nn.Linear)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def run_seed(
    split: Split,
    settings: DemoSettings,
    seed: int,
    weights: Mapping[str, float] | None = None,
    temperature: float | None = None,
) -> dict[str, AgreementReport]:
    """Reference, pruned copy, then plain and labelkeep recovery from the same start."""
    torch.manual_seed(seed)
    model = Conv1dClassifier(split.features, split.classes)
    train(model, split, settings.reference_epochs, settings, seed)
    reference = snapshot_reference(model)

    def labelkeep_loss(ref: nn.Module, student: nn.Module) -> LabelPreservingLoss:
        return LabelPreservingLoss(ref, student=student, weights=weights, temperature=temperature)

    reference_logits = predict(reference, split.x_test)
    results: dict[str, AgreementReport] = {}
    for method, factory in (("plain", None), ("labelkeep", labelkeep_loss)):
        student = prune_weights(copy.deepcopy(model), settings.sparsity)
        torch.manual_seed(seed + 1000)
        train(student, split, settings.recovery_epochs, settings, seed + 1, factory, reference)
        results[method] = agreement(reference_logits, predict(student, split.x_test), split.y_test)
    return results


def run_demo(
    settings: DemoSettings,
    weights: Mapping[str, float] | None = None,
    temperature: float | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, list[AgreementReport]]:
    """Every seed, printing one line per seed and a summary."""
    split = load_dataset(settings.dataset)
    collected: dict[str, list[AgreementReport]] = {"plain": [], "labelkeep": []}
    for seed in settings.seeds:
        results = run_seed(split, settings, seed, weights, temperature)
        for method, report in results.items():
            collected[method].append(report)
        plain, kept = results["plain"], results["labelkeep"]
        echo(
            f"seed {seed}: reference accuracy {plain.reference_accuracy:.3f} | "
            f"plain: acc {plain.compressed_accuracy:.3f} mismatches {plain.mismatches} "
            f"negative flips {plain.negative_flips} | labelkeep: acc "
            f"{kept.compressed_accuracy:.3f} mismatches {kept.mismatches} "
            f"negative flips {kept.negative_flips}"
        )
    echo(summary_table(collected, settings))
    return collected


def summary_table(collected: Mapping[str, list[AgreementReport]], settings: DemoSettings) -> str:
    """Mean ± spread per method and the reduction factors, as ``labelkeep compare`` prints them."""
    from labelkeep_plugins.experiments.compare import format_table
    from labelkeep_plugins.experiments.objective import measurement_from_report

    results = {
        method: [
            measurement_from_report({"agreement": r.to_dict()}, source=method) for r in reports
        ]
        for method, reports in collected.items()
    }
    title = (
        f"{settings.dataset}, {settings.sparsity:.0%} of weights pruned, "
        f"{settings.recovery_epochs} recovery epochs, test split"
    )
    return format_table(results, title)
