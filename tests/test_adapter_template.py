"""The third-party adapter template in examples/ works as documented."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import labelkeep_plugins.zero_code.adapters as adapters_module
from labelkeep_plugins import Config, checksum
from labelkeep_plugins.plugins import get_plugin_manager, load_plugins
from labelkeep_plugins.zero_code.instrument import instrumented

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "adapter_template"


class Pruner:
    """A stand-in for ``mylib.Pruner``: it halves the first layer's output weights."""

    def __init__(self, model: nn.Module) -> None:
        with torch.no_grad():
            model[0].weight[::2] = 0


def test_template_adapter_takes_reference_and_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TEMPLATE))
    monkeypatch.setitem(sys.modules, "mylib", types.SimpleNamespace(Pruner=Pruner))
    monkeypatch.setattr(adapters_module, "version", lambda name: "2.1")
    # Not pip-installed here: its metadata's requirements are the template's pyproject pins.
    pyproject = (TEMPLATE / "pyproject.toml").read_text()
    pins = re.findall(r'"([^"]+)"', re.search(r"^dependencies = \[(.*)\]$", pyproject, re.M)[1])
    installed = adapters_module.requires
    monkeypatch.setattr(
        adapters_module,
        "requires",
        lambda name: pins if name == "labelkeep-mylib" else installed(name),
    )
    import labelkeep_mylib

    load_plugins()
    get_plugin_manager().register(labelkeep_mylib, name="mylib")
    original = Pruner.__init__
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    before = checksum(model)
    with instrumented(Config()) as session:
        assert session.adapters["mylib"].state == "active"
        Pruner(model)
        model.train()
        x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        nn.CrossEntropyLoss()(model(x), y).backward()
        assert checksum(session.reference_of(model)) == before
        assert session.report()["training_steps_with_loss"] == 1
    assert Pruner.__init__ is original
