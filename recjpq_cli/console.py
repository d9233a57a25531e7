"""The stderr console and the progress helper that ``--quiet`` silences."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
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
