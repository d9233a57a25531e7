"""``synth``: a realistic synthetic interaction log with sequential structure, fully vectorised.

Items fall into latent groups; a user's next item comes from the current group with probability
``stay`` (else a new group is drawn by popularity), and within a group by a long-tailed (Zipf) popularity.
Every item 1..N appears at least once, every user has at least ``min_len`` interactions, so
``prepare`` with default filters keeps the whole catalogue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recjpq_cli.data.io import atomic_file, check_output
from recjpq_cli.errors import ConfigError

MIN_LEN = 5


@dataclass(frozen=True)
class SynthConfig:
    users: int
    items: int
    interactions: int
    out: Path
    seed: int = 0
    group_size: int = 50
    stay: float = 0.8
    zipf: float = 1.0
    overwrite: bool = False


@dataclass
class SynthResult:
    out: Path
    users: int
    items: int
    interactions: int
    seconds: float

    def facts(self) -> dict:
        return {"out": str(self.out), "users": self.users, "items": self.items,
                "interactions": self.interactions, "seconds": self.seconds}


def _lengths(rng: np.random.Generator, users: int, total: int) -> np.ndarray:
    """Varied (log-normal) sequence lengths, each >= MIN_LEN, summing exactly to ``total``."""
    w = rng.lognormal(0.0, 1.0, users)
    extra = total - MIN_LEN * users
    lengths = MIN_LEN + np.floor(w / w.sum() * extra).astype(np.int64)
    short = total - int(lengths.sum())
    if short:
        lengths[rng.choice(users, short, replace=short > users)] += 1 if short <= users else 0
        if short > users:  # pragma: no cover - only when floor lost more than one per user
            lengths += np.bincount(rng.integers(0, users, total - int(lengths.sum())), minlength=users)
    return lengths


def generate(cfg: SynthConfig) -> pl.DataFrame:
    """The log as a DataFrame ``user_id, item_id, timestamp`` sorted by user then time."""
    rng = np.random.default_rng(cfg.seed)
    n, k, u = cfg.items, cfg.interactions, cfg.users
    lengths = _lengths(rng, u, k)
    user = np.repeat(np.arange(1, u + 1, dtype=np.int64), lengths)

    # Items: random group membership, Zipf popularity by a random rank.
    n_groups = max(1, n // cfg.group_size)
    popularity = 1.0 / np.power(rng.permutation(n).astype(np.float64) + 1.0, cfg.zipf)
    group_of = rng.integers(0, n_groups, n)
    order = np.argsort(group_of, kind="stable")  # items sorted by group
    cum = np.cumsum(popularity[order])
    group_end = np.searchsorted(group_of[order], np.arange(n_groups), side="right")
    group_start = np.concatenate([[0], group_end[:-1]])
    cum_before = np.where(group_start > 0, cum[np.maximum(group_start - 1, 0)], 0.0)
    group_weight = np.where(group_end > group_start, cum[np.maximum(group_end - 1, 0)] - cum_before, 0.0)

    # The group chain: a switch at each user's start and with probability 1 - stay elsewhere.
    starts = np.zeros(k, dtype=bool)
    starts[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    switch = starts | (rng.random(k) > cfg.stay)
    idx = np.flatnonzero(switch)
    new_group = np.searchsorted(np.cumsum(group_weight), rng.random(idx.size) * group_weight.sum(), side="right")
    new_group = np.minimum(new_group, n_groups - 1)
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(k), 0))
    group = np.empty(k, dtype=np.int64)
    group[idx] = new_group
    group = group[last_switch]
    target = cum_before[group] + rng.random(k) * group_weight[group]
    item = order[np.minimum(np.searchsorted(cum, target, side="right"), n - 1)].astype(np.int64)

    # Every item at least once: missing items replace spare repeats (not first occurrences).
    seen = np.zeros(n, dtype=bool)
    seen[item] = True
    missing = np.flatnonzero(~seen)
    if missing.size:
        first = np.zeros(k, dtype=bool)
        _, first_idx = np.unique(item, return_index=True)
        first[first_idx] = True
        spare = np.flatnonzero(~first)
        item[rng.choice(spare, missing.size, replace=False)] = rng.permutation(missing)
    item += 1

    gaps = rng.exponential(3600.0, k).astype(np.int64) + 1
    gaps[starts] = rng.integers(1_500_000_000, 1_600_000_000, u)
    ts = np.cumsum(gaps)  # increases within a user; each user starts at a fresh random time
    ts = ts - np.repeat(ts[starts] - gaps[starts], lengths)
    return pl.DataFrame({"user_id": user, "item_id": item, "timestamp": ts})


def run(cfg: SynthConfig) -> SynthResult:
    t0 = time.perf_counter()
    if cfg.users < 1 or cfg.items < 1:
        raise ConfigError("--users and --items must be at least 1")
    if cfg.interactions < max(cfg.items, MIN_LEN * cfg.users):
        raise ConfigError(f"--interactions must be at least max(items, {MIN_LEN} x users) = "
                          f"{max(cfg.items, MIN_LEN * cfg.users)} so every item and user survives prepare")
    suffix = cfg.out.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        raise ConfigError(f"{cfg.out}: output must end in .csv, .tsv or .parquet")
    check_output(cfg.out, cfg.overwrite, "output file")
    df = generate(cfg)
    with atomic_file(cfg.out) as tmp:
        if suffix == ".parquet":
            df.write_parquet(tmp)
        else:
            df.write_csv(tmp, separator="," if suffix == ".csv" else "\t")
    return SynthResult(out=cfg.out, users=cfg.users, items=cfg.items, interactions=cfg.interactions,
                       seconds=time.perf_counter() - t0)
