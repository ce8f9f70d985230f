"""labelkeep's Brevitas adapter (the plugin module of the ``labelkeep-brevitas`` distribution).

Importing this module must not import Brevitas: the host checks Brevitas'
installed version from package metadata first and instruments the adapter only
when the user's script imports ``brevitas``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelkeep_brevitas.adapter import BrevitasAdapter
from labelkeep_plugins import hookimpl

__all__ = ["BrevitasAdapter", "labelkeep_register_adapters"]


@hookimpl
def labelkeep_register_adapters(register: Callable[..., Any]) -> None:
    """Register the Brevitas adapter (one object per plugin-manager load)."""
    register(BrevitasAdapter())
