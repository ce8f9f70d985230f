"""Test-only: a hand-built brevitas.nn model trained by a plain loop (imports only brevitas.nn).

``python brevitas_hand_built.py SAVE_PATH STEPS`` saves the model's state_dict before
its first training step, trains STEPS steps with nn.CrossEntropyLoss, evaluates, and
prints the step count and the brevitas modules imported as JSON on the last line.
"""

from __future__ import annotations

import json
import sys

import brevitas.nn as qnn
import torch
from torch import nn


class QuantNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=3)
        self.relu = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(4 * 36, 5, bias=True, weight_bit_width=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(self.inp(x))).flatten(1))


def main() -> None:
    save_path, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 1, 6, 6), torch.randint(0, 5, (64,))
    model = QuantNet()
    torch.save(model.state_dict(), save_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for step in range(steps):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        optimizer.zero_grad()
        criterion(model(inputs[batch]), targets[batch]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        criterion(model(inputs), targets)
    imported = sorted(name for name in sys.modules if name.startswith("brevitas.graph"))
    print(json.dumps({"steps": steps, "brevitas_graph_modules": imported}))


if __name__ == "__main__":
    main()
