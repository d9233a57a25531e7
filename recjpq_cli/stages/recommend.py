"""``recommend``: top-k next items per user from a run or a model file, written as Parquet.

The input of each user is the whole known sequence (training, validation and test items); seen items are
filtered out of the ranking by default. Scoring is ``scoring.top_k`` over ``retrieval.topk``: the lists of evaluation's top-k, by the
pruned search of ``jpq/prune.py`` for large JPQ catalogues on the CPU, else PQTopK or the chunked torch path. Columns: ``user`` (raw id), ``rank`` (1..k), ``item`` (raw id), ``score``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recjpq_cli import scoring
from recjpq_cli.data import kinds
from recjpq_cli.data.io import atomic_file, check_not_input, check_output
from recjpq_cli.data.schema import Dataset, dataset_files, load_dataset
from recjpq_cli.errors import ConfigError, InputError, NonFiniteError


@dataclass(frozen=True)
class RecommendConfig:
    source: Path
    data: Path
    out: Path
    k: int = 10
    users_file: Path | None = None
    filter_seen: bool = True
    checkpoint: str = "best"
    batch_size: int = 256
    device: str = "auto"
    overwrite: bool = False


    def inputs(self) -> tuple[Path, ...]:
        from recjpq_cli.artifact import model_inputs

        users = (self.users_file,) if self.users_file is not None else ()
        data = dataset_files(self.data) if self.data is not None else []
        return (*model_inputs(self.source, self.checkpoint), *data, *users)

    def outputs(self) -> tuple[Path, ...]:
        return (self.out,)


@dataclass
class RecommendResult:
    source: Path
    out: Path
    users: int
    k: int
    rows: int
    filter_seen: bool
    seconds: float

    def facts(self) -> dict[str, Any]:
        return {"source": str(self.source), "out": str(self.out), "users": self.users, "k": self.k,
                "rows": self.rows, "filter_seen": self.filter_seen, "seconds": self.seconds}


def read_users(path: Path, ds: Dataset) -> np.ndarray:
    """Internal ids of the raw user ids in FILE (one a line; blank lines skipped, repeats kept once)."""
    if not path.is_file():
        raise InputError(f"{path}: users file not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the users file ({type(e).__name__})") from None
    # ids exactly as written (raw ids keep their spaces); lines of only white space are skipped
    wanted = pl.DataFrame({"raw_user": lines, "line": np.arange(1, len(lines) + 1)})
    wanted = wanted.filter(pl.col("raw_user").str.strip_chars() != "")
    wanted = wanted.unique("raw_user", keep="first", maintain_order=True)
    if wanted.height == 0:
        raise InputError(f"{path}: no user ids in the file (one raw user id a line)")
    known = ds.raw_users().to_frame().with_row_index("user")
    joined = wanted.join(known, on="raw_user", how="left", maintain_order="left")
    missing = joined.filter(pl.col("user").is_null())
    if missing.height:
        first = missing.row(0, named=True)
        more = f" and {missing.height - 1} more" if missing.height > 1 else ""
        raise InputError(f"{path}: unknown user id '{first['raw_user']}' (line {first['line']}){more}; "
                         f"ids must be raw user ids of {ds.path}")
    return joined["user"].to_numpy().astype(np.int64)


def run(cfg: RecommendConfig, progress: Any = None) -> RecommendResult:
    from recjpq_cli.artifact import load_model
    from recjpq_cli.device import resolve_device

    t0 = time.perf_counter()
    if cfg.k < 1:
        raise ConfigError(f"--k must be at least 1, got {cfg.k}")
    if cfg.out.is_dir():
        raise InputError(f"{cfg.out}: is a folder; --out takes the Parquet file to write")
    check_not_input(cfg.out, list(cfg.inputs()))
    check_output(cfg.out, cfg.overwrite, "recommendations file", (kinds.RECOMMENDATIONS,))
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.data)
    if cfg.k > ds.n_items:
        raise ConfigError(f"--k {cfg.k:,} is more than the {ds.n_items:,} items of {cfg.data}; "
                          f"use --k {ds.n_items} or fewer")
    users = read_users(cfg.users_file, ds) if cfg.users_file is not None else np.arange(ds.n_users, dtype=np.int64)
    lm = load_model(cfg.source, checkpoint=cfg.checkpoint, data=cfg.data, fingerprint=ds.fingerprint, device=device)
    try:
        task = progress.add_task("recommending", total=len(users), info="") if progress is not None else None
        ids, scores = scoring.top_k(lm.model, ds, users, ds.offsets[users + 1], cfg.k,
                                    max_len=int(lm.model_args["max_len"]), batch_size=cfg.batch_size,
                                    device=device, filter_seen=cfg.filter_seen,
                                    advance=(lambda n: progress.update(task, advance=n)) if task is not None else None)
    except NonFiniteError as e:
        raise InputError(f"{lm.file}: {e}") from None
    k = ids.shape[1]
    keep = np.isfinite(scores).ravel()  # only when fewer than k unseen items exist
    raw_items = lm.raw_items if lm.raw_items is not None else ds.raw_items()
    df = pl.DataFrame({
        "user": ds.raw_users().gather(pl.Series(np.repeat(users, k)[keep])),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[keep],
        "item": raw_items.gather(pl.Series(ids.ravel()[keep])).alias("item"),
        "score": scores.ravel()[keep],
    })
    with atomic_file(cfg.out) as tmp:
        df.write_parquet(tmp)
    return RecommendResult(source=cfg.source, out=cfg.out, users=len(users), k=k, rows=df.height,
                           filter_seen=cfg.filter_seen, seconds=time.perf_counter() - t0)
