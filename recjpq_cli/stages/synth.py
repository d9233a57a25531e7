"""``synth``: a realistic synthetic interaction log with sequential structure, fully vectorised.

Items fall into latent groups (about ``group_size`` items each) and each group lists its items in a fixed
random order, its *chain*. A user's log is a series of runs: a run starts at an item of a group and walks
along the group's chain, one item per interaction, until it jumps (probability ``1 - follow`` at each step)
to a fresh start, in the same group with probability ``stay`` and otherwise in a new group drawn by
popularity. Group popularity is long-tailed (the sum of Zipf item weights); starts within a group are drawn
by a tempered (square-root) item weight, so no item dominates its group and immediate repeats are rare.
A model can learn "the next item in the chain"; a popularity ranking cannot.

Every item 1..N appears at least once and every user has at least ``MIN_LEN`` interactions, so ``prepare``
with its default filters keeps the whole catalogue. Memory is a few arrays of the output's length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recjpq_cli.data import kinds
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
    follow: float = 0.6  # probability that the next item is the next one in the group's chain
    stay: float = 0.5  # after a jump: probability of staying in the same group
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


def _catalogue(rng: np.random.Generator, n: int, group_size: int, zipf: float):
    """Items in chains: ``chain`` lists items group by group; group g is ``chain[first[g]:first[g] + size[g]]``.

    Returns (chain, first, size, group weight, cumulative tempered start weight along ``chain``).
    """
    n_groups = max(1, n // group_size)
    weight = 1.0 / np.power(rng.permutation(n).astype(np.float64) + 1.0, zipf)  # Zipf by a random rank
    group_of = rng.integers(0, n_groups, n)
    shuffled = rng.permutation(n)
    chain = shuffled[np.argsort(group_of[shuffled], kind="stable")].astype(np.int32)  # random order inside
    size = np.bincount(group_of, minlength=n_groups)
    first = np.cumsum(size) - size
    group_weight = np.bincount(group_of, weights=weight, minlength=n_groups)
    start_cum = np.cumsum(np.sqrt(weight[chain]))
    keep = size > 0
    return chain, first[keep].astype(np.int32), size[keep].astype(np.int32), group_weight[keep], start_cum


def _search(cum: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``searchsorted(cum, targets, side="right")`` as int32, with the targets sorted first: random
    binary searches into a large array miss the cache at every step, sorted ones walk it in order."""
    order = np.argsort(targets)
    out = np.empty(targets.size, dtype=np.int32)
    out[order] = np.searchsorted(cum, targets[order], side="right")
    return out


def _runs(rng: np.random.Generator, k: int, follow: float, user_first: np.ndarray, idx_t: type) -> tuple[np.ndarray, np.ndarray]:
    """Runs: one starts at each user's first interaction and wherever the walk jumps. Returns each
    interaction's run index ``(k,)`` and each run's first interaction ``(r,)``."""
    run_start = rng.random(k, dtype=np.float32) >= follow
    run_start[user_first] = True
    run_of = np.cumsum(run_start, dtype=idx_t)  # (k,) run index + 1
    run_of -= 1
    run_begin = np.flatnonzero(run_start).astype(idx_t)
    return run_of, run_begin


def _run_groups(rng: np.random.Generator, r: int, stay: float, first_runs: np.ndarray, group_weight: np.ndarray,
                idx_t: type) -> np.ndarray:
    """Each run's group: a new one (by popularity) at a user's start, else with probability 1 - stay."""
    new_group = rng.random(r, dtype=np.float32) >= stay
    new_group[first_runs] = True
    g_cum = np.cumsum(group_weight)
    drawn = np.searchsorted(g_cum, rng.random(int(new_group.sum())) * g_cum[-1], side="right")
    group = np.empty(r, dtype=np.int32)
    group[new_group] = np.minimum(drawn, group_weight.size - 1)
    return group[np.maximum.accumulate(np.where(new_group, np.arange(r, dtype=idx_t), 0))]


