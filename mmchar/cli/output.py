"""All terminal output of the CLI: tables (rich, csv or json) and one-line messages."""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMATS = ("table", "csv", "json")
console = Console(highlight=False, soft_wrap=False, width=200 if not sys.stdout.isatty() else None)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


def print_frame(df: pd.DataFrame, *, title: str | None = None, fmt: str = "table") -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
        return
    if fmt == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2) + "\n")
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def say(message: str) -> None:
    console.print(escape(message))


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error_line(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)

