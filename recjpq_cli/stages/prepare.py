"""``prepare``: a raw interaction log to a leave-one-out sequential dataset folder.

Polars reads and parses the file (the readers in ``data/readers.py``); from there the log is three flat
numpy arrays (user code, item code, time) and every step is a vectorised array operation: dense ids,
iterative filtering by counts, one stable sort, positions and the split.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recjpq_cli.data import kinds, readers
from recjpq_cli.data.io import atomic_dir, check_not_cwd, check_output, sha256_file, write_yaml
from recjpq_cli.data.schema import (
    DATASET_FORMAT_VERSION,
    DATASET_YAML,
    INTERACTIONS,
    ITEMS,
    SPLITS,
    USERS,
    dataset_files,
)
from recjpq_cli.errors import ConfigError, InputError
from recjpq_cli.metrics import LONG_TAIL_THRESHOLD


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

    def inputs(self) -> tuple[Path, ...]:
        return (self.input,)

    def outputs(self) -> tuple[Path, ...]:
        return (self.out, *dataset_files(self.out))

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


def _check(cfg: PrepareConfig) -> None:
    """Settings and paths, before any reading."""
    if cfg.min_user_interactions < 1 or cfg.min_item_interactions < 0:
        raise ConfigError("--min-user-interactions must be >= 1 and --min-item-interactions >= 0")
    if cfg.user_col == cfg.item_col:
        raise ConfigError(f"--user-col and --item-col both name the column '{cfg.user_col}'; "
                          f"users and items need a column each")
    readers.check_input_file(cfg.input)
    src, out = cfg.input.resolve(), cfg.out.resolve()
    if src == out or out in src.parents:
        raise ConfigError(f"{cfg.out}: the dataset folder would replace the input {cfg.input}; "
                          f"choose another --out")
    check_output(cfg.out, cfg.overwrite, "dataset", (kinds.DATASET,))
    check_not_cwd(out)


def _load(cfg: PrepareConfig, fmt: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """The raw rows in file order (``timestamp`` = file position when the format has no time),
    without missing values and low ratings, counting both."""
    raw = readers.scan(cfg.input, fmt, user_col=cfg.user_col, item_col=cfg.item_col,
                       time_col=cfg.time_col, time_col_given=cfg.time_col_given)
    lf = raw.lf
    names = lf.collect_schema().names()
    if cfg.min_rating is not None and "rating" not in names:
        raise InputError(f"{cfg.input}: --min-rating given, but the {fmt} file has no rating column")
    if not raw.has_time:
        lf = lf.with_row_index("timestamp").with_columns(pl.col("timestamp").cast(pl.Int64))
    cols = ["raw_user", "raw_item", "timestamp"]
    cols += ["rating"] if cfg.min_rating is not None else []
    cols += ["_bad"] if "_bad" in names else []
    try:
        df = lf.select(cols).collect()
    except (pl.exceptions.PolarsError, OSError, pl.exceptions.PanicException) as e:
        raise InputError(f"{cfg.input}: cannot read as {fmt}: {readers.polars_message(e)}") from None
    if "_bad" in cols:
        bad = df["_bad"].fill_null(False)
        if bad.any():
            assert raw.explain is not None
            raise InputError(f"{cfg.input}: {raw.explain(int(bad.arg_true()[0]))}")
        df = df.drop("_bad")
    if df.height == 0:
        raise InputError(f"{cfg.input}: no interactions in the file")
    dropped = {"missing_values": 0, "below_min_rating": 0}
    needed = [c for c in df.columns if df[c].null_count()]
    if needed:
        empty = pl.all_horizontal(pl.col(c).is_null() for c in ("raw_user", "raw_item", "timestamp")
                                  if raw.has_time or c != "timestamp")
        df = df.filter(~empty)  # blank lines are not rows
        n0 = df.height
        df = df.drop_nulls(needed)
        dropped["missing_values"] = n0 - df.height
    if cfg.min_rating is not None:
        n1 = df.height
        df = df.filter(pl.col("rating") >= cfg.min_rating).drop("rating")
        dropped["below_min_rating"] = n1 - df.height
    if df.height == 0:
        raise InputError(f"{cfg.input}: no interactions left ({dropped['missing_values']} rows with a missing "
                         f"user, item or time, {dropped['below_min_rating']} below --min-rating)")
    return df, dropped


def _int_codes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense 0-based int32 codes of integers in ascending order, and the sorted distinct values."""
    lo, hi = int(a.min()), int(a.max())
    span = hi - lo + 1
    if span <= max(4 * a.size, 1 << 22):  # a presence table: O(n), no sort
        off = a - lo
        present = np.zeros(span, dtype=bool)
        present[off] = True
        code_of = np.cumsum(present, dtype=np.int32)
        code_of -= 1
        return code_of[off], np.flatnonzero(present) + lo
    values, codes = np.unique(a, return_inverse=True)
    return codes.astype(np.int32), values


