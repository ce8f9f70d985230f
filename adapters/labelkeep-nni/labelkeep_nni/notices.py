"""The adapter's one-line warnings about known NNI defects.

The host session has no warnings list yet, so the adapter keeps its own: each
message is printed once to stderr (prefixed ``labelkeep: nni:``) and kept in
:attr:`Notices.lines` for tests and for the run report once the host carries it.
"""

from __future__ import annotations

import sys

PREFIX = "labelkeep: nni: "


class Notices:
    """Warnings printed once per key, in the order they were first given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._keys: set[str] = set()

    def warn(self, key: str, message: str) -> bool:
        """Print ``message`` unless ``key`` was warned about already; say whether it printed."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self.lines.append(message)
        print(f"{PREFIX}{message}", file=sys.stderr)
        return True

    def clear(self) -> None:
        self.lines.clear()
        self._keys.clear()
