"""``evaluate``: full-catalogue metrics of runs and model files, with long-tail splits and paired t-tests.

Every evaluated user's target is ranked against the whole catalogue (no sampled negatives) through
``scoring.ranks`` (the scoring loop training's validation uses; chunked, PQTopK for JPQ on the CPU). The input of a test user is everything before
the test item; of a validation user, the training items. With ``filter_seen`` the input items leave the
ranking, and a target that repeats one of them is a miss (counted and reported).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from recjpq_cli import scoring
from recjpq_cli.data import kinds, sequences
from recjpq_cli.data.io import atomic_file, check_not_input, check_output
from recjpq_cli.data.schema import Dataset, dataset_files, load_dataset
from recjpq_cli.errors import ConfigError, InputError, NonFiniteError
from recjpq_cli.metrics import LONG_TAIL_THRESHOLD, ndcg_at_k, per_user, summarise

DEFAULT_KS = (1, 5, 10, 20, 100)
ALPHA = 0.05
TEST_METRIC = "NDCG@10"
POPULARITY = "popularity"


@dataclass(frozen=True)
class EvaluateConfig:
    sources: tuple[Path, ...]
    data: Path
    split: str = "test"
    ks: tuple[int, ...] = DEFAULT_KS
    filter_seen: bool = True
    checkpoint: str = "best"
    batch_size: int = 256
    device: str = "auto"
    baseline: str | None = None
    sample_users: int | None = None
    seed: int = 0
    per_user: Path | None = None
    overwrite: bool = False


    def inputs(self) -> tuple[Path, ...]:
        from recjpq_cli.artifact import model_inputs

        models = [p for s in self.sources for p in model_inputs(s, self.checkpoint)]
        data = dataset_files(self.data) if self.data is not None else []
        return (*models, *data)

    def outputs(self) -> tuple[Path, ...]:
        return (self.per_user,) if self.per_user is not None else ()


@dataclass
class RunResult:
    name: str
    source: str | None
    kind: str  # run | model | baseline
    metrics: dict[str, float]
    long_tail: dict[str, Any]
    head: dict[str, Any]
    size: dict[str, Any]
    significance: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    ranks: np.ndarray | None = None  # (U,) 1-based, 0 = filtered out
    columns: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EvaluateResult:
    data: Path
    split: str
    ks: list[int]
    filter_seen: bool
    users: int
    users_total: int
    sampled_users: int | None
    seed: int | None
    repeated_targets: int
    long_tail_share: float
    runs: list[RunResult]
    per_user: Path | None
    seconds: float

    def facts(self) -> dict[str, Any]:
        common = {"split": self.split, "k": self.ks, "filter_seen": self.filter_seen,
                  "sampled_users": self.sampled_users, "seed": self.seed}
        runs = [{"name": r.name, **common, "source": r.source, "kind": r.kind, "users": self.users,
                 "metrics": r.metrics, "long_tail": r.long_tail, "head": r.head, "size": r.size,
                 "significance": r.significance, "seconds": r.seconds} for r in self.runs]
        return {"data": str(self.data), "users": self.users, "users_total": self.users_total,
                "repeated_targets": self.repeated_targets,
                "filtered_targets": self.repeated_targets if self.filter_seen else 0,
                "long_tail_threshold": LONG_TAIL_THRESHOLD, "long_tail_share": self.long_tail_share,
                "per_user": str(self.per_user) if self.per_user else None, "seconds": self.seconds,
                "runs": runs}


# ------------------------------------------------------------------------------------------ users


def select_users(ds: Dataset, split: str, sample: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, target positions) of the split, or a seeded sample of them in user order."""
    users, pos = sequences.eval_targets(ds, split)
    if sample is not None and sample < len(users):
        pick = np.sort(np.random.default_rng(seed).choice(len(users), sample, replace=False))
        users, pos = users[pick], pos[pick]
    return users, pos


