"""``recjpq recommend``: top-k next items per user, as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from recjpq_cli.commands.common import Device, DeviceOpt, JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors
from recjpq_cli.commands.evaluate import BatchOpt, Checkpoint, CheckpointOpt, FilterOpt


def recommend(
    source: Annotated[Path, typer.Argument(help="Run folder or model file.", show_default=False, metavar="MODEL_OR_RUN")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write: user, rank, item, score.", show_default=False)],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset folder (the users' sequences). Default: the one the run or model records.", show_default=False)] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Items per user.")] = 10,
    users: Annotated[Optional[Path], typer.Option("--users", help="Only these users: one raw user id a line.", metavar="FILE")] = None,
    filter_seen: FilterOpt = True,
    checkpoint: CheckpointOpt = Checkpoint.best,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = Device.auto,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Recommend the top-k next items for every user (or those in --users) from their whole sequence."""
    from recjpq_cli.console import progress
    from recjpq_cli.dataset_record import default_data
    from recjpq_cli.stages import recommend as stage
    from recjpq_cli.stages.render import recommend_summary

    with user_errors(json):
        data = default_data(data, source, checkpoint.value)
    cfg = stage.RecommendConfig(source=source, data=data, out=out, k=k, users_file=users,
                                filter_seen=filter_seen, checkpoint=checkpoint.value, batch_size=batch_size,
                                device=device.value, overwrite=overwrite)
    with user_errors(json, cfg.outputs(), cfg.inputs()):
        with progress(quiet, transient=True) as p:
            result = stage.run(cfg, p)
        if not quiet:
            recommend_summary(result)
        emit(result.facts(), json)
