"""An adapter's one-line warnings, each said once: the one de-duplication adapters share.

With a session, a warning goes to :meth:`Session.warn` (stderr, prefixed ``labelkeep:
ADAPTER:``, and the run report's ``warnings``); before a session exists, to stderr with
the same prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelkeep_plugins.log import logger

if TYPE_CHECKING:
    from labelkeep_plugins.zero_code.session import Session


class Notices:
    """Warnings given once per key, in the order they were first given."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self.lines: list[str] = []
        self.session: Session | None = None
        self._keys: set[str] = set()

    def warn(self, key: str, message: str) -> bool:
        """Say ``message`` unless ``key`` was said already; return whether it was said now."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self.lines.append(message)
        if self.session is not None:
            self.session.warn(self.adapter, message)
        else:
            logger.warning(f"{self.adapter}: {message}")
        return True

    def say(self, message: str) -> bool:
        """:meth:`warn` with the message as its own key."""
        return self.warn(message, message)

    def clear(self) -> None:
        self.lines.clear()
        self._keys.clear()
