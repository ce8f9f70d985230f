"""Test-only: run examples/torch_pruning_mnist1d.py and save its model as it was before pruning.

Usage: python tp_example_before.py BEFORE.pt [example arguments...]

The example itself stays an unmodified user script. This wrapper catches the
model at the example's first ``tp.utils.count_ops_and_params`` call, which it
makes right before building the pruner, and saves that state_dict. It wraps no
function labelkeep patches, so it cannot disturb what is being tested.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "torch_pruning_mnist1d.py"


def main() -> None:
    save_to = sys.argv[1]
    count = tp.utils.count_ops_and_params
    saved: list[bool] = []

    def count_and_save(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not saved:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, save_to)
            saved.append(True)
        return count(model, *args, **kwargs)

    tp.utils.count_ops_and_params = count_and_save
    sys.argv = [str(EXAMPLE), *sys.argv[2:]]
    runpy.run_path(str(EXAMPLE), run_name="__main__")


if __name__ == "__main__":
    main()
