"""Text for a person at a terminal: tables that fit the width without folding a number, prose
wrapped at word boundaries, and the progress line of a log. Pure functions of strings and a
width, so that what the console prints can be tested at any width."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

__all__ = ["QUICK_NOTICE", "QUICK_REPORT_NOTICE", "eta_text", "fit_columns", "plain_table", "wrap"]

# Said on the console and atop every report of a --quick run.
QUICK_NOTICE = (
    "Quick run: it checks that the pipeline works, with too few steps and seeds to be "
    "evidence of anything; it shows no verdicts."
)

# Atop every report of a --quick run.
QUICK_REPORT_NOTICE = (
    "**Quick run: it checks that the pipeline works, with too few steps and seeds to be "
    "evidence of anything. Its verdicts mean nothing; run the command without --quick for "
    "them.**"
)

_GAP = "  "


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces only (a word longer
    than the width stays whole), continuation lines indented by ``indent``."""
    return textwrap.wrap(
        text,
        width=max(width, 20),
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [""]


def _table_width(widths: Sequence[int]) -> int:
    return sum(widths) + len(_GAP) * (len(widths) - 1)


def _widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]


def fit_columns(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    droppable: Sequence[int] = (),
    shortenable: Sequence[int] = (),
) -> tuple[list[str], list[list[str]]]:
    """The columns of a table that fit ``width``: the ``droppable`` columns (indices, least
    important first) are dropped one by one while the table is too wide; then the cells of
    the ``shortenable`` columns (text, never numbers) are cut with "…". No other cell is ever
    cut or folded: a table that still does not fit is returned as it is, for the terminal to
    wrap whole lines."""
    keep = list(range(len(header)))
    header_now = list(header)
    rows_now = [list(row) for row in rows]
    for index in droppable:
        if _table_width(_widths(header_now, rows_now)) <= width:
            break
        position = keep.index(index)
        keep.pop(position)
        header_now.pop(position)
        for row in rows_now:
            row.pop(position)
    excess = _table_width(_widths(header_now, rows_now)) - width
    for index in shortenable:
        if excess <= 0 or index not in keep:
            continue
        position = keep.index(index)
        current = _widths(header_now, rows_now)[position]
        target = max(len(header_now[position]), 8, current - excess)
        for row in rows_now:
            if len(row[position]) > target:
                row[position] = row[position][: target - 1] + "…"
        excess = _table_width(_widths(header_now, rows_now)) - width
    return header_now, rows_now


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns aligned with two spaces between them, the header underlined; text left-aligned,
    numbers (cells that start with a digit, a sign or a dot) right-aligned."""
    widths = _widths(header, rows)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for cell, size in zip(cells, widths, strict=True):
            numeric = bool(cell) and (cell[0].isdigit() or cell[0] in "+-.")
            parts.append(cell.rjust(size) if numeric else cell.ljust(size))
        return _GAP.join(parts).rstrip()

    return [line(header), _GAP.join("-" * size for size in widths), *map(line, rows)]


def eta_text(done: int, total: int, elapsed: float) -> str:
    """``about 40 s left`` from the mean time per job so far; empty before the first job."""
    if done <= 0 or done >= total or not math.isfinite(elapsed):
        return ""
    left = elapsed / done * (total - done)
    if left >= 120:
        return f"about {left / 60:.0f} min left"
    return f"about {left:.0f} s left"
