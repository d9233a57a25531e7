"""One reader per raw interaction format, and format detection.

Every reader returns a polars ``LazyFrame`` with the columns ``raw_user``, ``raw_item``, ``timestamp``
(Int64, null when the format has no time) and, where the format has one, ``rating`` (Float64).
Rows keep the file order: ``prepare`` relies on it for ties and for formats without a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import polars as pl

from recjpq_cli.errors import InputError

FORMATS = ("sasrec", "movielens", "recbole", "gowalla", "booking", "csv", "tsv", "parquet")
_SNIFF_BYTES = 64 * 1024


def check_input_file(path: Path) -> None:
    """A missing file, a directory or an empty file gets a one-line error naming it."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an interaction file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


def _head_text(path: Path) -> list[str]:
    """The first lines of a text file; binary content is an error."""
    raw = path.open("rb").read(_SNIFF_BYTES)
    if b"\x00" in raw:
        raise InputError(f"{path}: binary content, not a text interaction file (use --format parquet for Parquet)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(raw) - 4:  # a multi-byte character cut at the sniff boundary is fine
            raise InputError(f"{path}: not UTF-8 text (byte {e.start} is invalid)") from None
        text = raw[: e.start].decode("utf-8")
    lines = [ln for ln in text.splitlines()[:20] if ln.strip()]
    if not lines:
        raise InputError(f"{path}: no data lines")
    return lines


_INT2 = re.compile(r"^\s*-?\d+\s+-?\d+\s*$")
_GOWALLA = re.compile(r"^[^\t]+\t\d{4}-\d{2}-\d{2}T[^\t]+\t[^\t]+\t[^\t]+\t[^\t]+$")


def detect_format(path: Path) -> str:
    """Detect the format from the file name and its first lines (rules in docs/formats.md)."""
    check_input_file(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".inter"):
        _head_text(path)
        return "recbole"
    if name in ("ratings.dat", "u.data"):
        _head_text(path)
        return "movielens"
    lines = _head_text(path)
    first = lines[0]
    if name == "ratings.csv" and first.replace(" ", "").lower().startswith("userid,movieid"):
        return "movielens"
    header = {c.strip().lower() for c in first.split(",")}
    if {"utrip_id", "city_id", "checkin"} <= header:
        return "booking"
    if all(_GOWALLA.match(ln) for ln in lines[:5]):
        return "gowalla"
    if name.endswith(".txt") and all(_INT2.match(ln) for ln in lines):
        return "sasrec"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    raise InputError(
        f"{path}: cannot detect the format from the name and first lines; pass --format "
        f"({', '.join(FORMATS)})"
    )


def _time_to_int(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Numbers pass through as Int64; strings are parsed as dates/times to epoch seconds."""
    if dtype.is_numeric():
        return expr.cast(pl.Float64).round(0).cast(pl.Int64)
    return expr.cast(pl.String).str.to_datetime(strict=True, time_unit="ms").dt.epoch("s").cast(pl.Int64)


def _read_sasrec(path: Path, **_: object) -> pl.LazyFrame:
    first = _head_text(path)[0]
    sep = "\t" if "\t" in first else " "
    lf = pl.scan_csv(
        path, separator=sep, has_header=False, new_columns=["raw_user", "raw_item"],
        schema_overrides={"raw_user": pl.Int64, "raw_item": pl.Int64},
    )
    return lf.with_columns(pl.lit(None, pl.Int64).alias("timestamp"))


def _read_movielens(path: Path, **_: object) -> pl.LazyFrame:
    name = path.name.lower()
    if name.endswith(".csv"):
        lf = pl.scan_csv(path, schema_overrides={"userId": pl.Int64, "movieId": pl.Int64,
                                                  "rating": pl.Float64, "timestamp": pl.Int64})
        cols = ("userId", "movieId", "rating", "timestamp")
    elif name.endswith(".dat") or "::" in _head_text(path)[0]:
        lf = pl.scan_csv(path, separator=":", has_header=False,
                         new_columns=["u", "_a", "i", "_b", "r", "_c", "t"],
                         schema_overrides={"u": pl.Int64, "i": pl.Int64, "r": pl.Float64, "t": pl.Int64})
        cols = ("u", "i", "r", "t")
    else:
        lf = pl.scan_csv(path, separator="\t", has_header=False, new_columns=["u", "i", "r", "t"],
                         schema_overrides={"u": pl.Int64, "i": pl.Int64, "r": pl.Float64, "t": pl.Int64})
        cols = ("u", "i", "r", "t")
    u, i, r, t = cols
    return lf.select(pl.col(u).alias("raw_user"), pl.col(i).alias("raw_item"),
                     pl.col(t).alias("timestamp"), pl.col(r).alias("rating"))


def _read_recbole(path: Path, **_: object) -> pl.LazyFrame:
    lf = pl.scan_csv(path, separator="\t", infer_schema=False, quote_char=None)
    names = lf.collect_schema().names()
    renamed = {n: n.split(":", 1)[0] for n in names}
    lf = lf.rename(renamed)
    cols = set(renamed.values())
    for need in ("user_id", "item_id"):
        if need not in cols:
            raise InputError(f"{path}: RecBole header has no '{need}' field (found: {', '.join(names)})")
    out = [pl.col("user_id").alias("raw_user"), pl.col("item_id").alias("raw_item")]
    out.append(_time_to_int(pl.col("timestamp").cast(pl.Float64), pl.Float64()).alias("timestamp")
               if "timestamp" in cols else pl.lit(None, pl.Int64).alias("timestamp"))
    if "rating" in cols:
        out.append(pl.col("rating").cast(pl.Float64).alias("rating"))
    return lf.select(out)


def _read_gowalla(path: Path, **_: object) -> pl.LazyFrame:
    lf = pl.scan_csv(path, separator="\t", has_header=False, infer_schema=False, quote_char=None,
                     new_columns=["u", "t", "lat", "lon", "loc"])
    return lf.select(
        pl.col("u").alias("raw_user"), pl.col("loc").alias("raw_item"),
        _time_to_int(pl.col("t"), pl.String()).alias("timestamp"),
    )


def _read_booking(path: Path, **_: object) -> pl.LazyFrame:
    lf = pl.scan_csv(path, infer_schema=False)
    names = lf.collect_schema().names()
    for need in ("utrip_id", "city_id", "checkin"):
        if need not in names:
            raise InputError(f"{path}: Booking.com file has no '{need}' column (found: {', '.join(names)})")
    return lf.select(
        pl.col("utrip_id").alias("raw_user"), pl.col("city_id").alias("raw_item"),
        _time_to_int(pl.col("checkin"), pl.String()).alias("timestamp"),
    )


def _generic(lf: pl.LazyFrame, path: Path, user_col: str, item_col: str, time_col: str | None,
             time_col_given: bool) -> pl.LazyFrame:
    schema = lf.collect_schema()
    names = schema.names()
    for opt, col in (("--user-col", user_col), ("--item-col", item_col)):
        if col not in names:
            raise InputError(f"{path}: no column '{col}' ({opt}); columns are: {', '.join(names)}")
    if time_col and time_col not in names:
        if time_col_given:
            raise InputError(f"{path}: no column '{time_col}' (--time-col); columns are: {', '.join(names)}")
        time_col = None
    out = [pl.col(user_col).alias("raw_user"), pl.col(item_col).alias("raw_item")]
    if time_col:
        out.append(_time_to_int(pl.col(time_col), schema[time_col]).alias("timestamp"))
    else:
        out.append(pl.lit(None, pl.Int64).alias("timestamp"))
    if "rating" in names:
        out.append(pl.col("rating").cast(pl.Float64, strict=True).alias("rating"))
    return lf.select(out)


def _read_delimited(sep: str) -> Callable[..., pl.LazyFrame]:
    def read(path: Path, user_col: str = "user_id", item_col: str = "item_id", time_col: str | None = "timestamp",
             time_col_given: bool = False, **_: object) -> pl.LazyFrame:
        _head_text(path)
        lf = pl.scan_csv(path, separator=sep, infer_schema_length=10_000)
        return _generic(lf, path, user_col, item_col, time_col, time_col_given)
    return read


def _read_parquet(path: Path, user_col: str = "user_id", item_col: str = "item_id",
                  time_col: str | None = "timestamp", time_col_given: bool = False, **_: object) -> pl.LazyFrame:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"PAR1":
        raise InputError(f"{path}: not a Parquet file (bad magic bytes)")
    return _generic(pl.scan_parquet(path), path, user_col, item_col, time_col, time_col_given)


READERS: dict[str, Callable[..., pl.LazyFrame]] = {
    "sasrec": _read_sasrec,
    "movielens": _read_movielens,
    "recbole": _read_recbole,
    "gowalla": _read_gowalla,
    "booking": _read_booking,
    "csv": _read_delimited(","),
    "tsv": _read_delimited("\t"),
    "parquet": _read_parquet,
}


def scan(path: Path, fmt: str, **options: object) -> pl.LazyFrame:
    """The lazy frame of one raw file in one format (columns as in the module docstring)."""
    check_input_file(path)
    try:
        return READERS[fmt](path, **options)
    except InputError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read as {fmt}: {polars_message(e)}") from None


def polars_message(e: BaseException) -> str:
    """The first meaningful line of a polars error, for a one-line user message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg[:300]
