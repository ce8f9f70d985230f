"""Every table labelkeep prints, from one renderer on ``rich``: aligned text, or Markdown.

Text tables go to terminals, CI logs and ``tee`` alike, so they are plain: no colour, ASCII
rules, and no wrapping (rich would wrap at 80 columns whenever the output is not a
terminal; a row stays one line wherever it is read). Markdown tables are what
``results.md`` and the README carry. Cells are taken literally: ``[95% CI]`` is text, not
rich markup.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Header rule and section rules of dashes, columns apart by spaces: reads anywhere.
PLAIN_RULES = box.Box("    \n    \n -- \n    \n -- \n    \n    \n    \n", ascii=True)
_UNWRAPPED = 100_000  # the console's width: wide enough that rich never wraps a row


@dataclass(frozen=True)
class Column:
    """A column's header and alignment; ``width`` fixes it (tables printed row by row)."""

    header: str
    justify: Literal["left", "right"] = "left"
    width: int | None = None


class TextSink(Protocol):
    """Where lines go: a text stream such as ``sys.stderr``, or anything that writes and
    flushes like one (the bench's ``PrefixedStream``, which prefixes each line)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def text_table(
    columns: Sequence[Column], rows: Iterable[Sequence[str]], *, rule_after: Iterable[int] = ()
) -> str:
    """Aligned columns under a rule; a rule also after each row index in ``rule_after``."""
    ruled = set(rule_after)
    table = _table(columns, PLAIN_RULES, edge=False)
    for index, row in enumerate(rows):
        table.add_row(*map(Text, row), end_section=index in ruled)
    return _render(table)


def markdown_table(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` inside a cell is escaped)."""
    table = _table(columns, box.MARKDOWN, edge=True)
    for row in rows:
        table.add_row(*(Text(cell.replace("|", "\\|")) for cell in row))
    return _render(table)


class LiveTable:
    """A table printed a row at a time (each as it is known), aligned by fixed widths.

    The header comes before the first row. Every column but the last needs a ``width``.
    """

    def __init__(self, columns: Sequence[Column], stream: TextSink) -> None:
        if any(column.width is None for column in columns[:-1]):
            raise ValueError("a live table needs a width for every column but the last")
        self._columns, self._stream = tuple(columns), stream
        self._started = False

    def note(self, text: str) -> None:
        """A line that is not a row (a message between rows)."""
        self._stream.write(f"{text}\n")
        self._stream.flush()

    def row(self, cells: Sequence[str]) -> None:
        if not self._started:
            self._started = True
            self.note(self._line(column.header for column in self._columns))
        self.note(self._line(cells))

    def _line(self, cells: Iterable[str]) -> str:
        table = _table(self._columns, None, edge=False, header=False)
        table.add_row(*map(Text, cells))
        return _render(table)


def _table(
    columns: Sequence[Column], style: box.Box | None, *, edge: bool, header: bool = True
) -> Table:
    table = Table(box=style, show_edge=edge, pad_edge=edge, show_header=header, highlight=False)
    for column in columns:
        table.add_column(
            Text(column.header),
            justify=column.justify,
            no_wrap=True,
            width=column.width,
            min_width=column.width,
        )
    return table


def _render(table: Table) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=_UNWRAPPED,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        legacy_windows=False,
        emoji=False,
        highlight=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")
