"""Run a callback when a module is first imported, without importing it ourselves.

Adapters patch their framework only if the user's script imports it, so a run
never pays for (or trips over) frameworks it does not use.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

ImportCallback = Callable[[ModuleType], None]

_lock = threading.RLock()
_pending: dict[str, list[ImportCallback]] = {}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a watched module to call back after it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _NotifyingLoader(spec.loader, fullname)
                return spec
        return None


class _NotifyingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, fullname: str) -> None:
        self._loader = loader
        self._fullname = fullname

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _fire(self._fullname, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


_finder = _PostImportFinder()


def when_imported(module_name: str, callback: ImportCallback) -> None:
    """Call ``callback(module)`` now if imported, else right after its first import."""
    with _lock:
        module = sys.modules.get(module_name)
        if module is None:
            _pending.setdefault(module_name, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    callback(module)


def cancel(callback: ImportCallback) -> None:
    """Forget a callback that has not fired yet."""
    with _lock:
        for name in list(_pending):
            _pending[name] = [c for c in _pending[name] if c is not callback]
            if not _pending[name]:
                del _pending[name]
        if not _pending and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)


def _fire(module_name: str, module: ModuleType) -> None:
    with _lock:
        callbacks = _pending.pop(module_name, [])
        if not _pending and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    for callback in callbacks:
        callback(module)
