"""One reader per raw interaction format, and format detection.

Every reader returns a :class:`RawLog`: a polars ``LazyFrame`` with the columns ``raw_user``, ``raw_item``,
``timestamp`` (Int64 epoch seconds; only when the format has a time), ``rating`` (Float64; only when the
format has one) and ``_bad`` (Boolean; only when rows are parsed by hand: true for a row that does not parse),
plus what ``prepare`` needs to explain a bad row. Rows keep the file order: ``prepare`` relies on it for ties
and for formats without a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from recjpq_cli.errors import InputError

FORMATS = ("sasrec", "seq", "movielens", "recbole", "gowalla", "booking", "csv", "tsv", "parquet")
GENERIC = ("csv", "tsv", "parquet")
_SNIFF_BYTES = 64 * 1024
_PARQUET_MAGIC = b"PAR1"
# Times given as text: a number (epoch seconds) or one of these ISO-8601 forms; zoned times become UTC.
TIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)


@dataclass
class RawLog:
    """A lazily read raw file in the common columns, and how to explain a row flagged ``_bad``."""

    lf: pl.LazyFrame
    has_time: bool
    explain: Callable[[int], str] | None = None  # data row index -> "line N: ..." (only with ``_bad``)


def check_input_file(path: Path) -> None:
    """A missing file, a directory or an empty file gets a one-line error naming it."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an interaction file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


def _head_bytes(path: Path, n: int = _SNIFF_BYTES) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror or type(e).__name__})") from None


