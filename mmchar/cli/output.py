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
# a pipe gets wide tables (200 columns) unless COLUMNS says how wide the reader's terminal is
console = Console(highlight=False, soft_wrap=False,
                  width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
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
    table = Table(show_lines=False, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for col in df.columns:
        cut = col in truncate
        table.add_column(escape(str(col).replace("_", " ")), overflow="ellipsis" if cut else "fold", no_wrap=cut,
                         max_width=TRUNCATED_WIDTH if cut else None)
    for row in df.itertuples(index=False):  # cells are text, not markup: `mmchar[fla]` must print as typed
        table.add_row(*(escape(_cell(v)) for v in row))
    console.print(table)


def say(message: str) -> None:
    console.print(escape(message))


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error_line(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)

