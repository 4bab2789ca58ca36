"""One look for every listing: a table with headers, a totals line, paging with --limit/--all,
and --json for tools (one JSON object per row, nothing else on stdout).

Tables are drawn by `rich` to the terminal's width (80 columns when piped); long cells wrap
instead of pushing columns off-screen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # rich loads only when a table is drawn (a quick command starts faster)
    from rich.console import Console

DEFAULT_LIMIT = 50

LimitOption = Annotated[int, typer.Option("--limit", min=1, help=f"Show at most this many rows (default {DEFAULT_LIMIT}).")]
AllOption = Annotated[bool, typer.Option("--all", help="Show every row (no --limit).")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per row, for tools.")]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    right: bool = False  # numbers and money: right-aligned
    max_width: int | None = None


def row_limit(limit: int, show_all: bool) -> int | None:
    """The row cap a command queries with: None means every row."""
    return None if show_all else limit


def print_listing(rows: Sequence[dict[str, Any]], columns: Sequence[Column], *, title: str, total: int,
                  totals: dict[str, str] | None = None, notes: Sequence[str] = (), as_json: bool = False,
                  console: Console | None = None) -> None:
    """Print `rows` (already cut to the limit) out of `total` matching rows.

    `totals`: column key -> text of a bold last row (over ALL matching rows, not only those shown).
    `notes`: lines printed under the table (warnings go to stderr by the caller)."""
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, default=str))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False, soft_wrap=False)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for c in columns:
        table.add_column(c.header, justify="right" if c.right else "left", max_width=c.max_width,
                         overflow="fold")
    for r in rows:
        table.add_row(*("" if r.get(c.key) is None else str(r.get(c.key)) for c in columns))
    if totals:
        table.add_section()
        table.add_row(*(f"[bold]{totals.get(c.key, '')}[/bold]" for c in columns))
    if rows:
        console.print(table)
    shown = f"{len(rows)} of {total}" if len(rows) < total else f"{total}"
    more = " (--all shows every row)" if len(rows) < total else ""
    console.print(f"{shown} {title.lower()}{more}" if rows else f"no {title.lower()}")
    for note in notes:
        console.print(note)
