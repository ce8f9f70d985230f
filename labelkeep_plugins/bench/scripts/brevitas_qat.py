"""Low-bit QAT of an MLP or a 1-D CNN with Brevitas (2-4 bit weights and activations).

A user script: train a float model (standing in for a pretrained one), quantize it layer by
layer with Brevitas' ``layerwise_quantize`` (every linear and conv layer's weights and input
activations at low bit width), calibrate the activation scales, fine-tune (QAT) with
``nn.CrossEntropyLoss`` and evaluate. It knows nothing of labelkeep; ``labelkeep run`` adds
the loss.

    python brevitas_qat.py --dataset digits --seed 0 --epochs 6 --width 64 --depth 2
"""

from __future__ import annotations

import argparse

import brevitas.nn as qnn
import torch
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
from brevitas.graph.calibrate import calibration_mode
from brevitas.graph.quantize import layerwise_quantize
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Int32Bias
from torch import nn


def mlp(features: int, width: int, depth: int, classes: int) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units with batch norm and ReLU."""
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [nn.Linear(features if index == 0 else width, width), nn.BatchNorm1d(width)]
        layers.append(nn.ReLU())
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def cnn(features: int, width: int, depth: int, classes: int) -> nn.Sequential:
    """A 1-D CNN: ``depth`` conv blocks of ``width`` channels (all but the first strided)."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, features))]
    length = features
    for index in range(depth):
        stride = 1 if index == 0 else 2
        layers.append(nn.Conv1d(1 if index == 0 else width, width, 3, stride=stride, padding=1))
        layers += [nn.BatchNorm1d(width), nn.ReLU()]
        length = (length - 1) // stride + 1
    layers += [nn.Flatten(), nn.Linear(width * length, classes)]
    return nn.Sequential(*layers)


ARCHITECTURES = {"mlp": mlp, "cnn": cnn}


def low_bit_layer_map(weight_bits: int, act_bits: int) -> dict:
    """Brevitas' layerwise map for Linear and Conv1d, with the bit widths set through kwargs."""
    common = {
        "input_quant": Int8ActPerTensorFloat,
        "input_bit_width": act_bits,
        "weight_quant": Int8WeightPerTensorFloat,
        "weight_bit_width": weight_bits,
        "bias_quant": Int32Bias,
        "return_quant_tensor": False,
    }
    return {nn.Linear: (qnn.QuantLinear, common), nn.Conv1d: (qnn.QuantConv1d, common)}


def calibrate(model: nn.Module, loader) -> None:
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for inputs, _ in loader:
            model(inputs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--split", choices=SPLITS, default="test", help="evaluated split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="mlp")
    parser.add_argument("--width", type=int, default=64, help="units (channels) per layer")
    parser.add_argument("--depth", type=int, default=2, help="hidden (conv) layers")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="QAT epochs")
    add_recovery_args(parser)
    parser.add_argument("--weight-bits", type=int, default=2)
    parser.add_argument("--act-bits", type=int, default=4)
    parser.add_argument(
        "--pretrained", help="checkpoint to load, or to write after training ({seed}: the seed)"
    )
    parser.add_argument("--data-dir", help="folder caching the data set as .npz")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_data(args.dataset, args.split, args.data_dir)
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(args.seed)
    model = ARCHITECTURES[args.arch](data.features, args.width, args.depth, data.classes)

    def pretrain() -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        train(model, data.train, criterion, optimizer, args.pretrain_epochs)

    pretrained(model, args.pretrained, pretrain, args.seed)
    torch.manual_seed(recovery_seed(args))  # the same batches whether trained or loaded
    accuracy, _ = evaluate(model, data.evaluate)
    print(f"float model: {args.split} accuracy {accuracy:.4f}")

    layer_map = low_bit_layer_map(args.weight_bits, args.act_bits)
    model = layerwise_quantize(model, compute_layer_map=layer_map)
    calibrate(model, data.train)
    train(model, data.train, criterion, recovery_optimizer(args, model.parameters()), args.epochs)
    accuracy, loss = evaluate(model, data.evaluate)
    bits = f"W{args.weight_bits}A{args.act_bits}"
    print(f"{bits} QAT model: {args.split} accuracy {accuracy:.4f}, loss {loss:.4f}")


if __name__ == "__main__":
    main()
