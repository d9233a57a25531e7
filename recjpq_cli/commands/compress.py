"""``recjpq compress``: a run to one compact, self-describing model file, with a size report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from recjpq_cli.commands.assign import check_ksub
from recjpq_cli.commands.common import JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors
from recjpq_cli.commands.evaluate import Checkpoint, CheckpointOpt


class CentroidDtype(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def compress(
    run: Annotated[Path, typer.Argument(help="Run folder from `recjpq train`.", show_default=False, metavar="RUN_DIR")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (any name).", show_default=False)],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset folder of the run (for the id maps). Default: the one the run records.", show_default=False)] = None,
    checkpoint: CheckpointOpt = Checkpoint.best,
    centroid_dtype: Annotated[CentroidDtype, typer.Option("--centroid-dtype", help="Stored precision of the centroids.")] = CentroidDtype.fp32,
    from_dense: Annotated[bool, typer.Option("--from-dense", help="Product-quantise a run trained with full embeddings (k-means).")] = False,
    code_length: Annotated[int, typer.Option("--code-length", min=1, help="--from-dense: splits M per item.")] = 8,
    centroids: Annotated[int, typer.Option("--centroids", callback=check_ksub, help="--from-dense: centroids ksub per split (2..65,536).")] = 256,
    kmeans_iters: Annotated[int, typer.Option("--kmeans-iters", min=0, help="--from-dense: k-means iterations.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="--from-dense: k-means seed.")] = 0,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Write codes, centroids, backbone, model arguments and id maps to one file; report sizes vs dense."""
    from recjpq_cli.console import console
    from recjpq_cli.dataset_record import default_data
    from recjpq_cli.stages import compress as stage
    from recjpq_cli.stages.render import compress_table

    with user_errors(json):
        data = default_data(data, run, checkpoint.value)
    cfg = stage.CompressConfig(run=run, out=out, data=data, checkpoint=checkpoint.value,
                               centroid_dtype=centroid_dtype.value, from_dense=from_dense,
                               code_length=code_length, centroids=centroids, kmeans_iters=kmeans_iters,
                               seed=seed, overwrite=overwrite)
    with user_errors(json, cfg.outputs(), cfg.inputs()):
        if quiet:
            result = stage.run(cfg)
        else:
            with console().status("compressing" + (" (k-means)" if from_dense else ""), spinner="dots"):
                result = stage.run(cfg)
            compress_table(result)
        emit(result.facts(), json)
