"""The stderr console and the progress helper that ``--quiet`` silences."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console: Console | None = None


def console() -> Console:
    """The diagnostics console (stderr). Created lazily so CliRunner captures it."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def reset_console() -> None:
    global _console
    _console = None


_UNBOUNDED = 100_000  # the width a summary is measured at when nothing limits it


def _columns_set() -> bool:
    return os.environ.get("COLUMNS", "").strip().isdigit()


def _to_terminal(con: Console) -> bool:
    isatty = getattr(con.file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def show(renderable: RenderableType) -> None:
    """Print a summary (a table or a line of text) on stderr, whole wherever it goes.

    A terminal keeps its width and today's look; a table too wide for it is drawn at its minimum width
    (where no word of a cell is broken) and the terminal wraps the long lines: a number is never split, cut
    or dropped. Anywhere else (a log file, a pipe) the summary is drawn at ``COLUMNS`` when that is set, and
    otherwise at the width it needs: a table as wide as its widest row (its title a line of its own), a text
    line unbroken. So a script's log keeps every header and every number.
    """
    con = console()
    if isinstance(renderable, str):
        con.print(renderable, soft_wrap=not _to_terminal(con) and not _columns_set())
        return
    wide = con.options.update(width=_UNBOUNDED)
    need = Measurement.get(con, wide, renderable)
    if _to_terminal(con) or _columns_set():
        width = max(con.width, need.minimum)
    else:
        width = need.maximum
        title = getattr(renderable, "title", None)
        if isinstance(title, str):  # a table's title wraps at the table's width: print it as its own line
            con.print(title, soft_wrap=True, highlight=False)
            renderable = copy.copy(renderable)
            renderable.title = None  # type: ignore[attr-defined]
    if width == con.width:
        con.print(renderable)
    else:  # the same stream and colours, another width (Console.print can only narrow its own)
        wider = Console(file=con.file, width=width, color_system=con.color_system, force_terminal=con.is_terminal)
        wider.print(renderable, crop=False)


@contextmanager
def progress(quiet: bool = False, transient: bool = False) -> Iterator[Progress]:
    """A rich progress display on stderr; disabled (but usable) when quiet."""
    p = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(),
        disable=quiet,
        transient=transient,
    )
    with p:
        yield p
