"""The ``recjpq`` command line: thin typer commands over the stage functions.

Heavy modules (torch, polars, scipy) are imported inside the commands, so ``recjpq --help`` is instant.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from recjpq_cli import __version__
from recjpq_cli.commands import assign, compress, evaluate, prepare, recommend, serve, synth, train

app = typer.Typer(
    name="recjpq",
    help="Train sequential recommenders on large catalogues with RecJPQ item embeddings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("synth")(synth.synth)
app.command("prepare")(prepare.prepare)
app.command("assign")(assign.assign)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("compress")(compress.compress)
app.command("recommend")(recommend.recommend)
app.command("serve")(serve.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"recjpq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """recjpq: prepare -> assign -> train -> evaluate -> compress, each a command that reads and writes files."""


def main() -> None:
    app()
