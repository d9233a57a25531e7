"""``prepare``: a raw interaction log to a leave-one-out sequential dataset folder."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recjpq_cli.data import readers
from recjpq_cli.data.io import atomic_dir, check_output, sha256_file, write_yaml
from recjpq_cli.data.schema import DATASET_FORMAT_VERSION, DATASET_YAML, INTERACTIONS, ITEMS, USERS
from recjpq_cli.errors import ConfigError, InputError

LONG_TAIL_THRESHOLD = 5


@dataclass(frozen=True)
class PrepareConfig:
    input: Path
    out: Path
    format: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    time_col_given: bool = False
    min_rating: float | None = None
    min_user_interactions: int = 5
    min_item_interactions: int = 0
    overwrite: bool = False

    def options(self) -> dict[str, Any]:
        """The options that shape the dataset (they enter its fingerprint)."""
        return {
            "format": self.format, "user_col": self.user_col, "item_col": self.item_col,
            "time_col": self.time_col, "min_rating": self.min_rating,
            "min_user_interactions": self.min_user_interactions,
            "min_item_interactions": self.min_item_interactions,
        }


@dataclass
class PrepareResult:
    out: Path
    format: str
    detected: bool
    n_users: int
    n_items: int
    n_interactions: int
    fingerprint: str
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def facts(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def _load(cfg: PrepareConfig, fmt: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """Read the raw rows (file order kept), drop missing values and low ratings, counting both."""
    lf = readers.scan(cfg.input, fmt, user_col=cfg.user_col, item_col=cfg.item_col,
                      time_col=cfg.time_col, time_col_given=cfg.time_col_given)
    has_rating = "rating" in lf.collect_schema().names()
    if cfg.min_rating is not None and not has_rating:
        raise InputError(f"{cfg.input}: --min-rating given, but the {fmt} file has no rating column")
    try:
        df = lf.with_row_index("_row").collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{cfg.input}: cannot read as {fmt}: {readers.polars_message(e)}") from None
    if df.height == 0:
        raise InputError(f"{cfg.input}: no interactions in the file")
    dropped: dict[str, int] = {}
    n0 = df.height
    needed = ["raw_user", "raw_item"] + (["timestamp"] if df["timestamp"].null_count() < n0 else [])
    df = df.drop_nulls(needed)
    dropped["missing_values"] = n0 - df.height
    if df["timestamp"].null_count() == df.height:  # no time: the file order is the time order
        df = df.with_columns(pl.col("_row").cast(pl.Int64).alias("timestamp"))
    if cfg.min_rating is not None:
        n1 = df.height
        df = df.filter(pl.col("rating") >= cfg.min_rating)
        dropped["below_min_rating"] = n1 - df.height
    return df.select("raw_user", "raw_item", "timestamp", "_row"), dropped


def _numeric_if_possible(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """Raw ids order numerically when all of them are integers, else lexicographically."""
    if df[col].dtype.is_integer():
        return df
    s = df[col].cast(pl.String)
    as_int = s.str.strip_chars().cast(pl.Int64, strict=False)
    if as_int.null_count() == 0:
        return df.with_columns(as_int.alias(col))
    return df.with_columns(s.alias(col))


def _filter(df: pl.DataFrame, min_user: int, min_item: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """Iterative k-core style filtering until stable."""
    removed = {"filtered_users_rows": 0, "filtered_items_rows": 0}
    while True:
        n = df.height
        if min_item > 1:
            df = df.filter(pl.len().over("raw_item") >= min_item)
            removed["filtered_items_rows"] += n - df.height
        m = df.height
        if min_user > 1:
            df = df.filter(pl.len().over("raw_user") >= min_user)
            removed["filtered_users_rows"] += m - df.height
        if df.height == n:
            return df, removed


def _fingerprint(source_sha: str, options: dict[str, Any], raw_items: pl.Series) -> str:
    h = hashlib.sha256()
    h.update(source_sha.encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    h.update(hashlib.sha256(raw_items.str.join("\n").item().encode()).hexdigest().encode())
    return h.hexdigest()


def run(cfg: PrepareConfig) -> PrepareResult:
    t0 = time.perf_counter()
    if cfg.min_user_interactions < 1 or cfg.min_item_interactions < 0:
        raise ConfigError("--min-user-interactions must be >= 1 and --min-item-interactions >= 0")
    readers.check_input_file(cfg.input)
    check_output(cfg.out, cfg.overwrite, "dataset folder")
    detected = cfg.format is None
    fmt = cfg.format or readers.detect_format(cfg.input)
    df, dropped = _load(cfg, fmt)
    df = _numeric_if_possible(_numeric_if_possible(df, "raw_user"), "raw_item")
    df, removed = _filter(df, cfg.min_user_interactions, cfg.min_item_interactions)
    dropped.update(removed)
    if df.height == 0:
        raise InputError(f"{cfg.input}: no interactions left after filtering "
                         f"(min user interactions {cfg.min_user_interactions}, "
                         f"min item interactions {cfg.min_item_interactions})")

    # Ids: users 0..n-1 and items 1..n in ascending raw id; stable time order per user.
    df = df.with_columns(
        (pl.col("raw_user").rank("dense") - 1).cast(pl.Int32).alias("user"),
        pl.col("raw_item").rank("dense").cast(pl.Int32).alias("item"),
    ).sort(["user", "timestamp", "_row"])
    user = df["user"].to_numpy()
    n_users = int(user[-1]) + 1
    lengths = np.bincount(user, minlength=n_users)
    starts = np.zeros(n_users, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    n = df.height
    pos = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
    n_of = np.repeat(lengths, lengths)
    split_code = np.where(n_of < 3, 0, np.where(pos == n_of - 1, 2, np.where(pos == n_of - 2, 1, 0)))
    split = pl.Series("split", np.array(["train", "val", "test"])[split_code], pl.String)
    interactions = pl.DataFrame({
        "user": df["user"], "item": df["item"], "timestamp": df["timestamp"].cast(pl.Int64),
        "pos": pl.Series(pos.astype(np.int32)), "split": split,
    })
    n_items = int(df["item"].max())
    train_count = np.bincount(df["item"].to_numpy()[split_code == 0], minlength=n_items + 1)[1:]
    items = (df.lazy().group_by("item").agg(pl.col("raw_item").first()).sort("item")
             .select(pl.col("item"), pl.col("raw_item").cast(pl.String)).collect()
             .with_columns(pl.Series("train_count", train_count.astype(np.int32))))
    users = (df.lazy().group_by("user").agg(pl.col("raw_user").first()).sort("user")
             .select(pl.col("user"), pl.col("raw_user").cast(pl.String)).collect())
    del df

    source_sha = sha256_file(cfg.input)
    options = cfg.options() | {"format": fmt}
    fingerprint = _fingerprint(source_sha, options, items["raw_item"])
    stats = {
        "sequence_length": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                            "max": int(lengths.max())},
        "long_tail_share": float((train_count < LONG_TAIL_THRESHOLD).mean()),
        "split_sizes": {"train": int((split_code == 0).sum()), "val": int((split_code == 1).sum()),
                        "test": int((split_code == 2).sum())},
        "dropped_rows": dropped,
    }
    meta = {
        "format_version": DATASET_FORMAT_VERSION,
        "n_users": n_users, "n_items": n_items, "n_interactions": n,
        "fingerprint": fingerprint,
        "source": {"path": str(cfg.input.resolve()), "sha256": source_sha, "format": fmt},
        "options": options,
        "stats": stats,
    }
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        interactions.write_parquet(tmp / INTERACTIONS, statistics=False)
        users.write_parquet(tmp / USERS)
        items.write_parquet(tmp / ITEMS)
        write_yaml(tmp / DATASET_YAML, meta)
    return PrepareResult(out=cfg.out, format=fmt, detected=detected, n_users=n_users, n_items=n_items,
                         n_interactions=n, fingerprint=fingerprint, stats=stats,
                         seconds=time.perf_counter() - t0)
