"""labelkeep's torch-pruning adapter, as a plugin (entry point ``labelkeep: torch-pruning``).

Importing this module must stay cheap and must not import torch-pruning: the
host reads torch-pruning's version from package metadata first and only calls
:meth:`TorchPruningAdapter.instrument` once the user's script imports
``torch_pruning``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelkeep_plugins import hookimpl
from labelkeep_torch_pruning.adapter import LOSS_DURING_IMPORTANCE_ENV, TorchPruningAdapter

__all__ = ["LOSS_DURING_IMPORTANCE_ENV", "TorchPruningAdapter", "labelkeep_register_adapters"]


@hookimpl
def labelkeep_register_adapters(register: Callable[..., Any]) -> None:
    """Register a fresh adapter (one per host session, so no state leaks between runs)."""
    register(TorchPruningAdapter())
