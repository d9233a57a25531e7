"""What every command shares: option types and the one place user errors become ``Error:`` lines."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from recjpq_cli.errors import RecJPQError

JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the command's facts as JSON to PATH ('-' for stdout).", metavar="PATH")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display or summary table.")]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[Device, typer.Option("--device", help="auto takes CUDA when present.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print exactly one ``Error:`` line on stderr and return the exit to raise."""
    sys.stderr.write("Error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()
    return typer.Exit(code)


@contextmanager
def user_errors(json_path: str | None = None, outputs: tuple[Path | None, ...] = (),
                inputs: tuple[Path | None, ...] = ()) -> Iterator[None]:
    """Turn the library's typed errors into one ``Error:`` line and exit 1, once, at the CLI boundary.

    A ``--json PATH`` that cannot be written, or that names one of the command's ``outputs`` or ``inputs``,
    is refused here, before the command does any work.
    """
    try:
        from recjpq_cli.data.io import check_json_path

        check_json_path(json_path, outputs, inputs)
        yield
    except RecJPQError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except MemoryError:
        raise fail("out of memory; try a smaller batch size or fewer items per chunk") from None


def emit(facts: dict[str, Any], json_path: str | None) -> None:
    from recjpq_cli.data.io import write_json

    write_json(json_path, facts)

