"""The student's forward hook as an object that copies of the student leave behind.

A bound method registered as a hook drags its handle (and with it the reference and
the plugin manager) into ``copy.deepcopy(student)`` or ``torch.save(student)`` and
fails there; the copy of this object is an inert hook instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ForwardHook:
    """Calls the handle's forward callback; copies and pickles of it do nothing."""

    def __init__(self, callback: Callable[..., None]) -> None:
        self._callback = callback

    def __call__(self, *args: Any) -> None:
        self._callback(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> InertHook:
        return InertHook()

    def __reduce__(self) -> tuple[type[InertHook], tuple[()]]:
        return (InertHook, ())


class InertHook:
    """What a copied student carries in place of labelkeep's hook."""

    def __call__(self, *args: Any) -> None:
        return None
