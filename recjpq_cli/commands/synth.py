"""``recjpq synth``: a synthetic interaction log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recjpq_cli.commands.common import JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors


def synth(
    users: Annotated[int, typer.Option("--users", min=1, help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option("--items", min=1, help="Catalogue size (every item appears).")] = 2000,
    interactions: Annotated[int, typer.Option("--interactions", min=1, help="Number of interactions.")] = 30000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .csv, .tsv or .parquet.", show_default=False)] = Path("synth.csv"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Write a realistic synthetic log (user_id, item_id, timestamp) with sequential structure."""
    from recjpq_cli.console import console
    from recjpq_cli.stages import synth as stage

    with user_errors(json, (out,)):
        with console().status("generating", spinner="dots") if not quiet else _null():
            result = stage.run(stage.SynthConfig(users=users, items=items, interactions=interactions,
                                                 out=out, seed=seed, overwrite=overwrite))
        if not quiet:
            console().print(f"wrote {result.out}: {users:,} users, {items:,} items, "
                            f"{interactions:,} interactions in {result.seconds:.1f} s")
        emit(result.facts(), json)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
