"""labelkeep's NNI 3.x adapter (the plugin module).

Importing this module must not import NNI: the host reads NNI's version from
package metadata and arms the adapter; the patches are applied only when the
user's script imports ``nni.compression``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelkeep_plugins import hookimpl

__all__ = ["labelkeep_register_adapters"]


@hookimpl
def labelkeep_register_adapters(register: Callable[[Any], None]) -> None:
    """Register the NNI adapter with the host."""
    from labelkeep_nni.adapter import NNIAdapter

    register(NNIAdapter())