def _head_text(path: Path) -> list[str]:
    """The first non-blank lines of a text file; binary content is an error."""
    raw = _head_bytes(path)
    if raw.startswith(_PARQUET_MAGIC):
        raise InputError(f"{path}: is a Parquet file, not text (use --format parquet)")
    if b"\x00" in raw:
        raise InputError(f"{path}: binary content, not a text interaction file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if len(raw) < _SNIFF_BYTES or e.start < len(raw) - 4:  # a character cut at the sniff end is fine
            raise InputError(f"{path}: not UTF-8 text (byte {e.start} is invalid)") from None
        text = raw[: e.start].decode("utf-8")
    lines = [ln for ln in text.lstrip("\ufeff").splitlines()[:20] if ln.strip()]
    if not lines:
        raise InputError(f"{path}: no data lines")
    return lines


_INT2 = re.compile(r"^\s*-?\d+\s+-?\d+\s*$")
_INTS = re.compile(r"^\s*-?\d+(\s+-?\d+)+\s*$")  # two or more whitespace-separated integers
_GOWALLA = re.compile(r"^[^\t]+\t\d{4}-\d{2}-\d{2}T[^\t]+\t[^\t]+\t[^\t]+\t[^\t]+$")


def detect_format(path: Path) -> str:
    """Detect the format from the file name and its first lines (rules in docs/formats.md)."""
    check_input_file(path)
    name = path.name.lower()
    if name.endswith(".parquet") or _head_bytes(path, 4) == _PARQUET_MAGIC:
        return "parquet"
    lines = _head_text(path)
    if name.endswith(".inter"):
        return "recbole"
    if name in ("ratings.dat", "u.data"):
        return "movielens"
    first = lines[0].lstrip("\ufeff")
    if name == "ratings.csv" and first.replace(" ", "").lower().startswith("userid,movieid"):
        return "movielens"
    header = {c.strip().strip('"').lower() for c in first.split(",")}
    if {"utrip_id", "city_id", "checkin"} <= header:
        return "booking"
    if all(_GOWALLA.match(ln) for ln in lines[:5]):
        return "gowalla"
    if name.endswith(".txt") and all(_INT2.match(ln) for ln in lines):
        return "sasrec"
    if name.endswith(".txt") and all(_INTS.match(ln) for ln in lines) and any(len(ln.split()) >= 3 for ln in lines):
        return "seq"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    raise InputError(
        f"{path}: cannot detect the format from the name and first lines; pass --format "
        f"({', '.join(FORMATS)})"
    )


def _text_time(expr: pl.Expr) -> pl.Expr:
    """Text times to epoch seconds: a number, or one of TIME_FORMATS; null where nothing parses."""
    s = expr.str.strip_chars()
    parsed = [s.cast(pl.Float64, strict=False).round(0).cast(pl.Int64, strict=False)]
    parsed += [s.str.to_datetime(f, strict=False, time_unit="ms").dt.epoch("s") for f in TIME_FORMATS]
    return pl.coalesce(parsed)


def _time(path: Path, col: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """(timestamp expression, bad-row expression or None) for one time column of any dtype."""
    expr = pl.col(col)
    if dtype.is_numeric():
        return expr.cast(pl.Float64).round(0).cast(pl.Int64), None
    if isinstance(dtype, (pl.Datetime, pl.Date)):
        return expr.dt.epoch("s").cast(pl.Int64), None
    if dtype == pl.String:
        ts = _text_time(expr)
        return ts, ts.is_null() & expr.str.strip_chars().str.len_bytes().gt(0)
    raise InputError(f"{path}: time column '{col}' has type {dtype}; expected numbers, dates or text times")


def _time_explainer(lf: pl.LazyFrame, col: str, first_line: int) -> Callable[[int], str]:
    def explain(row: int) -> str:
        value = lf.select(pl.col(col).cast(pl.String)).slice(row, 1).collect().item()
        return (f"line {row + first_line}: cannot parse the time {value!r} in column '{col}' "
                f"(expected a number of seconds or an ISO-8601 date/time such as 2020-01-31T12:00:00Z)")
    return explain


def _read_sasrec(path: Path, **_: object) -> RawLog:
    """``user item`` per line, any whitespace between; a line that is not two integers is an error."""
    lines = pl.scan_csv(path, separator="\x1f", has_header=False, new_columns=["line"], quote_char=None,
                        schema_overrides={"line": pl.String})
    parts = pl.col("line").str.extract_groups(r"^\s*(-?\d+)\s+(-?\d+)\s*$")
    line = pl.col("line").str.strip_chars()
    lf = lines.select(
        parts.struct.field("1").cast(pl.Int64).alias("raw_user"),
        parts.struct.field("2").cast(pl.Int64).alias("raw_item"),
        (parts.struct.field("1").is_null() & line.str.len_bytes().gt(0)).alias("_bad"),
    )

    def explain(row: int) -> str:
        text = lines.slice(row, 1).collect().item()
        return f"line {row + 1}: {text!r} is not two whitespace-separated integers (user item)"
    return RawLog(lf, has_time=False, explain=explain)


_INT_TOKEN = r"^-?\d+$"


def _read_seq(path: Path, **_: object) -> RawLog:
    """``user item item ...`` per line (one user a line, items oldest first), any whitespace between.

    Vectorised: each line becomes a list of tokens, the items are exploded into rows in file order (so the
    position is the time order). A line is bad when a token is not an integer, when it has a user but no
    item, or when its user already had a line (users are refused on two lines, not merged: a log of
    ``user item time`` lines would otherwise be read as sequences without a word).
    """
    lines = pl.scan_csv(path, separator="\x1f", has_header=False, new_columns=["line"], quote_char=None,
                        schema_overrides={"line": pl.String})
    tok = pl.col("line").str.extract_all(r"\S+")
    per_line = lines.with_row_index("_line", offset=1).select(
        "_line",
        tok.list.first().cast(pl.Int64, strict=False).alias("raw_user"),
        tok.list.slice(1).list.eval(pl.element().cast(pl.Int64, strict=False)).alias("raw_item"),
        tok.list.len().fill_null(0).alias("_n"),
        tok.list.eval(pl.element().str.contains(_INT_TOKEN)).list.all().alias("_ints"),
    )
    user_again = pl.col("raw_user").is_not_null() & ~pl.col("raw_user").is_first_distinct()
    bad = (pl.col("_n").eq(1) | (pl.col("_n").gt(0) & ~pl.col("_ints"))
           | pl.col("raw_item").list.eval(pl.element().is_null()).list.any().fill_null(False) | user_again)
    no_items = pl.concat_list(pl.lit(None, dtype=pl.Int64))  # one null row for a blank or item-less line
    exploded = per_line.with_columns(
        bad.alias("_bad"),
        pl.when(pl.col("_n") > 1).then(pl.col("raw_item")).otherwise(no_items).alias("raw_item"),
    ).explode("raw_item")

    def explain(row: int) -> str:
        n = int(exploded.select("_line").slice(row, 1).collect().item())
        text = lines.slice(n - 1, 1).collect().item()
        tokens = text.split()
        wrong = [t for t in tokens if not re.fullmatch(_INT_TOKEN, t) or not -2**63 <= int(t) < 2**63]
        if wrong:
            return f"line {n}: {wrong[0]!r} is not an integer (a seq line is: user item item ...)"
        if len(tokens) == 1:
            return f"line {n}: user {tokens[0]} has no items (a seq line is: user item item ...)"
        first = per_line.filter(pl.col("raw_user") == int(tokens[0])).select("_line").head(1).collect().item()
        return (f"line {n}: user {tokens[0]} already has line {first}; a seq file holds one line per user "
                f"(for a log of one interaction a line, pass another --format)")
    return RawLog(exploded.select("raw_user", "raw_item", "_bad"), has_time=False, explain=explain)


def _read_movielens(path: Path, **_: object) -> RawLog:
    name = path.name.lower()
    ints = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    if name.endswith(".csv"):
        lf = pl.scan_csv(path, schema_overrides={"userId": pl.Int64, "movieId": pl.Int64,
                                                  "rating": pl.Float64, "timestamp": pl.Int64})
        lf = lf.rename({"userId": "user_id", "movieId": "item_id"})
    elif name.endswith(".dat") or "::" in _head_text(path)[0]:
        lf = pl.scan_csv(path, separator=":", has_header=False, quote_char=None,
                         new_columns=["user_id", "_a", "item_id", "_b", "rating", "_c", "timestamp"],
                         schema_overrides=ints)
    else:
        lf = pl.scan_csv(path, separator="\t", has_header=False, quote_char=None,
                         new_columns=["user_id", "item_id", "rating", "timestamp"], schema_overrides=ints)
    lf = lf.select(pl.col("user_id").alias("raw_user"), pl.col("item_id").alias("raw_item"),
                   pl.col("timestamp"), pl.col("rating"))
    return RawLog(lf, has_time=True)


def _read_recbole(path: Path, **_: object) -> RawLog:
    lf = pl.scan_csv(path, separator="\t", infer_schema=False, quote_char=None)
    names = lf.collect_schema().names()
    renamed = {n: n.split(":", 1)[0].strip().lstrip("\ufeff") for n in names}
    lf = lf.rename(renamed)
    cols = set(renamed.values())
    for need in ("user_id", "item_id"):
        if need not in cols:
            raise InputError(f"{path}: RecBole header has no '{need}' field (found: {', '.join(names)})")
    out = [pl.col("user_id").alias("raw_user"), pl.col("item_id").alias("raw_item")]
    if "timestamp" in cols:
        out.append(pl.col("timestamp").cast(pl.Float64).round(0).cast(pl.Int64).alias("timestamp"))
    if "rating" in cols:
        out.append(pl.col("rating").cast(pl.Float64).alias("rating"))
    return RawLog(lf.select(out), has_time="timestamp" in cols)


def _read_gowalla(path: Path, **_: object) -> RawLog:
    lf = pl.scan_csv(path, separator="\t", has_header=False, infer_schema=False, quote_char=None,
                     new_columns=["user", "time", "lat", "lon", "location"])
    ts, bad = _time(path, "time", pl.String())
    out = lf.select(pl.col("user").alias("raw_user"), pl.col("location").alias("raw_item"),
                    ts.alias("timestamp"), bad.alias("_bad"))
    return RawLog(out, has_time=True, explain=_time_explainer(lf, "time", 1))


def _read_booking(path: Path, **_: object) -> RawLog:
    lf = pl.scan_csv(path, infer_schema=False)
    names = lf.collect_schema().names()
    for need in ("utrip_id", "city_id", "checkin"):
        if need not in names:
            raise InputError(f"{path}: Booking.com file has no '{need}' column (found: {', '.join(names)})")
    ts, bad = _time(path, "checkin", pl.String())
    out = lf.select(pl.col("utrip_id").alias("raw_user"), pl.col("city_id").alias("raw_item"),
                    ts.alias("timestamp"), bad.alias("_bad"))
    return RawLog(out, has_time=True, explain=_time_explainer(lf, "checkin", 2))


def _id_dtype(dtype: pl.DataType) -> bool:
    """Types an id column may have: integers, (integral) floats, text, categories."""
    return dtype.is_integer() or dtype.is_float() or dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))


