"""What users see: rich progress bars with ETA and end-of-stage summary tables.

All stages print through :data:`console` (stderr, so stdout stays clean for piping). Piped to a
file or a CI log, rich would lay everything out for 80 columns and cut long paths and texts with
"…"; there :data:`console` is :data:`PIPE_WIDTH` columns wide (``COLUMNS`` still wins), summary
values fold onto the next line instead of being cut, and a line of text stays one line however long
(``grep warning`` finds all of it).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

#: Line width when stderr is not a terminal and ``COLUMNS`` is unset.
PIPE_WIDTH = 200


class _Console(Console):
    """rich's console, whose output is never written twice: rich writes its buffer and only then clears it, so
    a Ctrl-C landing in between (right after a line appears, as a script that reacts to it sends it) printed
    that line again with the next output. A Ctrl-C inside a write drops what is left of it instead."""

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except KeyboardInterrupt:
            del self._buffer[:]
            raise


def _make_console() -> Console:
    c = _Console(stderr=True, highlight=False)
    if not c.is_terminal:
        c.soft_wrap = True
        if not os.environ.get("COLUMNS"):
            c.width = PIPE_WIDTH
    return c


console = _make_console()


def progress(*extra_columns: object, transient: bool = False, eta: bool = True) -> Progress:
    """A progress bar with description, bar, done/total, ``extra_columns``
    (e.g. ``TextColumn("loss {task.fields[loss]:.3f}")``), elapsed, and rich's ETA unless ``eta=False``
    (for callers whose early steps are not representative and that show their own ETA column).

    Shown only on a terminal: elsewhere (CI, ``| tee``, a file) it prints nothing, not even at its end, where its
    figures would be stale (an ETA after the stage ended, one step's elapsed time covering the whole stage);
    there the stage's plain lines (:func:`plain_progress`, :func:`status`) are the progress."""
    tail = (TextColumn("ETA"), TimeRemainingColumn()) if eta else ()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra_columns, TimeElapsedColumn(), *tail, console=console, transient=transient,
                    disable=not console.is_terminal)


#: Seconds between plain progress lines when the console is not a terminal.
PLAIN_EVERY_S = 10.0


def plain_progress(description: str, completed: int, total: int | None, figures: dict[str, object]) -> None:
    """Print one plain line ``"{description} {completed}/{total}  key value  ..."`` (``/?`` for an unknown
    ``total``) when :data:`console` is not a terminal (CI logs, ``| tee``, a file), where :func:`progress` shows no bar.
    A no-op on terminals, where the bar shows progress. Call it at the stage's logging points."""
    if console.is_terminal:
        return
    line = "  ".join([f"{description} {completed}/{'?' if total is None else total}",
                      *(f"{k} {v}" for k, v in figures.items())])
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def status(text: str) -> Iterator[None]:
    """A spinner with ``text`` while the block runs on a terminal; without one (CI, ``| tee``), where
    rich's spinner prints nothing, one plain line ``"text …"`` so long silent steps still say what runs."""
    if console.is_terminal:
        with console.status(text):
            yield
    else:
        console.print(f"{text} …", markup=False, highlight=False, soft_wrap=True)
        yield


def summary_table(title: str, rows: Iterable[tuple[object, object]]) -> None:
    """Print a two-column (setting, value) summary table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(str(k), str(v))
    console.print(table)


def byte_size(n: float) -> str:
    """``n`` bytes for a person to read: MiB below 1 GiB, GiB below 1 TiB, then TiB (``1.1 TiB``)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 2**20:,.1f} MiB"
