"""The adapter's one-line warnings about known NNI defects.

Each message is given once: to the session (stderr, prefixed ``labelkeep: nni:``,
and the run report's ``warnings``), or straight to stderr before a session exists.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.adapter_api import Session

PREFIX = "labelkeep: nni: "


class Notices:
    """Warnings printed once per key, in the order they were first given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.session: Session | None = None
        self._keys: set[str] = set()

    def warn(self, key: str, message: str) -> bool:
        """Print ``message`` unless ``key`` was warned about already; say whether it printed."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self.lines.append(message)
        if self.session is not None:
            self.session.warn("nni", message)
        else:
            print(f"{PREFIX}{message}", file=sys.stderr)
        return True

    def clear(self) -> None:
        self.lines.clear()
        self._keys.clear()


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
