"""The plugin module: registers the adapter. It must not import mylib itself."""

from collections.abc import Callable

from labelkeep_mylib.adapter import MylibAdapter
from labelkeep_plugins import hookimpl


@hookimpl
def labelkeep_register_adapters(register: Callable[[object], None]) -> None:
    register(MylibAdapter())
