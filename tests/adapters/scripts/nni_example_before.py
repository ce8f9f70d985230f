"""Runs examples/nni_agp_mnist1d.py unchanged, recording what the test needs around it.

Test-only: saves the model's state_dict right before the first NNI compressor is
built (``--save-before``) and counts the training steps before and after that
moment (``--counts``); every other argument goes to the example's ``main``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "nni_agp_mnist1d.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save-before", required=True)
    parser.add_argument("--counts", required=True)
    args, rest = parser.parse_known_args()
    spec = importlib.util.spec_from_file_location("nni_agp_mnist1d", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    counts = {"before_compression": 0, "after_compression": 0}
    phase = ["before_compression"]
    taylor_pruner, training_step = example.TaylorPruner, example.training_step

    def recording_taylor_pruner(model, *more, **kwargs):
        torch.save(model.state_dict(), args.save_before)
        phase[0] = "after_compression"
        return taylor_pruner(model, *more, **kwargs)

    def counting_training_step(batch, model):
        counts[phase[0]] += 1
        return training_step(batch, model)

    example.TaylorPruner = recording_taylor_pruner
    example.training_step = counting_training_step
    example.main(rest)
    Path(args.counts).write_text(json.dumps(counts), encoding="utf-8")


if __name__ == "__main__":
    main()
