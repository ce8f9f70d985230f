"""Test-only: the Brevitas example's own pipeline, saving the float model before quantization.

``python brevitas_example_save_before.py SAVE_PATH`` trains the example's float CNN
briefly, saves its state_dict to SAVE_PATH, then quantizes, calibrates and fine-tunes
it exactly as ``examples/brevitas_qat_digits.py`` does, and prints the number of
QAT steps as JSON on the last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
import brevitas_qat_digits as example


def main() -> None:
    save_path = sys.argv[1]
    torch.manual_seed(0)
    train_loader, test_loader = example.load_data(batch_size=128)
    criterion = nn.CrossEntropyLoss()
    model = example.DigitsCNN()
    example.train(model, train_loader, criterion, torch.optim.Adam(model.parameters(), 3e-3), 1)
    torch.save(model.state_dict(), save_path)
    model = example.layerwise_quantize(
        model, compute_layer_map=example.low_bit_layer_map(weight_bits=3, act_bits=4)
    )
    example.calibrate(model, train_loader)
    example.train(model, train_loader, criterion, torch.optim.Adam(model.parameters(), 1e-3), 1)
    accuracy, _ = example.evaluate(model, test_loader, criterion)
    print(json.dumps({"qat_steps": len(train_loader), "accuracy": accuracy}))


if __name__ == "__main__":
    main()
