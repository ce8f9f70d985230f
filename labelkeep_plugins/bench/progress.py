"""The bench's progress line: one line per finished step, with done/total, elapsed and ETA.

One line per step rather than a redrawn bar, so the output reads the same on a terminal,
in a CI log and through ``tee``; runs take seconds each, so lines come at a readable pace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from labelkeep_plugins.experiments.tables import TextSink


class Progress:
    """Counts steps (evaluation runs and tuning trials) and prints a line as each ends."""

    def __init__(self, total: int, stream: TextIO, clock: Callable[[], float] = time.monotonic):
        self.total = max(total, 1)
        self.done = 0
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._timed = 0  # steps run in this invocation (resumed ones took no time now)

    def skip(self, steps: int = 1) -> None:
        """Count steps finished by an earlier, resumed invocation."""
        self.done += steps

    def step(self, text: str, steps: int = 1) -> None:
        """``steps`` more are done (a tuning search counts one per trial)."""
        self.done += steps
        self._timed += steps
        self.note(f"{self.prefix()} {text}")

    def prefix(self) -> str:
        width = len(str(self.total))
        elapsed = self._clock() - self._started
        left = self.total - self.done
        eta = f", ~{_duration(elapsed / self._timed * left)} left" if self._timed and left else ""
        return f"[{self.done:>{width}}/{self.total}] {_duration(elapsed)}{eta} |"

    def note(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class PrefixedStream:
    """A text stream that writes each line to ``target`` with a prefix (tuning's own table)."""

    def __init__(self, target: TextSink, prefix: str) -> None:
        self._target, self._prefix = target, prefix
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._target.write(f"{self._prefix}{line}\n")
        return len(text)

    def flush(self) -> None:
        self._target.flush()