def _generic(lf: pl.LazyFrame, path: Path, user_col: str, item_col: str, time_col: str | None,
             time_col_given: bool, first_line: int) -> RawLog:
    schema = lf.collect_schema()
    names = schema.names()
    for opt, col in (("--user-col", user_col), ("--item-col", item_col)):
        if col not in names:
            raise InputError(f"{path}: no column '{col}' ({opt}); columns are: {', '.join(names)}")
        if not _id_dtype(schema[col]):
            raise InputError(f"{path}: id column '{col}' ({opt}) has type {schema[col]}; ids must be integers "
                             f"or text")
    if time_col and time_col not in names:
        if time_col_given:
            raise InputError(f"{path}: no column '{time_col}' (--time-col); columns are: {', '.join(names)}")
        time_col = None
    out = [pl.col(user_col).alias("raw_user"), pl.col(item_col).alias("raw_item")]
    explain = None
    if time_col:
        ts, bad = _time(path, time_col, schema[time_col])
        out.append(ts.alias("timestamp"))
        if bad is not None:
            out.append(bad.alias("_bad"))
            explain = _time_explainer(lf, time_col, first_line)
    if "rating" in names:
        out.append(pl.col("rating").cast(pl.Float64).alias("rating"))
    return RawLog(lf.select(out), has_time=time_col is not None, explain=explain)


