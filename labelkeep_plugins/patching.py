"""Attribute patches that can be undone exactly.

Undo restores each original object by identity, in reverse order, and only
where the attribute still holds our replacement: if another library wrapped on
top of a patch, that attribute is left alone (and reported) rather than
silently tearing the other library's wrapper off.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from labelkeep_plugins.errors import LabelkeepWarning

_MISSING = object()


@dataclass
class Patch:
    """One replaced attribute: where, what was there, and what we put there."""

    owner: Any
    name: str
    original: Any
    replacement: Any

    def is_ours(self) -> bool:
        return _raw_get(self.owner, self.name) is self.replacement

    def restore(self) -> bool:
        """Put the original back if the attribute is still ours; report whether it was."""
        if not self.is_ours():
            return False
        if self.original is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.original)
        return True


class PatchSet:
    """An ordered set of patches, undone together in reverse order."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._patches: list[Patch] = []

    def __len__(self) -> int:
        return len(self._patches)

    def patch(self, owner: Any, name: str, replacement: Any) -> Any:
        """Replace ``owner.name``; return what it gave before (for the wrapper to call)."""
        effective = getattr(owner, name)
        original = _raw_get(owner, name)
        setattr(owner, name, replacement)
        self._patches.append(Patch(owner, name, original, replacement))
        return effective

    def undo(self) -> list[str]:
        """Restore every original that is still ours; return the names left alone."""
        left: list[str] = []
        while self._patches:
            patch = self._patches.pop()
            if not patch.restore():
                left.append(f"{_qualname(patch.owner)}.{patch.name}")
        if left:
            warnings.warn(
                f"labelkeep ({self.label}): {', '.join(left)} was wrapped again by other code "
                f"after "
                f"labelkeep patched it; that wrapper is left in place (it still calls labelkeep's "
                f"code, which now passes calls straight through)",
                LabelkeepWarning,
                stacklevel=2,
            )
        return left


def _raw_get(owner: Any, name: str) -> Any:
    """The attribute as stored on ``owner`` itself (a staticmethod stays one), or _MISSING.

    An attribute only inherited from a base class counts as missing, so undo
    deletes the override instead of pinning the inherited value on the subclass.
    """
    stored = getattr(owner, "__dict__", None)
    if stored is None:
        return getattr(owner, name, _MISSING)
    return stored.get(name, _MISSING)


def _qualname(owner: Any) -> str:
    for attribute in ("__qualname__", "__name__"):
        name = getattr(owner, attribute, None)
        if isinstance(name, str) and name:
            return name
    return type(owner).__name__
