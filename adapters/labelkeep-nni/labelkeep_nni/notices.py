"""The adapter's one-line warnings about known NNI defects.

Each is given once through the adapter's ``notices`` (the host's ``Notices``): to the session
(stderr, prefixed ``labelkeep: nni:``, and the run report's ``warnings``), or to stderr before
a session exists.
"""

from __future__ import annotations

from typing import Any


def already_wrapped(compressor: str) -> str:
    return (
        f"{compressor}: the model is already wrapped by an NNI compressor that labelkeep did not "
        f"see (labelkeep was activated after it), so no clean reference can be taken; NNI's "
        f"training runs without the label-preserving loss"
    )


def no_training_forward(compressor: str, evaluator: Any, model: Any) -> str:
    return (
        f"{compressor}.compress(): NNI trained the model through {type(evaluator).__name__}, "
        f"but labelkeep saw no training forward of {type(model).__name__}, so that training ran "
        f"without the label-preserving loss. The training step must call the bound model itself "
        f"(in a LightningModule: self(x), not self.net(x)), in train mode with gradients enabled"
    )


def no_reference(evaluator: Any, model: Any) -> str:
    return (
        f"{type(evaluator).__name__}.bind_model: labelkeep has no reference for "
        f"{type(model).__name__} (no NNI compressor was built on it while labelkeep was active), "
        f"so this training runs without the label-preserving loss"
    )
