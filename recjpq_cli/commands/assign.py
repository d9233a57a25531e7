"""``recjpq assign``: item codes from a prepared dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from recjpq_cli.commands.common import JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors
from recjpq_cli.jpq.types import DEFAULT_STRATEGY, STRATEGIES

# The --strategy choices: jpq.types.STRATEGIES, the one list of names.
Strategy = Enum("Strategy", {name.replace("-", "_"): name for name in STRATEGIES}, type=str)


def check_ksub(value: int | None) -> int | None:
    """--centroids/-b: a usage error (exit 2) outside jpq.codebook's valid ksub range. The rule is imported here,
    when the option is given, so the CLI starts without torch."""
    from recjpq_cli.jpq.codebook import MAX_KSUB, valid_ksub

    if value is not None and not valid_ksub(value):
        raise typer.BadParameter(f"{value} is not in the range 2<=x<={MAX_KSUB}.")
    return value


def assign(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder written by `recjpq prepare`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Codes file to write (CODES.npy; the sidecar CODES.yaml "
                                      "goes next to it).", show_default=False)],
    strategy: Annotated[Strategy, typer.Option("--strategy", "-s", help="How codes are chosen: a d-dimensional SVD "
                                               "product-quantised by k-means (svd-kmeans, RecJPQ-HC, the best measured; "
                                               "also writes CODES.centroids.npy, the centroids training starts from), "
                                               "discretised truncated SVD, discretised BPR factors, or uniform "
                                               "random.")] = Strategy(DEFAULT_STRATEGY),
    code_length: Annotated[int, typer.Option("--code-length", "-m", min=1, help="M: sub-ids per item (splits).")] = 8,
    centroids: Annotated[int | None, typer.Option("--centroids", "-b", callback=check_ksub, show_default=False,
                                                  help="ksub: centroids per split, 2..65,536 (<= 256 stores codes "
                                                  "as uint8). "
                                                  "Default: 131,072 / --dim (256 at d=512, 1,024 at d=128), at most "
                                                  "half the items.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed: same inputs and seed give identical codes.")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="BPR epochs (passes over the training interactions).")] = 20,
    dim: Annotated[int, typer.Option("--dim", min=1, help="The d these codes are for, the d you will train with (a "
                                     "multiple of -m): it sets the default ksub, and svd-kmeans takes this many SVD "
                                     "components.")] = 512,
    unique: Annotated[bool, typer.Option("--unique/--no-unique", help="Move items that share a full code to the "
                                         "nearest free code.")] = True,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Assign each item a code of M sub-ids from the training interactions (svd-kmeans, svd, bpr or random)."""
    from recjpq_cli.console import console, progress
    from recjpq_cli.stages import assign as stage
    from recjpq_cli.stages.render import assign_table

    cfg = stage.AssignConfig(dataset=dataset, out=out, strategy=strategy.value, M=code_length, ksub=centroids,
                             seed=seed, epochs=epochs, dim=dim, unique=unique, overwrite=overwrite)
    with user_errors(json, cfg.outputs(), cfg.inputs()):
        with progress(quiet=quiet, transient=True) as p:
            tasks: dict[str, Any] = {}

            def on_step(phase: str, done: int, total: int, info: str = "") -> None:
                if phase not in tasks:
                    tasks[phase] = p.add_task(phase, total=total, info="")
                p.update(tasks[phase], completed=done, total=total, info=info)

            def on_epoch(done: int, total: int, loss: float) -> None:
                on_step("bpr", done, total, f"loss {loss:.4f}")

            def on_plan(plan: stage.AssignPlan) -> None:
                # progress-like: shown on a terminal; a log or a script reads it from --json
                # (memory_estimate_bytes), so a failure's stderr stays its one Error line
                if not quiet and console().is_terminal:
                    console().print(f"assign {cfg.strategy}: {plan.describe()}")

            result = stage.run(cfg, on_epoch=on_epoch, on_step=on_step, on_plan=on_plan)
        if not quiet:
            assign_table(result)
        emit(result.facts(), json)