def repeated_targets(ds: Dataset, users: np.ndarray, pos: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Per user: does the target repeat an item of the input (everything before it)?"""
    out = np.zeros(len(users), dtype=bool)
    for s in range(0, len(users), batch):
        rows, items = sequences.seen_items(ds, users[s:s + batch], pos[s:s + batch])
        rows, items = rows.numpy(), items.numpy()
        hit = items == ds.item[pos[s:s + batch]][rows]
        out[s + rows[hit]] = True
    return out


# ---------------------------------------------------------------------------------------- rankers


def popularity_ranks(ds: Dataset, users: np.ndarray, pos: np.ndarray, filter_seen: bool,
                     batch: int = 65_536) -> np.ndarray:
    """Ranks under the popularity ranking (training counts, ties to the lower id), the same for every user;
    with ``filter_seen`` the user's input items leave it. Vectorised: a global order plus a count per user."""
    counts = ds.train_counts()
    ids = np.arange(1, ds.n_items + 1)
    order = ids[np.lexsort((ids, -counts[1:]))]  # most popular first, ties to the lower id
    place = np.zeros(ds.n_items + 1, dtype=np.int64)
    place[order] = np.arange(ds.n_items)  # 0-based position of each item
    targets = ds.item[pos].astype(np.int64)
    ranks = place[targets] + 1
    if not filter_seen:
        return ranks
    for s in range(0, len(users), batch):
        rows, items = sequences.seen_items(ds, users[s:s + batch], pos[s:s + batch])
        pairs = np.unique(rows.numpy() * (ds.n_items + 1) + items.numpy())
        r, it = pairs // (ds.n_items + 1), pairs % (ds.n_items + 1)
        t = targets[s:s + batch]
        before = place[it] < place[t[r]]
        ranks[s:s + batch] -= np.bincount(r[before], minlength=len(t))
        ranks[s + r[it == t[r]]] = 0
    return ranks


# ------------------------------------------------------------------------------------- statistics


def _subset(columns: dict[str, torch.Tensor], mask: np.ndarray) -> dict[str, Any]:
    m = torch.from_numpy(mask)
    return {"share": float(mask.mean()) if len(mask) else 0.0, "users": int(mask.sum()),
            "metrics": summarise({k: v[m] for k, v in columns.items()})}


def significance(runs: list[RunResult], ndcg: list[np.ndarray]) -> None:
    """Paired t-test of each run's per-user NDCG@10 against the first run; alpha 0.05, Bonferroni."""
    from scipy.stats import ttest_rel

    ref = runs[0].name
    n_tests = max(1, len(runs) - 1)
    alpha = ALPHA / n_tests
    runs[0].significance = {"reference": ref, "is_reference": True, "metric": TEST_METRIC, "test": "paired t-test",
                            "alpha": ALPHA, "alpha_corrected": alpha, "t": None, "p": None, "mark": None}
    for r, x in zip(runs[1:], ndcg[1:], strict=True):
        diff = x - ndcg[0]
        if len(x) < 2 or not np.any(diff != 0):
            t, p = float("nan"), 1.0
        else:
            t, p = (float(v) for v in ttest_rel(x, ndcg[0]))
        mark = "=" if not (p < alpha) else ("+" if diff.mean() > 0 else "-")
        r.significance = {"reference": ref, "is_reference": False, "metric": TEST_METRIC,
                          "test": "paired t-test", "alpha": ALPHA, "alpha_corrected": alpha,
                          "t": t, "p": p, "mark": mark}


# ------------------------------------------------------------------------------------------- run


def _advancer(progress: Any, label: str, total: int) -> Callable[[int], None] | None:
    """A callback that moves a new progress bar on by n users (None without a progress display)."""
    if progress is None:
        return None
    task = progress.add_task(label, total=total, info="")
    return lambda n: progress.update(task, advance=n)


def _names(sources: tuple[Path, ...]) -> list[str]:
    short = [Path(s).name or str(s) for s in sources]
    return [str(s) if short.count(n) > 1 else n for s, n in zip(sources, short, strict=True)]


def run(cfg: EvaluateConfig, progress: Any = None) -> EvaluateResult:
    """Evaluate every source (and the popularity baseline) on the same users; write --per-user if asked."""
    from recjpq_cli.artifact import load_model
    from recjpq_cli.device import resolve_device

    t0 = time.perf_counter()
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {cfg.split!r}")
    if not cfg.sources and cfg.baseline is None:
        raise ConfigError("nothing to evaluate: give a run folder or model file, or --baseline popularity")
    if cfg.per_user is not None:
        check_not_input(cfg.per_user, list(cfg.inputs()), "--per-user")
        check_output(cfg.per_user, cfg.overwrite, "per-user file", (kinds.PER_USER,))
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.data)
    users_total = len(sequences.eval_targets(ds, cfg.split)[0])
    users, pos = select_users(ds, cfg.split, cfg.sample_users, cfg.seed)
    if len(users) == 0:
        raise ConfigError(f"{cfg.data}: no user has a {cfg.split} item to evaluate")
    sampled = cfg.sample_users is not None and cfg.sample_users < users_total
    targets = ds.item[pos].astype(np.int64)
    long_tail = ds.train_counts()[targets] < LONG_TAIL_THRESHOLD
    repeats = repeated_targets(ds, users, pos)
    ks = sorted(set(cfg.ks))

    # Load (and check) every model before the long work, so a wrong one fails fast.
    loaded = [load_model(s, checkpoint=cfg.checkpoint, data=cfg.data, fingerprint=ds.fingerprint, device=device)
              for s in cfg.sources]
    names = _names(cfg.sources)
    runs: list[RunResult] = []
    ndcg10: list[np.ndarray] = []

    def finish(name: str, source: str | None, kind: str, ranks: np.ndarray, size: dict, seconds: float) -> None:
        r = torch.from_numpy(ranks)
        cols = per_user(r, ks)
        runs.append(RunResult(name=name, source=source, kind=kind, metrics=summarise(cols),
                              long_tail=_subset(cols, long_tail), head=_subset(cols, ~long_tail), size=size,
                              seconds=seconds, ranks=ranks, columns={k: v.numpy() for k, v in cols.items()}))
        ndcg10.append(ndcg_at_k(r, 10).numpy())

    for lm, name in zip(loaded, names, strict=True):
        t1 = time.perf_counter()
        try:
            ranks = scoring.ranks(lm.model, ds, users, pos, max_len=int(lm.model_args["max_len"]),
                                  batch_size=cfg.batch_size, device=device, filter_seen=cfg.filter_seen,
                                  advance=_advancer(progress, f"evaluating {name}", len(users)))
        except NonFiniteError as e:
            raise InputError(f"{lm.file}: {e}") from None
        finish(name, str(lm.source), lm.kind, ranks, lm.size, time.perf_counter() - t1)
    if cfg.baseline == POPULARITY:
        t1 = time.perf_counter()
        ranks = popularity_ranks(ds, users, pos, cfg.filter_seen)
        size = {"parameters": 0, "item_table_bytes": (ds.n_items + 1) * 8, "model_bytes": (ds.n_items + 1) * 8,
                "item_table_ratio": None, "model_ratio": None, "file_bytes": None}
        finish(POPULARITY, None, "baseline", ranks, size, time.perf_counter() - t1)
    significance(runs, ndcg10)

    result = EvaluateResult(
        data=cfg.data, split=cfg.split, ks=ks, filter_seen=cfg.filter_seen, users=len(users),
        users_total=users_total, sampled_users=len(users) if sampled else None, seed=cfg.seed if sampled else None,
        repeated_targets=int(repeats.sum()), long_tail_share=float(long_tail.mean()), runs=runs,
        per_user=cfg.per_user, seconds=0.0)
    if cfg.per_user is not None:
        write_per_user(cfg.per_user, ds, users, targets, long_tail, runs[0])
    result.seconds = time.perf_counter() - t0
    return result


def write_per_user(path: Path, ds: Dataset, users: np.ndarray, targets: np.ndarray, long_tail: np.ndarray,
                   r: RunResult) -> None:
    """One row per evaluated user of the first run; metric columns average to the reported metrics."""
    assert r.ranks is not None
    raw_users = ds.raw_users().gather(pl.Series(users))
    raw_items = ds.raw_items().gather(pl.Series(targets))
    df = pl.DataFrame({
        "user": raw_users, "target": raw_items, "rank": r.ranks.astype(np.int64), "long_tail": long_tail,
        **r.columns,
    }).with_columns(pl.when(pl.col("rank") > 0).then(pl.col("rank")).alias("rank"))
    with atomic_file(path) as tmp:
        df.write_parquet(tmp)
