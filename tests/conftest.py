"""Shared fixtures: tiny classifiers and data that need no download."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labelkeep_plugins import plugins


class TinyCNN(nn.Module):
    """A 1-D CNN with batch norm, the shape of a compressed-then-recovered classifier."""

    def __init__(self, channels: int = 8, classes: int = 5, length: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels * length, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x.unsqueeze(1))))
        return self.fc(h.flatten(1))


def perturbed(model: nn.Module, scale: float = 0.1, seed: int = 1) -> nn.Module:
    """A copy of ``model`` with noise on its weights: a stand-in for a compressed student."""
    student = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return student


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with a plugin manager that re-reads the environment."""
    for name in (
        "LABELKEEP_PLUGINS",
        "LABELKEEP_DISABLE_PLUGIN_AUTOLOAD",
        "LABELKEEP_DISABLED_ADAPTERS",
        "LABELKEEP_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


@pytest.fixture
def reference_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def student(reference_model: nn.Module) -> nn.Module:
    return perturbed(reference_model)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(12, 16, generator=generator), torch.randint(0, 5, (12,), generator=generator)
