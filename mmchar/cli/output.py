"""All terminal output of the CLI: tables (rich, csv or json) and one-line messages."""

from __future__ import annotations

import os
import sys
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMATS = ("table", "csv", "json")
TRUNCATED_WIDTH = 30  # characters of a free-text column print_frame cuts to one line
MIN_TRUNCATED = 12  # the fewest it cuts such a column to before the table outgrows a narrow terminal
GAP = 2  # characters between columns: one of padding, the (blank) rule between them
LONG_WORD = 20  # a word longer than this (a path, a long identifier) may fold where whole words overflow the terminal
# a pipe gets wide tables (200 columns) unless COLUMNS says how wide the reader's terminal is
console = Console(highlight=False, soft_wrap=False,
                  width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _cell(v: Any) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


def print_frame(df: pd.DataFrame, *, title: str | None = None, fmt: str = "table",
                truncate: tuple[str, ...] = ()) -> None:
    """``df`` as a table (or csv / json); ``truncate``: free-text columns cut to one line ("…") when the terminal
    is narrow, so every row stays one line."""
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
        return
    if fmt == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2) + "\n")
        return
    # no vertical rules, headers that wrap at their words: a 100-column terminal keeps a run per line
    # the title on a line of its own: as a Table title it would wrap at the (compact) table's width
    if title:
        console.print(escape(title))
    headers = [str(col).replace("_", " ") for col in df.columns]
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    cut = [col in truncate for col in df.columns]
    widths = _column_widths(headers, cells, cut, console.width - GAP * (len(headers) - 1))
    table = Table(show_lines=False, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header, width, c in zip(headers, widths, cut):
        table.add_column(escape(header), width=width, overflow="ellipsis" if c else "fold", no_wrap=c)
    for row in cells:  # cells are text, not markup: `mmchar[fla]` must print as typed
        table.add_row(*(escape(c) for c in row))
    # a terminal too narrow for the words themselves gets long lines it wraps, never numbers folded into slivers
    # (print's own width= caps at the console's)
    terminal, console.width = console.width, max(console.width, sum(widths) + GAP * (len(widths) - 1))
    try:
        console.print(table, crop=False)
    finally:
        console.width = terminal


def _column_widths(headers: list[str], cells: list[list[str]], cut: list[bool], room: int) -> list[int]:
    """Each column's width in ``room`` characters: as wide as its widest cell or header where it fits, else the
    cut-to-one-line columns give way first (down to ``MIN_TRUNCATED``), then the widest of the others, one
    character at a time, never below its longest word (a number, a name: a header wraps at its words instead).
    Where even the words overflow, words longer than ``LONG_WORD`` may fold; the table prints wider than ``room``
    only beyond that."""
    def longest_word(texts) -> int:
        return max((len(w) for t in texts for w in t.split()), default=1)

    columns = [[h, *(row[i] for row in cells)] for i, h in enumerate(headers)]
    widths = [max((len(line) for t in texts for line in t.splitlines()), default=1) for texts in columns]
    floors = [min(w, max(longest_word(texts[:1]), MIN_TRUNCATED)) if c else longest_word(texts)
              for texts, w, c in zip(columns, widths, cut)]
    if sum(floors) > room:
        floors = [min(f, LONG_WORD) for f in floors]
    widths = [min(w, TRUNCATED_WIDTH) if c else w for w, c in zip(widths, cut)]
    for i in (i for i, c in enumerate(cut) if c):
        widths[i] = max(floors[i], widths[i] - max(0, sum(widths) - room))
    while sum(widths) > room:
        shrinkable = [(w, i) for i, (w, f, c) in enumerate(zip(widths, floors, cut)) if w > f and not c]
        if not shrinkable:
            break
        widths[max(shrinkable)[1]] -= 1
    return widths


def say(message: str, fmt: str = "table") -> None:
    """A line for the reader: on stdout beside a table; on stderr where stdout carries csv or json (``fmt``), which
    must stay machine-readable (`compare --format json | jq` read "comparing ..." first and failed)."""
    (console if fmt == "table" else err_console).print(escape(message))


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error_line(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)

