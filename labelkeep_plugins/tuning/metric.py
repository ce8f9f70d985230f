"""A metric the user names: ``labelkeep tune --metric REGEX`` reads it from each trial's output.

Zero code: the training script already prints its validation figure, so a regular
expression with one capturing group finds it in the trial's ``output.log`` (stdout and
stderr together). The last match counts, as the last evaluation is the final model's.
The value replaces the run report's accuracy in the accuracy constraint; mismatches
still come from the report.

With ``mode="max"`` (an accuracy) a value above 1 is read as a percentage, so that
``91.5`` and ``0.915`` mean the same and ``--tolerance`` stays a fraction. With
``mode="min"`` (a loss) the value is used as printed: a loss may well exceed 1, and
rescaling only some values would reorder them.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from labelkeep_plugins.errors import ConfigError, LabelkeepError

MODES = ("max", "min")
DEFAULT_MODE = "max"
_EXAMPLE = r"'val acc: ([0-9.]+)'"


class MetricError(LabelkeepError):
    """A trial's output gives no usable metric value: that trial fails, the search goes on."""


@dataclass(frozen=True)
class Metric:
    """``--metric`` and ``--metric-mode``; checked on creation, so before any trial runs."""

    pattern: str
    mode: str = DEFAULT_MODE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"--metric-mode must be one of {', '.join(MODES)} (max: higher is better, "
                f"like an accuracy; min: lower is better, like a loss), got {self.mode!r}"
            )
        groups = self.regex.groups
        if groups != 1:
            raise ConfigError(
                f"--metric {self.shown} has {groups} capturing groups; it needs exactly "
                f"one, around the number, e.g. {_EXAMPLE} (write other groups as (?:...))"
            )

    @property
    def shown(self) -> str:
        """The pattern as it would be typed in a shell (repr would double each backslash)."""
        return shlex.quote(self.pattern)

    @property
    def regex(self) -> re.Pattern[str]:
        """Multiline: ``^`` and ``$`` match at each line of the output (``re`` caches this)."""
        try:
            return re.compile(self.pattern, re.MULTILINE)
        except re.error as exc:
            raise ConfigError(
                f"--metric {self.shown} is not a valid Python regular expression ({exc}); "
                f"fix it, e.g. {_EXAMPLE} (escape literal characters such as . ( [ with \\)"
            ) from exc

    def read(self, text: str, source: str) -> float:
        """The value of the last match in ``text``; ``source`` names the output in errors."""
        matches = list(self.regex.finditer(text))
        if not matches:
            raise MetricError(
                f"metric not found: --metric {self.shown} matches nothing in {source}; "
                "make the command print the metric after evaluating, or fix the regex "
                "to match the line it prints"
            )
        return self._value(matches[-1].group(1), source)

    def read_log(self, log: Path) -> float:
        """The value in a trial's output file."""
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise MetricError(f"cannot read {log} to find the metric ({exc.strerror})") from exc
        return self.read(text, str(log))

    def _value(self, captured: str | None, source: str) -> float:
        try:
            value = float(captured or "")
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise MetricError(
                f"metric is not a number: --metric {self.shown} captured {captured!r} "
                f"in {source}; make its group capture only the number, e.g. {_EXAMPLE}"
            )
        return value / 100 if self.mode == "max" and value > 1 else value
