"""The one table renderer (rich underneath): plain aligned text, Markdown, row-by-row tables."""

from __future__ import annotations

import io

import pytest

from labelkeep_plugins.experiments.tables import Column, LiveTable, markdown_table, text_table

COLUMNS = [Column("cell"), Column("method"), Column("reduction", "right")]
ROWS = [
    ("tp-digits", "plain", "-"),
    ("tp-digits", "default", "1.52x [1.20, 1.91]"),
    ("nni-mnist1d", "plain", "[/bold] kept"),
]


def test_text_columns_align_with_a_rule_under_the_header_and_between_sections() -> None:
    lines = text_table(COLUMNS, ROWS, rule_after=[1]).splitlines()
    assert len(lines) == 6 and set(lines[1]) == {"-"} and lines[4] == lines[1]
    starts = {line.index("plain") for line in (lines[2], lines[5])}
    assert starts == {lines[0].index("method")}  # left-justified: one start per column
    ends = {len(line) for line in (lines[2], lines[3], lines[5])}
    assert ends == {len(lines[0])}  # right-justified: every row ends where the header does
    assert "[/bold] kept" in lines[5]  # cells are literal text, never rich markup


def test_a_wide_row_is_never_wrapped_off_a_terminal() -> None:
    """rich wraps at 80 columns where there is no terminal; a row must stay one line."""
    wide = [("x" * 150, "y" * 150, "1.00x")]
    lines = text_table(COLUMNS, wide).splitlines()
    assert len(lines) == 3 and lines[2].startswith("x" * 150) and lines[2].endswith("1.00x")
    assert "\x1b" not in "".join(lines)  # no colour codes either


def test_markdown_has_edges_a_separator_and_escaped_pipes() -> None:
    lines = markdown_table(COLUMNS, [*ROWS, ("a|b", "c", "d")]).splitlines()
    assert len(lines) == 2 + len(ROWS) + 1
    assert all(line.startswith("| ") and line.endswith(" |") for line in (lines[0], lines[2]))
    assert set(lines[1]) <= {"|", "-", ":"} and lines[1].count("|") == len(COLUMNS) + 1
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "cell",
        "method",
        "reduction",
    ]
    assert "a\\|b" in lines[-1]


def test_a_live_table_prints_its_header_once_and_aligns_rows_by_width() -> None:
    stream = io.StringIO()
    table = LiveTable([Column("n", "right", width=4), Column("what")], stream)
    table.row(["1", "first"])
    table.note("a message between rows")
    table.row(["1000", "second"])
    assert stream.getvalue().splitlines() == [
        "   n  what",
        "   1  first",
        "a message between rows",
        "1000  second",
    ]


def test_a_live_table_needs_fixed_widths() -> None:
    with pytest.raises(ValueError, match="width for every column but the last"):
        LiveTable([Column("n"), Column("what")], io.StringIO())
