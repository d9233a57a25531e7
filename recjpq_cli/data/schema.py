"""The on-disk contracts between stages (see docs/formats.md), and their checked readers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recjpq_cli.data.io import read_yaml
from recjpq_cli.errors import InputError

DATASET_FORMAT_VERSION = 1
CODES_FORMAT_VERSION = 1
CHECKPOINT_FORMAT_VERSION = 1

INTERACTIONS = "interactions.parquet"
USERS = "users.parquet"
ITEMS = "items.parquet"
DATASET_YAML = "dataset.yaml"
SPLITS = ("train", "val", "test")

INTERACTIONS_SCHEMA = {"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64, "pos": pl.Int32,
                       "split": pl.String}
USERS_SCHEMA = {"user": pl.Int32, "raw_user": pl.String}
ITEMS_SCHEMA = {"item": pl.Int32, "raw_item": pl.String, "train_count": pl.Int32}


def read_dataset_meta(ds_dir: Path) -> dict[str, Any]:
    """``dataset.yaml`` of a dataset folder, checked; errors name the folder and the fix."""
    ds_dir = Path(ds_dir)
    if not ds_dir.exists():
        raise InputError(f"{ds_dir}: dataset folder not found (make one with `recjpq prepare`)")
    if not ds_dir.is_dir():
        raise InputError(f"{ds_dir}: not a dataset folder (expected the folder written by `recjpq prepare`)")
    meta_path = ds_dir / DATASET_YAML
    if not meta_path.is_file():
        raise InputError(f"{ds_dir}: not a recjpq dataset folder ({DATASET_YAML} is missing)")
    meta = read_yaml(meta_path, "dataset description")
    if meta.get("format_version") != DATASET_FORMAT_VERSION:
        raise InputError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r} "
                         f"(this recjpq reads {DATASET_FORMAT_VERSION})")
    for key in ("n_users", "n_items", "n_interactions", "fingerprint"):
        if key not in meta:
            raise InputError(f"{meta_path}: key '{key}' is missing")
    for key in ("n_users", "n_items", "n_interactions"):
        v = meta[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{meta_path}: '{key}' must be a positive integer, got {v!r}; prepare the dataset again")
    if not isinstance(meta["fingerprint"], str):
        raise InputError(f"{meta_path}: 'fingerprint' must be text, got {meta['fingerprint']!r}")
    for f in (INTERACTIONS, USERS, ITEMS):
        if not (ds_dir / f).is_file():
            raise InputError(f"{ds_dir}: {f} is missing; prepare the dataset again")
    return meta


@dataclass
class Dataset:
    """A prepared dataset in memory, as flat numpy arrays ordered by (user, pos).

    ``offsets[u]:offsets[u+1]`` is user u's whole sequence; ``split`` codes 0=train, 1=val, 2=test.
    """

    path: Path
    meta: dict[str, Any]
    item: np.ndarray  # (N,) int32, 1..n_items
    split: np.ndarray  # (N,) int8
    offsets: np.ndarray  # (n_users + 1,) int64

    @property
    def n_users(self) -> int:
        return int(self.meta["n_users"])

    @property
    def n_items(self) -> int:
        return int(self.meta["n_items"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def lengths(self, upto: str = "test") -> np.ndarray:
        """Per-user sequence length counting splits up to and including ``upto``."""
        keep = SPLITS.index(upto)
        counts = np.bincount(self.user_index(), weights=(self.split <= keep), minlength=self.n_users)
        return counts.astype(np.int64)

    def user_index(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.offsets))

    def train_counts(self) -> np.ndarray:
        """Training interactions per item, indexed by item id (index 0 = padding = 0)."""
        return np.bincount(self.item[self.split == 0], minlength=self.n_items + 1).astype(np.int64)

    def targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, target positions) of the users that have an interaction in ``split``."""
        code = SPLITS.index(split)
        pos = np.flatnonzero(self.split == code)
        users = np.searchsorted(self.offsets, pos, side="right") - 1
        return users.astype(np.int64), pos.astype(np.int64)

    def raw_users(self) -> pl.Series:
        return pl.read_parquet(self.path / USERS, columns=["raw_user"])["raw_user"]

    def raw_items(self) -> pl.Series:
        """Raw item ids indexed by item id (index 0 is the padding placeholder)."""
        s = pl.read_parquet(self.path / ITEMS, columns=["raw_item"])["raw_item"]
        return pl.concat([pl.Series("raw_item", [None], pl.String), s])


def dataset_files(ds_dir: Path) -> list[Path]:
    """The files a dataset folder is made of (what no command may write over)."""
    return [Path(ds_dir) / f for f in (DATASET_YAML, INTERACTIONS, USERS, ITEMS)]


def check_table(path: Path, schema: dict[str, Any], rows: int | None = None) -> None:
    """A dataset table's columns and types (from the Parquet footer, no data read) and its row count."""
    try:
        found = pl.read_parquet_schema(path)
        n = pl.scan_parquet(path).select(pl.len()).collect().item() if rows is not None else None
    except Exception as e:  # noqa: BLE001 - any parquet failure is the file's fault
        raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    for col, dtype in schema.items():
        if col not in found:
            raise InputError(f"{path}: column '{col}' is missing")
        if found[col] != dtype and not (dtype == pl.String and found[col] in (pl.Categorical, pl.Utf8)):
            raise InputError(f"{path}: column '{col}' has type {found[col]}, expected {dtype}")
    if rows is not None and n != rows:
        raise InputError(f"{path}: {n} rows, but {DATASET_YAML} says {rows}; prepare the dataset again")


def _check_range(path: Path, col: str, a: np.ndarray, lo: int, hi: int, bound: str) -> None:
    """Every value of column ``col`` in [lo, hi] (vectorised: one min and one max)."""
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        bad = int(a.min()) if int(a.min()) < lo else int(a.max())
        raise InputError(f"{path}: column '{col}' holds {bad}, outside {lo}..{hi} ({bound} in {DATASET_YAML}); "
                         f"prepare the dataset again")


def load_dataset(ds_dir: Path) -> Dataset:
    """Read a dataset folder into flat arrays, checking the schema, the id ranges and the order first."""
    ds_dir = Path(ds_dir)
    meta = read_dataset_meta(ds_dir)
    path = ds_dir / INTERACTIONS
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    check_table(path, INTERACTIONS_SCHEMA, int(meta["n_interactions"]))
    check_table(ds_dir / USERS, USERS_SCHEMA, n_users)
    check_table(ds_dir / ITEMS, ITEMS_SCHEMA, n_items)
    df = pl.read_parquet(path, columns=["user", "item", "split"])
    nulls = [c for c in df.columns if df[c].null_count()]
    if nulls:
        raise InputError(f"{path}: column '{nulls[0]}' has missing values; prepare the dataset again")
    try:
        split = df.select(
            pl.col("split").cast(pl.String).replace_strict({"train": 0, "val": 1, "test": 2}, return_dtype=pl.Int8)
        )["split"].to_numpy()
    except pl.exceptions.PolarsError:
        raise InputError(f"{path}: column 'split' holds a value other than {', '.join(SPLITS)}") from None
    user = df["user"].to_numpy()
    _check_range(path, "user", user, 0, n_users - 1, "n_users")
    _check_range(path, "item", df["item"].to_numpy(), 1, n_items, "n_items")
    if user.size > 1 and bool((user[1:] < user[:-1]).any()):
        raise InputError(f"{path}: rows are not ordered by user; prepare the dataset again")
    counts = np.bincount(user, minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Dataset(path=ds_dir, meta=meta, item=df["item"].to_numpy(), split=split, offsets=offsets)