def _canonical_ints(s: pl.Series) -> np.ndarray | None:
    """The integers of a text column when every value is one written plainly (no sign, padding or
    leading zero: so two different texts never give the same number), else None."""
    x = s.cast(pl.Int64, strict=False)  # rejects spaces, '_', decimals; accepts '+7', '007', '-0'
    if x.null_count():
        return None
    padded = pl.select(s.str.starts_with("+").any() | s.str.starts_with("-0").any()
                       | (s.str.starts_with("0") & (s.str.len_bytes() > 1)).any()).item()
    return None if padded else x.to_numpy()


def _dense_codes(s: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Codes 0..k-1 in ascending raw-id order and the raw ids (as written, as strings) in code order.

    Numeric order when every raw id is an integer, else lexicographic (byte order).
    """
    if s.dtype.is_float() and (s == s.floor()).all():
        s = s.cast(pl.Int64)
    if s.dtype.is_integer():
        codes, values = _int_codes(s.cast(pl.Int64).to_numpy())
        return codes, pl.Series(values).cast(pl.String)
    s = s.cast(pl.String)
    ints = _canonical_ints(s)
    if ints is not None:
        codes, values = _int_codes(ints)
        return codes, pl.Series(values).cast(pl.String)
    uniq = s.unique().sort()
    return uniq.search_sorted(s, side="left").cast(pl.Int32).to_numpy(writable=True), uniq


def _filter(user: np.ndarray, item: np.ndarray, min_user: int, min_item: int) -> tuple[np.ndarray | None, dict]:
    """Rows kept by filtering users with < min_user and items with < min_item rows, repeated until stable.

    Returns None when every row is kept. The fixed point does not depend on the order of the filters; a
    filter that just removed rows cannot remove more until the other one does, so one filter alone takes
    one pass.
    """
    removed = {"too_few_user_interactions": 0, "too_few_item_interactions": 0}
    active = [(why, k) for why, k in (("too_few_item_interactions", min_item),
                                       ("too_few_user_interactions", min_user)) if k > 1]
    rows: np.ndarray | None = None
    u, i = user, item
    clean, turn = 0, 0  # clean: consecutive filters that had nothing to remove
    while active and clean < len(active) and u.size:
        why, k = active[turn % len(active)]
        turn += 1
        codes = i if why == "too_few_item_interactions" else u
        counts = np.bincount(codes)
        if counts[counts > 0].min() >= k:
            clean += 1
            continue
        keep = counts[codes] >= k
        removed[why] += int(keep.size - np.count_nonzero(keep))
        rows = np.flatnonzero(keep) if rows is None else rows[keep]
        u, i = u[keep], i[keep]
        clean = 1
    return rows, removed


def _compact(codes: np.ndarray, values: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Renumber codes densely after rows were removed (order kept)."""
    present = np.bincount(codes, minlength=values.len()) > 0
    if present.all():
        return codes, values
    new = np.cumsum(present, dtype=np.int32) - 1
    return new[codes], values.filter(pl.Series(present))


def _stable_argsort(key: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative int64 keys below 2**(63 - bits(n)): the row index is packed into
    the low bits, so one plain (fast, SIMD) sort of int64 values gives the stable order."""
    n = key.size
    rb = max(1, (n - 1).bit_length())
    packed = key << rb
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    packed &= (1 << rb) - 1
    return packed


def _is_sorted(user: np.ndarray, ts: np.ndarray) -> bool:
    du = np.diff(user)
    return bool(((du > 0) | ((du == 0) & (ts[1:] >= ts[:-1]))).all())


def _order(user: np.ndarray, ts: np.ndarray, n_users: int) -> np.ndarray | None:
    """The stable order by (user, time), ties in file order; None when the rows are already in it."""
    if _is_sorted(user, ts):
        return None
    n = user.size
    rb = max(1, (n - 1).bit_length())
    t = ts - ts.min()
    t_bits = int(t.max()).bit_length()
    u_bits = max(1, (n_users - 1).bit_length())
    if u_bits + t_bits + rb <= 63:  # one pass over (user, time) packed into one key
        key = user.astype(np.int64) << t_bits
        key |= t
        return _stable_argsort(key)
    # two stable passes (by time, then by user); times too spread to pack are replaced by their rank
    if t_bits + rb > 63:
        t = np.unique(t, return_inverse=True)[1].astype(np.int64)
    first = None if bool((t[1:] >= t[:-1]).all()) else _stable_argsort(t)
    del t
    u = user.astype(np.int64) if first is None else user[first].astype(np.int64)
    second = _stable_argsort(u)
    return second if first is None else first[second]


def _positions(user: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence lengths, 0-based position in the sequence, split code 0/1/2) for rows sorted by user."""
    lengths = np.bincount(user, minlength=n_users)
    ends = np.cumsum(lengths)
    starts = (ends - lengths).astype(np.int32)
    pos = np.arange(user.size, dtype=np.int32)
    pos -= np.repeat(starts, lengths)
    split = np.zeros(user.size, dtype=np.int8)
    ends = ends[lengths >= 3]  # fewer than 3 interactions: all training
    split[ends - 1] = SPLITS.index("test")
    split[ends - 2] = SPLITS.index("val")
    return lengths, pos, split


def _fingerprint(source_sha: str, options: dict[str, Any], raw_items: pl.Series) -> str:
    h = hashlib.sha256()
    h.update(source_sha.encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    h.update(hashlib.sha256(raw_items.str.join("\n").item().encode()).hexdigest().encode())
    return h.hexdigest()


@dataclass
class _Log:
    """The log as flat arrays: user and item codes (0-based, in raw-id order), times, and the raw ids."""

    user: np.ndarray  # (n,) int32
    item: np.ndarray  # (n,) int32
    ts: np.ndarray  # (n,) int64
    raw_users: pl.Series  # (n_users,) string, in code order
    raw_items: pl.Series  # (n_items,) string, in code order

    def take(self, rows: np.ndarray) -> None:
        self.user, self.item, self.ts = self.user[rows], self.item[rows], self.ts[rows]


def _encode(cfg: PrepareConfig, fmt: str) -> tuple[_Log, dict[str, int]]:
    """Read the file and turn ids into dense codes; the raw frame is freed on return."""
    df, dropped = _load(cfg, fmt)
    user, raw_users = _dense_codes(df["raw_user"])
    item, raw_items = _dense_codes(df["raw_item"])
    return _Log(user, item, df["timestamp"].to_numpy(), raw_users, raw_items), dropped


def run(cfg: PrepareConfig) -> PrepareResult:
    t0 = time.perf_counter()
    _check(cfg)
    detected = cfg.format is None
    fmt = cfg.format or readers.detect_format(cfg.input)
    if fmt not in readers.GENERIC and ((cfg.user_col, cfg.item_col) != ("user_id", "item_id")
                                       or cfg.time_col_given):
        raise ConfigError(f"{cfg.input}: --user-col, --item-col and --time-col apply to csv, tsv and parquet "
                          f"files, not to the {fmt} format")
    log, dropped = _encode(cfg, fmt)
    with ThreadPoolExecutor(1) as pool:  # hash the source on the core that numpy leaves idle
        source_sha = pool.submit(sha256_file, cfg.input)
        rows, removed = _filter(log.user, log.item, cfg.min_user_interactions, cfg.min_item_interactions)
        dropped.update(removed)
        if rows is not None:
            if rows.size == 0:
                raise InputError(f"{cfg.input}: no interactions left after filtering "
                                 f"(--min-user-interactions {cfg.min_user_interactions}, "
                                 f"--min-item-interactions {cfg.min_item_interactions})")
            log.take(rows)
            del rows
            log.user, log.raw_users = _compact(log.user, log.raw_users)
            log.item, log.raw_items = _compact(log.item, log.raw_items)
        order = _order(log.user, log.ts, log.raw_users.len())
        if order is not None:
            log.take(order)
            del order
        return _write(cfg, fmt, detected, log, dropped, source_sha.result(), t0)


def _write(cfg: PrepareConfig, fmt: str, detected: bool, log: _Log, dropped: dict[str, int], source_sha: str,
           t0: float) -> PrepareResult:
    """Positions, split, tables, dataset.yaml; the folder written atomically."""
    n_users, n_items, n = log.raw_users.len(), log.raw_items.len(), log.user.size
    item = log.item
    item += 1  # items are 1..n_items; 0 is padding
    lengths, pos, split = _positions(log.user, n_users)
    train_count = np.bincount(item[split == 0], minlength=n_items + 1)[1:].astype(np.int32)
    interactions = pl.DataFrame({
        "user": log.user, "item": item, "timestamp": log.ts, "pos": pos,
        "split": pl.Series(SPLITS).gather(pl.Series(split.astype(np.uint32))),
    })
    users = pl.DataFrame({"user": np.arange(n_users, dtype=np.int32), "raw_user": log.raw_users})
    items = pl.DataFrame({"item": np.arange(1, n_items + 1, dtype=np.int32), "raw_item": log.raw_items,
                          "train_count": train_count})
    options = cfg.options() | {"format": fmt}
    fingerprint = _fingerprint(source_sha, options, log.raw_items)
    split_sizes = np.bincount(split, minlength=3)
    stats = {
        "sequence_length": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                            "max": int(lengths.max())},
        "long_tail_share": float((train_count < LONG_TAIL_THRESHOLD).mean()),
        "split_sizes": {name: int(split_sizes[k]) for k, name in enumerate(SPLITS)},
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
    with atomic_dir(cfg.out, cfg.overwrite, (kinds.DATASET,)) as tmp:
        interactions.write_parquet(tmp / INTERACTIONS, compression="zstd", compression_level=1, statistics=False)
        users.write_parquet(tmp / USERS)
        items.write_parquet(tmp / ITEMS)
        write_yaml(tmp / DATASET_YAML, meta)
    return PrepareResult(out=cfg.out, format=fmt, detected=detected, n_users=n_users, n_items=n_items,
                         n_interactions=n, fingerprint=fingerprint, stats=stats,
                         seconds=time.perf_counter() - t0)
