"""Low-bit quantization-aware training of a small CNN on scikit-learn's digits, with Brevitas.

A plain user script: train a float CNN (standing in for a pretrained model),
quantize it layer by layer with Brevitas' ``layerwise_quantize`` to 2-bit
weights and 4-bit activations, calibrate the activation scales, fine-tune
(QAT) with ``nn.CrossEntropyLoss``, and evaluate on the test split.

    python examples/brevitas_qat_digits.py
    labelkeep-run python examples/brevitas_qat_digits.py   # same script, label-preserving QAT
"""

from __future__ import annotations

import argparse

import brevitas.nn as qnn
import torch
from brevitas.graph.calibrate import calibration_mode
from brevitas.graph.quantize import layerwise_quantize
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Int32Bias
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def load_data(batch_size: int) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return train, test


def low_bit_layer_map(weight_bits: int, act_bits: int) -> dict:
    """Brevitas' layerwise map for Conv2d/Linear, with the bit widths set through its kwargs."""
    common = {
        "input_quant": Int8ActPerTensorFloat,
        "input_bit_width": act_bits,
        "weight_quant": Int8WeightPerTensorFloat,
        "weight_bit_width": weight_bits,
        "bias_quant": Int32Bias,
        "return_quant_tensor": False,
    }
    return {nn.Conv2d: (qnn.QuantConv2d, common), nn.Linear: (qnn.QuantLinear, common)}


def train(model, loader, criterion, optimizer, epochs: int) -> None:
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()


def evaluate(model, loader, criterion) -> tuple[float, float]:
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for inputs, targets in loader:
            outputs = model(inputs)
            loss_sum += criterion(outputs, targets).item() * len(targets)
            correct += (outputs.argmax(dim=1) == targets).sum().item()
            total += len(targets)
    return correct / total, loss_sum / total


def calibrate(model, loader) -> None:
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        for inputs, _ in loader:
            model(inputs)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6, help="QAT epochs")
    parser.add_argument("--lr", type=float, default=1e-3, help="QAT learning rate")
    parser.add_argument("--weight-bits", type=int, default=2)
    parser.add_argument("--act-bits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_loader, test_loader = load_data(batch_size=64)
    criterion = nn.CrossEntropyLoss()

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train(model, train_loader, criterion, optimizer, args.float_epochs)
    float_accuracy, _ = evaluate(model, test_loader, criterion)
    print(f"float model: test accuracy {float_accuracy:.4f}")

    compute_layer_map = low_bit_layer_map(args.weight_bits, args.act_bits)
    model = layerwise_quantize(model, compute_layer_map=compute_layer_map)
    calibrate(model, train_loader)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train(model, train_loader, criterion, optimizer, args.epochs)
    accuracy, loss = evaluate(model, test_loader, criterion)
    bits = f"W{args.weight_bits}A{args.act_bits}"
    print(f"{bits} QAT model: test accuracy {accuracy:.4f}, test loss {loss:.4f}")


if __name__ == "__main__":
    main()
