"""``recjpq evaluate``: full-catalogue metrics of runs and model files, side by side."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from recjpq_cli.commands.common import Device, DeviceOpt, JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors


class Split(str, Enum):
    test = "test"
    val = "val"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"


class Baseline(str, Enum):
    popularity = "popularity"


CheckpointOpt = Annotated[Checkpoint, typer.Option("--checkpoint", help="Which checkpoint of a run folder to read.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset folder the model was trained on. Default: the one the first run or model records.", show_default=False)]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Users scored at once.")]
FilterOpt = Annotated[bool, typer.Option("--filter-seen/--no-filter-seen", help="Remove the user's input items from the ranking.")]


def parse_ks(value: str) -> list[int]:
    """``1,5,10`` -> [1, 5, 10]; anything else (or k < 1) is a usage error (exit 2)."""
    try:
        ks = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 1,5,10, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"every k must be at least 1, got {value!r}")
    return ks


def evaluate(
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Run folders (RUN_DIR/best.pt) and/or model files from `recjpq compress`.", show_default=False, metavar="RUN_DIR_OR_MODEL")] = None,
    data: DataOpt = None,
    split: Annotated[Split, typer.Option("--split", help="Whose targets to rank.")] = Split.test,
    k: Annotated[str, typer.Option("--k", help="Cut-offs for NDCG@k and Recall@k, comma-separated.")] = "1,5,10,20,100",
    filter_seen: FilterOpt = True,
    checkpoint: CheckpointOpt = Checkpoint.best,
    batch_size: BatchOpt = 256,
    device: DeviceOpt = Device.auto,
    baseline: Annotated[Optional[Baseline], typer.Option("--baseline", help="Add a row for a non-learned ranking (training counts).")] = None,
    sample_users: Annotated[Optional[int], typer.Option("--sample-users", min=1, help="Evaluate a seeded sample of N users.", metavar="N")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample-users.")] = 0,
    per_user: Annotated[Optional[Path], typer.Option("--per-user", help="Per-user ranks and metrics of the first run (Parquet).", metavar="PATH")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Rank every user's held-out item against the whole catalogue; one row per run, with paired t-tests."""
    ks = parse_ks(k)
    if not sources and baseline is None:
        raise typer.BadParameter("give a run folder or model file, or --baseline popularity",
                                 param_hint="SOURCES")
    from recjpq_cli.console import progress
    from recjpq_cli.dataset_record import default_data
    from recjpq_cli.stages import evaluate as stage
    from recjpq_cli.stages.render import evaluate_table

    with user_errors(json):
        data = default_data(data, sources[0] if sources else None, checkpoint.value)
    cfg = stage.EvaluateConfig(
        sources=tuple(sources or ()), data=data, split=split.value, ks=tuple(ks), filter_seen=filter_seen,
        checkpoint=checkpoint.value, batch_size=batch_size, device=device.value,
        baseline=baseline.value if baseline else None, sample_users=sample_users, seed=seed,
        per_user=per_user, overwrite=overwrite,
    )
    with user_errors(json, cfg.outputs(), cfg.inputs()):
        with progress(quiet, transient=True) as p:
            result = stage.run(cfg, p)
        if not quiet:
            evaluate_table(result)
        emit(result.facts(), json)
