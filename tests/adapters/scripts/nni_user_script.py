"""A tiny NNI user script, written as NNI's docs show; the NNI adapter tests' common ground.

Run as a script (the runner tests), it trains a "pretrained" tiny CNN, compresses
it with the chosen NNI compressor through a ``TorchEvaluator``, fine-tunes it in
its own loop and evaluates it. Test-only extras: ``--save-before`` saves the
state_dict right before the compressor is built, ``--counts`` writes how many
training steps each phase ran. The in-process tests import it for the same model,
data, evaluator and compressor recipes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import nni
import torch
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from nni.compression.pruning import (
    AGPPruner,
    L1NormPruner,
    LinearPruner,
    MovementPruner,
    SlimPruner,
    TaylorPruner,
)
from nni.compression.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    LsqQuantizer,
    PtqQuantizer,
    QATQuantizer,
)
from torch import nn

CLASSES, LENGTH, BATCH = 5, 16, 16


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width * LENGTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


def make_data(samples: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (samples,), generator=generator)
    x = torch.randn(samples, LENGTH, generator=generator) + y[:, None].float() * 0.5
    return x, y


X, Y = make_data()
STEPS = {"nni": 0, "own": 0}
LAST: dict[str, torch.Tensor] = {}


def batches():
    while True:
        for start in range(0, len(Y), BATCH):
            yield X[start : start + BATCH], Y[start : start + BATCH]


def training_step(batch, model):
    x, y = batch
    LAST["x"], LAST["y"], LAST["out"] = x, y, model(x)
    return F.cross_entropy(LAST["out"], y)


def training_func(
    model,
    optimizers,
    training_step,
    lr_schedulers=None,
    max_steps=None,
    max_epochs=None,
    on_loss: Callable[[torch.Tensor], None] | None = None,
):
    model.train()
    total = max_steps if max_steps is not None else (max_epochs or 1) * (len(Y) // BATCH)
    for _, batch in zip(range(total), batches(), strict=False):
        optimizers.zero_grad()
        loss = training_step(batch, model)
        if on_loss is not None:
            on_loss(loss)
        loss.backward()
        optimizers.step()
        STEPS["nni"] += 1


def evaluating_func(model: nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(X)
        F.cross_entropy(logits, Y)
        return (logits.argmax(1) == Y).float().mean().item()


def make_evaluator(model: nn.Module, training=training_func, parameters=None) -> TorchEvaluator:
    params = model.parameters() if parameters is None else parameters
    optimizer = nni.trace(torch.optim.SGD)(params, lr=0.05)
    return TorchEvaluator(
        training, optimizer, training_step, evaluating_func=evaluating_func, dummy_input=X[:4]
    )


def own_finetune(model: nn.Module, steps: int = 3) -> None:
    """The user's own loop after compress(): nn.CrossEntropyLoss, a fresh optimizer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _, (x, y) in zip(range(steps), batches(), strict=False):
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        STEPS["own"] += 1


CONV = [{"op_types": ["Conv1d"], "sparse_ratio": 0.5}]
QUANT = [
    {
        "op_types": ["Conv1d", "Linear"],
        "target_names": ["_input_", "weight", "_output_"],
        "quant_dtype": "int8",
        "quant_scheme": "affine",
    }
]
DOREFA = [
    {
        "op_types": ["Conv1d", "Linear"],
        "target_names": ["_input_", "weight"],
        "quant_dtype": "int8",
        "quant_scheme": "affine",
    }
]
BNN = [{"op_types": ["Conv1d", "Linear"], "target_names": ["weight"], "quant_dtype": "int8"}]

# name -> (build the compressor, compress() arguments, class whose __init__ first sees the model)
Recipe = tuple[Callable[[nn.Module, Any], Any], tuple[Any, ...], str]
COMPRESSORS: dict[str, Recipe] = {
    "taylor": (lambda m, e: TaylorPruner(m, CONV, e, training_steps=3), (), "TaylorPruner"),
    "slim": (
        lambda m, e: SlimPruner(
            m, [{"op_types": ["BatchNorm1d"], "sparse_ratio": 0.5}], e, training_steps=3
        ),
        (),
        "SlimPruner",
    ),
    "agp": (
        lambda m, e: AGPPruner(TaylorPruner(m, CONV, e, training_steps=2), 2, 2),
        (4, None),
        "TaylorPruner",
    ),
    "linear": (
        lambda m, e: LinearPruner(L1NormPruner(m, CONV, e), 2, 2),
        (4, None),
        "L1NormPruner",
    ),
    "movement": (
        lambda m, e: MovementPruner(
            m,
            [{"op_types": ["Linear", "Conv1d"], "sparse_ratio": 0.5}],
            e,
            warmup_step=1,
            cooldown_begin_step=3,
        ),
        (4, None),
        "MovementPruner",
    ),
    "qat": (lambda m, e: QATQuantizer(m, QUANT, e), (4, None), "QATQuantizer"),
    "lsq": (lambda m, e: LsqQuantizer(m, QUANT, e), (4, None), "LsqQuantizer"),
    "dorefa": (lambda m, e: DoReFaQuantizer(m, DOREFA, e), (4, None), "DoReFaQuantizer"),
    "bnn": (lambda m, e: BNNQuantizer(m, BNN, e), (4, None), "BNNQuantizer"),
    "ptq": (lambda m, e: PtqQuantizer(m, QUANT, e), (None, 1), "PtqQuantizer"),
}


def pretrained(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _, (x, y) in zip(range(8), batches(), strict=False):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compressor", default="taylor", choices=sorted(COMPRESSORS))
    parser.add_argument("--save-before")
    parser.add_argument("--counts")
    parser.add_argument("--speedup", action="store_true", help="ModelSpeedup, as NNI's docs")
    args = parser.parse_args(argv)
    model = pretrained()
    if args.save_before:
        torch.save(model.state_dict(), args.save_before)
    build, compress_args, _ = COMPRESSORS[args.compressor]
    compressor = build(model, make_evaluator(model))
    result = compressor.compress(*compress_args)
    compressor.unwrap_model()
    if args.speedup:
        from nni.compression.speedup import ModelSpeedup

        ModelSpeedup(model, X[:4], result[1]).speedup_model()  # as NNI's docs write it
    own_finetune(model)
    print(f"accuracy {evaluating_func(model):.3f}")
    if args.counts:
        with open(args.counts, "w", encoding="utf-8") as handle:
            json.dump(STEPS, handle)


if __name__ == "__main__":
    main()
