"""``recjpq prepare``: raw interactions to a dataset folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from recjpq_cli.commands.common import JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors


class Format(str, Enum):
    sasrec = "sasrec"
    seq = "seq"
    movielens = "movielens"
    recbole = "recbole"
    gowalla = "gowalla"
    booking = "booking"
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"


def prepare(
    input: Annotated[Path, typer.Argument(help="Raw interaction file.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.", show_default=False)],
    format: Annotated[Optional[Format], typer.Option("--format", "-f", help="Input format (detected when omitted).")] = None,
    user_col: Annotated[str, typer.Option(help="User column (csv, tsv, parquet).")] = "user_id",
    item_col: Annotated[str, typer.Option(help="Item column (csv, tsv, parquet).")] = "item_id",
    time_col: Annotated[Optional[str], typer.Option(help="Time column (csv, tsv, parquet); without one, file order is time order.")] = None,
    min_rating: Annotated[Optional[float], typer.Option(help="Keep rows with rating >= this.")] = None,
    min_user_interactions: Annotated[int, typer.Option(min=1, help="Drop users with fewer interactions (iterated until stable).")] = 5,
    min_item_interactions: Annotated[int, typer.Option(min=0, help="Drop items with fewer interactions (iterated until stable).")] = 0,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Turn a raw interaction log into a leave-one-out sequential dataset folder."""
    from recjpq_cli.stages import prepare as stage
    from recjpq_cli.stages.render import prepare_table

    cfg = stage.PrepareConfig(
        input=input, out=out, format=format.value if format else None,
        user_col=user_col, item_col=item_col, time_col=time_col or "timestamp",
        time_col_given=time_col is not None, min_rating=min_rating,
        min_user_interactions=min_user_interactions, min_item_interactions=min_item_interactions,
        overwrite=overwrite,
    )
    with user_errors(json, cfg.outputs(), cfg.inputs()):
        result = stage.run(cfg)
        if not quiet:
            prepare_table(result)
        emit(result.facts(), json)
