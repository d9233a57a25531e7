"""``recjpq train``: fit a sequential recommender (the models of ``models/registry.py``) with RecJPQ or dense
item embeddings."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from recjpq_cli.commands.common import Device, DeviceOpt, JsonOpt, OverwriteOpt, QuietOpt, emit, user_errors
from recjpq_cli.models.registry import DEFAULT_MODEL, MODELS

Model = Enum("Model", {name: name for name in MODELS}, type=str)  # the registry's names (no torch import)


class Embedding(str, Enum):
    jpq = "jpq"
    full = "full"


class _Progress:
    """Rich progress: loss, sequences/s and ETA on stderr."""

    def __init__(self, steps_per_epoch: int, max_steps: int | None, time_limit: float | None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from recjpq_cli.console import console

        self.spe, self.max_steps, self.time_limit = steps_per_epoch, max_steps, time_limit
        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          console=console())
        self.p.start()
        self.task = None
        self.t0, self.seqs = time.perf_counter(), 0
        self.c = console()

    def start_epoch(self, epoch: int, done: int) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(f"epoch {epoch + 1}", total=self.spe, completed=done, info="")

    def advance(self, step: int, loss: float, n: int, steps: int = 1) -> None:
        """``steps`` more steps done (``n`` sequences), ``loss`` their mean."""
        self.seqs += n
        rate = self.seqs / max(1e-9, time.perf_counter() - self.t0)
        self.p.update(self.task, advance=steps, info=f"step {step} loss {loss:.4f} {rate:.0f} seq/s")

    def end_epoch(self, epoch: int, metrics: dict[str, float], best: float) -> None:
        self.c.print(f"epoch {epoch}: validation NDCG@10 {metrics['NDCG@10']:.4f} "
                     f"Recall@10 {metrics['Recall@10']:.4f} (best {best:.4f})")

    def close(self) -> None:
        self.p.stop()


def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder from `recjpq prepare`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.", show_default=False)],
    codes: Annotated[Optional[Path], typer.Option("--codes", help="CODES.npy from `recjpq assign` (RecJPQ embeddings).")] = None,
    embedding: Annotated[Optional[Embedding], typer.Option("--embedding", help="jpq (needs --codes) or full (dense baseline).")] = None,
    model: Annotated[Optional[Model], typer.Option("--model", help=f"Backbone and training task: {', '.join(MODELS)}. [default: {DEFAULT_MODEL}]", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of config keys.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="key=value (value parsed as YAML); repeatable.")] = None,
    device: DeviceOpt = Device.auto,
    max_epochs: Annotated[Optional[int], typer.Option("--max-epochs", min=1, help="Total epochs for the run.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Total optimiser steps for the run.")] = None,
    time_limit: Annotated[Optional[float], typer.Option("--time-limit", min=0.0, help="Total training seconds for the run.")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", min=1, help="Early stopping patience in epochs (overrides config).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pt.")] = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Train a sequential recommender; validates each epoch and keeps best.pt and last.pt."""
    from recjpq_cli import runfolder
    from recjpq_cli.config import parse_set
    from recjpq_cli.stages import train as stage
    from recjpq_cli.stages.render import train_table

    run_files = (out, *(out / name for name in (runfolder.CONFIG, runfolder.METRICS, runfolder.LAST,
                                                runfolder.BEST, runfolder.LOCK)))
    with user_errors(json, run_files, (dataset, codes, config)):
        req = stage.TrainRequest(
            dataset=dataset, out=out, codes=codes, embedding=embedding.value if embedding else None,
            model=model.value if model else None, config_file=config, overrides=parse_set(set_ or []),
            device=device.value, max_epochs=max_epochs, max_steps=max_steps, time_limit=time_limit,
            patience=patience, resume=resume, overwrite=overwrite, quiet=quiet,
        )
        result = stage.run(req, progress_cb=None if quiet else _Progress)
        if result.stop_reason == "nothing_to_do":  # a resume whose budget is spent: say so, write nothing
            if not quiet:
                from recjpq_cli.console import console

                console().print(result.message, highlight=False, soft_wrap=True)
            return
        if not quiet:
            train_table(result)
        emit(result.facts(), json)
        if result.stop_reason == "interrupted":
            raise typer.Exit(130)