def _read_delimited(sep: str) -> Callable[..., RawLog]:
    def read(path: Path, user_col: str = "user_id", item_col: str = "item_id", time_col: str | None = "timestamp",
             time_col_given: bool = False, **_: object) -> RawLog:
        _head_text(path)
        # ids are read as text, so that they are kept as written ("007" stays "007")
        lf = pl.scan_csv(path, separator=sep, infer_schema_length=10_000,
                         schema_overrides={user_col: pl.String, item_col: pl.String})
        return _generic(lf, path, user_col, item_col, time_col, time_col_given, first_line=2)
    return read


def _read_parquet(path: Path, user_col: str = "user_id", item_col: str = "item_id",
                  time_col: str | None = "timestamp", time_col_given: bool = False, **_: object) -> RawLog:
    if _head_bytes(path, 4) != _PARQUET_MAGIC:
        raise InputError(f"{path}: not a Parquet file (bad magic bytes)")
    return _generic(pl.scan_parquet(path), path, user_col, item_col, time_col, time_col_given, first_line=1)


READERS: dict[str, Callable[..., RawLog]] = {
    "sasrec": _read_sasrec,
    "seq": _read_seq,
    "movielens": _read_movielens,
    "recbole": _read_recbole,
    "gowalla": _read_gowalla,
    "booking": _read_booking,
    "csv": _read_delimited(","),
    "tsv": _read_delimited("\t"),
    "parquet": _read_parquet,
}


def scan(path: Path, fmt: str, **options: object) -> RawLog:
    """The lazy frame of one raw file in one format (columns as in the module docstring)."""
    check_input_file(path)
    if fmt not in READERS:
        raise InputError(f"{path}: unknown format '{fmt}' (one of {', '.join(FORMATS)})")
    if fmt != "parquet":
        _head_text(path)
    try:
        raw = READERS[fmt](path, **options)
        raw.lf.collect_schema()
        return raw
    except InputError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError, pl.exceptions.PanicException) as e:
        raise InputError(f"{path}: cannot read as {fmt}: {polars_message(e)}") from None


def polars_message(e: BaseException) -> str:
    """The first meaningful line of a polars error, for a one-line user message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg[:300]
