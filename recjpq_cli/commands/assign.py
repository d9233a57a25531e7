"""``recjpq assign``: item codes from a prepared dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from recjpq_cli.commands.common import JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors


class Strategy(str, Enum):
    random = "random"
    svd = "svd"
    bpr = "bpr"
    svd_kmeans = "svd-kmeans"


def assign(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder written by `recjpq prepare`.", show_default=False)],
    strategy: Annotated[Strategy, typer.Option("--strategy", "-s", help="How codes are chosen: uniform random, "
                                               "discretised truncated SVD, discretised BPR factors, or a d-dimensional "
                                               "SVD product-quantised by k-means (svd-kmeans, RecJPQ-HC: also writes "
                                               "CODES.centroids.npy, the centroids training starts from).",
                                               show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Codes file to write (CODES.npy; the sidecar CODES.yaml "
                                      "goes next to it).", show_default=False)],
    code_length: Annotated[int, typer.Option("--code-length", "-m", min=1, help="M: sub-ids per item (splits).")] = 8,
    centroids: Annotated[int, typer.Option("--centroids", "-b", min=2, max=65536,
                                           help="ksub: centroids per split (<= 256 stores codes as uint8).")] = 256,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed: same inputs and seed give identical codes.")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="BPR epochs (passes over the training interactions).")] = 20,
    dim: Annotated[int, typer.Option("--dim", min=1, help="svd-kmeans: SVD components, the d you will train with "
                                     "(a multiple of -m).")] = 512,
    unique: Annotated[bool, typer.Option("--unique/--no-unique", help="Move items that share a full code to the "
                                         "nearest free code.")] = True,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Assign each item a code of M sub-ids from the training interactions (random, svd, bpr or svd-kmeans)."""
    from recjpq_cli.console import progress
    from recjpq_cli.stages import assign as stage
    from recjpq_cli.stages.render import assign_table

    cfg = stage.AssignConfig(dataset=dataset, out=out, strategy=strategy.value, M=code_length, ksub=centroids,
                             seed=seed, epochs=epochs, dim=dim, unique=unique, overwrite=overwrite)
    with user_errors(json, cfg.outputs(), cfg.inputs()):
        with progress(quiet=quiet or strategy is not Strategy.bpr, transient=True) as p:
            task = p.add_task("bpr", total=epochs, info="")

            def on_epoch(done: int, total: int, loss: float) -> None:
                p.update(task, completed=done, info=f"loss {loss:.4f}")

            result = stage.run(cfg, on_epoch=on_epoch)
        if not quiet:
            assign_table(result)
        emit(result.facts(), json)