def _run_starts(rng: np.random.Generator, group: np.ndarray, first: np.ndarray, size: np.ndarray,
                start_cum: np.ndarray) -> np.ndarray:
    """Each run's start in its group's chain (an offset from the group's first element), by the tempered weight."""
    g_first, g_size = first[group], size[group]
    lo = np.where(g_first > 0, start_cum[np.maximum(g_first - 1, 0)], 0.0)
    hi = start_cum[g_first + g_size - 1]
    start = _search(start_cum, lo + rng.random(group.size) * (hi - lo))
    del lo, hi
    return np.clip(start, g_first, g_first + g_size - 1) - g_first


def _walk(k: int, run_of: np.ndarray, run_begin: np.ndarray, start: np.ndarray, group: np.ndarray,
          chain: np.ndarray, first: np.ndarray, size: np.ndarray, idx_t: type) -> np.ndarray:
    """Step j of a run is chain element (start + j) mod size of the run's group: the 0-based item of each
    interaction."""
    step = np.arange(k, dtype=idx_t)
    step -= run_begin[run_of]
    step += start[run_of]
    g = group[run_of]
    step %= size[g]
    step += first[g]
    del g
    return chain[step]


def _cover_every_item(rng: np.random.Generator, item: np.ndarray, n: int, idx_t: type) -> None:
    """Every item at least once, in place: missing items replace occurrences that are not an item's first."""
    seen = np.zeros(n, dtype=bool)
    seen[item] = True
    missing = np.flatnonzero(~seen)
    if missing.size:
        spare = np.ones(item.size, dtype=bool)
        spare[pl.Series(item).arg_unique().to_numpy()] = False
        spare_idx = np.flatnonzero(spare).astype(idx_t)
        del spare
        item[rng.choice(spare_idx, missing.size, replace=False)] = rng.permutation(missing)


def _timestamps(rng: np.random.Generator, k: int, u: int, lengths: np.ndarray, user_first: np.ndarray) -> np.ndarray:
    """Seconds that increase within a user (exponential gaps, mean an hour); each user starts at a random time."""
    gaps = (rng.standard_exponential(k, dtype=np.float32) * 3600.0).astype(np.int64)
    gaps += 1
    gaps[user_first] = 0
    ts = np.cumsum(gaps)
    del gaps
    ts += np.repeat(rng.integers(1_500_000_000, 1_600_000_000, u) - ts[user_first], lengths)
    return ts


def generate(cfg: SynthConfig) -> pl.DataFrame:
    """The log as a DataFrame ``user_id, item_id, timestamp`` sorted by user then time."""
    rng = np.random.default_rng(cfg.seed)
    n, k, u = cfg.items, cfg.interactions, cfg.users
    idx_t = np.int32 if k < 2**31 else np.int64
    lengths = _lengths(rng, u, k)
    user_first = (np.cumsum(lengths) - lengths).astype(idx_t)
    chain, first, size, group_weight, start_cum = _catalogue(rng, n, cfg.group_size, cfg.zipf)
    run_of, run_begin = _runs(rng, k, cfg.follow, user_first, idx_t)
    group = _run_groups(rng, run_begin.size, cfg.stay, run_of[user_first], group_weight, idx_t)
    start = _run_starts(rng, group, first, size, start_cum)
    item = _walk(k, run_of, run_begin, start, group, chain, first, size, idx_t)
    del run_of, run_begin, start, group
    _cover_every_item(rng, item, n, idx_t)
    item += 1
    ts = _timestamps(rng, k, u, lengths, user_first)
    user = np.repeat(np.arange(1, u + 1, dtype=np.int32), lengths)
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
    check_output(cfg.out, cfg.overwrite, "output file", kinds=(kinds.SYNTH_LOG,))
    df = generate(cfg)
    with atomic_file(cfg.out) as tmp:
        if suffix == ".parquet":
            df.write_parquet(tmp)
        else:
            df.write_csv(tmp, separator="," if suffix == ".csv" else "\t")
    return SynthResult(out=cfg.out, users=cfg.users, items=cfg.items, interactions=cfg.interactions,
                       seconds=time.perf_counter() - t0)
