"""Terminal output for the command line: tables and lines that read at any width and when piped.

On a terminal, a table that fits is a rich table whose cells never wrap or shorten (no
`accura…`); one that does not fit is printed as one short block per row (`header: value` lines).
When the output is not a terminal (a pipe, a file, a CI log) every table is plain aligned text
and no line is wrapped, so `grep` and `cut` see whole names and numbers, one row to a line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

# rich's table around n columns: a border and a space either side of every cell.
_BORDER_PER_COLUMN, _BORDER = 3, 1


def setup_output(quiet: bool) -> None:
    """Logging and line wrapping for one command, by whether stdout and stderr are terminals."""
    for c in (console, err_console):
        c.soft_wrap = not c.is_terminal  # soft wrap: rich leaves the line whole
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console, show_time=not quiet, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(err_console.file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if quiet else
                                               "%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("accelerate", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def say(text: str) -> None:
    """One message line; wrapped at word boundaries on a terminal, whole when piped."""
    console.print(text, markup=False, highlight=False)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> None:
    """A table whose first `left` columns are left-aligned text and the rest right-aligned values."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(x) for x in column) for column in zip(headers, *cells)]
    if not console.is_terminal:
        _plain(title, headers, cells, widths, left)
    elif sum(widths) + _BORDER_PER_COLUMN * len(widths) + _BORDER <= console.width:
        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i < left else "right", no_wrap=True)
        for row in cells:
            table.add_row(*row)
        console.print(table)
    else:
        _narrow(title, headers, cells)


def _plain(title: str, headers: Sequence[str], cells: list[list[str]], widths: list[int], left: int) -> None:
    lines = [title]
    for row in [list(headers), *cells]:
        lines.append("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip())
    for line in lines:
        say(line)


def _narrow(title: str, headers: Sequence[str], cells: list[list[str]]) -> None:
    """Too wide for the terminal: one block per row, its first cell as the heading."""
    say(title)
    for row in cells:
        say(row[0] or "-")
        for header, value in zip(headers[1:], row[1:]):
            say(f"  {header}: {value}")
