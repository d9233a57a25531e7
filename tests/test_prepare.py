"""`recjpq prepare` and `recjpq synth` end to end: every input format, the dataset contract, bad input.

Each test runs the CLI in-process and reads the written files back.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import REPO, error_line, invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recjpq_cli.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, load_dataset
from recjpq_cli.metrics import LONG_TAIL_THRESHOLD
from recjpq_cli.stages.prepare import PrepareConfig, _order, run

# ---------------------------------------------------------------- helpers


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def prepare(src: Path, out: Path, *args: object):
    res = invoke(["prepare", src, "--out", out, "-q", "--json", "-", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def read(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    return (pl.read_parquet(out / "interactions.parquet"), pl.read_parquet(out / "users.parquet"),
            pl.read_parquet(out / "items.parquet"), yaml.safe_load((out / "dataset.yaml").read_text()))


def sequences(out: Path) -> dict[str, list[str]]:
    """raw user -> raw items in sequence order, read back through the id maps."""
    inter, users, items, _ = read(out)
    df = inter.join(users, on="user").join(items, on="item").sort("user", "pos")
    return {u: g["raw_item"].to_list() for (u,), g in df.group_by("raw_user", maintain_order=True)}


def lines(rows: list[tuple]) -> str:
    return "".join(" ".join(map(str, r)) + "\n" for r in rows)


# ---------------------------------------------------------------- every input format

SASREC = lines([(1, 3), (1, 1), (1, 2), (2, 2), (2, 3), (3, 1)])  # ids kept, file order is time order


def test_sasrec_keeps_ids_and_file_order(tmp_path):
    src = write(tmp_path / "ml.txt", SASREC.replace("2 2", "2\t2").replace("1 2", "1   2"))
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["format"] == "sasrec" and facts["detected"] is True
    inter, users, items, meta = read(tmp_path / "ds")
    assert items["item"].to_list() == [1, 2, 3] and items["raw_item"].to_list() == ["1", "2", "3"]
    assert users["user"].to_list() == [0, 1, 2] and users["raw_user"].to_list() == ["1", "2", "3"]
    assert inter["item"].to_list() == [3, 1, 2, 2, 3, 1]
    assert inter["timestamp"].to_list() == [0, 1, 2, 3, 4, 5]  # the line position when there is no time
    assert meta["source"]["format"] == "sasrec"


ML_ROWS = [(2, 50, 5, 300), (1, 10, 4, 200), (1, 30, 2, 100), (2, 10, 3, 100), (1, 20, 5, 150)]
ML_SEQS = {"1": ["30", "20", "10"], "2": ["10", "50"]}


@pytest.mark.parametrize("name,text", [
    ("u.data", "".join("\t".join(map(str, r)) + "\n" for r in ML_ROWS)),
    ("ratings.dat", "".join("::".join(map(str, r)) + "\n" for r in ML_ROWS)),
    ("ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(",".join(map(str, r)) + "\n" for r in ML_ROWS)),
])
def test_movielens_variants(tmp_path, name, text):
    src = write(tmp_path / "ml" / name, text)
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["format"] == "movielens"
    assert sequences(tmp_path / "ds") == ML_SEQS
    # --min-rating drops rows below it and counts them
    facts = prepare(src, tmp_path / "ds4", "--min-user-interactions", "1", "--min-rating", "4")
    assert facts["stats"]["dropped_rows"]["below_min_rating"] == 2
    assert sequences(tmp_path / "ds4") == {"1": ["20", "10"], "2": ["50"]}


def test_recbole_typed_header(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}.0\n" for u, i, r, t in ML_ROWS)
    src = write(tmp_path / "ml-100k.inter", text)
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["format"] == "recbole"
    assert sequences(tmp_path / "ds") == ML_SEQS
    inter = read(tmp_path / "ds")[0]
    assert inter.filter(pl.col("user") == 0)["timestamp"].to_list() == [100, 150, 200]


def test_gowalla_iso_times_sorted(tmp_path):
    # SNAP lists each user's check-ins newest first; times are ISO-8601 with a Z
    text = ("0\t2010-10-19T23:55:27Z\t30.23\t-97.79\t22847\n"
            "0\t2010-10-18T22:17:43Z\t30.26\t-97.75\t420315\n"
            "0\t2010-10-17T23:42:03Z\t30.25\t-97.74\t316637\n"
            "1\t2010-10-12T00:21:28Z\t40.64\t-73.78\t23261\n"
            "1\t2010-10-11T20:21:20Z\t40.74\t-73.99\t16907\n")
    src = write(tmp_path / "loc-gowalla_totalCheckins.txt", text)
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["format"] == "gowalla"
    assert sequences(tmp_path / "ds") == {"0": ["316637", "420315", "22847"], "1": ["16907", "23261"]}
    inter = read(tmp_path / "ds")[0]
    assert inter["timestamp"][0] == 1287358923  # 2010-10-17T23:42:03Z in epoch seconds


BOOKING = ("user_id,checkin,checkout,city_id,device_class,affiliate_id,booker_country,hotel_country,utrip_id\n"
           "1000027,2016-08-13,2016-08-14,8183,desktop,7168,Elbonia,Gondal,1000027_1\n"
           "1000027,2016-08-11,2016-08-13,15626,desktop,7168,Elbonia,Gondal,1000027_1\n"
           "1000027,2016-08-14,2016-08-16,60902,desktop,7168,Elbonia,Gondal,1000027_1\n"
           "1000033,2016-04-09,2016-04-11,38677,mobile,359,Gondal,Cobra Island,1000033_1\n"
           "1000033,2016-04-11,2016-04-12,52089,mobile,359,Gondal,Cobra Island,1000033_1\n")


def test_booking_trip_is_a_sequence(tmp_path):
    src = write(tmp_path / "booking_train_set.csv", BOOKING)
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["format"] == "booking"
    assert sequences(tmp_path / "ds") == {"1000027_1": ["15626", "8183", "60902"], "1000033_1": ["38677", "52089"]}


GENERIC_ROWS = [("u2", "b", 5), ("u1", "c", 3), ("u1", "a", 1), ("u2", "a", 4), ("u1", "b", 2)]
GENERIC_SEQS = {"u1": ["a", "b", "c"], "u2": ["a", "b"]}


def _generic_frame(cols: tuple[str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(GENERIC_ROWS, schema=list(cols), orient="row")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_generic_default_columns(tmp_path, fmt):
    df = _generic_frame(("user_id", "item_id", "timestamp"))
    src = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        df.write_parquet(src)
    else:
        df.write_csv(src, separator="," if fmt == "csv" else "\t")
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["format"] == fmt
    assert sequences(tmp_path / "ds") == GENERIC_SEQS


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generic_custom_columns(tmp_path, fmt):
    df = _generic_frame(("visitor", "product", "when"))
    src = tmp_path / f"log.{fmt}"
    df.write_parquet(src) if fmt == "parquet" else df.write_csv(src)
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1",
                    "--user-col", "visitor", "--item-col", "product", "--time-col", "when")
    assert facts["format"] == fmt
    assert sequences(tmp_path / "ds") == GENERIC_SEQS


def test_generic_without_time_uses_file_order(tmp_path):
    src = write(tmp_path / "log.csv", "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i, _ in GENERIC_ROWS))
    prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert sequences(tmp_path / "ds") == {"u1": ["c", "a", "b"], "u2": ["b", "a"]}
    assert read(tmp_path / "ds")[0]["timestamp"].to_list() == [1, 2, 4, 0, 3]  # file positions


def test_generic_date_times_and_parquet_datetimes(tmp_path):
    src = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,a,2020-01-02\n1,b,2020-01-01T10:00:00\n"
                                      "1,c,2020-01-01 09:00:00+01:00\n")
    prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert sequences(tmp_path / "ds") == {"1": ["c", "b", "a"]}
    pq = tmp_path / "dt.parquet"
    pl.DataFrame({"user_id": [1, 1], "item_id": [5, 6],
                  "timestamp": pl.Series(["2020-01-02", "2020-01-01"]).str.to_datetime()}).write_parquet(pq)
    prepare(pq, tmp_path / "ds2", "--min-user-interactions", "1")
    assert read(tmp_path / "ds2")[0]["timestamp"].to_list() == [1577836800, 1577923200]


# ---------------------------------------------------------------- detection rules


@pytest.mark.parametrize("name,text,fmt", [
    ("beauty.txt", "1 2\n1 3\n", "sasrec"),
    ("beauty.txt", "1\t2\n1\t3\n", "sasrec"),
    ("x.inter", "user_id:token\titem_id:token\n1\t2\n", "recbole"),
    ("u.data", "1\t2\t3\t4\n", "movielens"),
    ("ratings.dat", "1::2::3::4\n", "movielens"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n", "movielens"),
    ("ratings.csv", "user_id,item_id\n1,2\n", "csv"),  # a ratings.csv without the MovieLens header
    ("checkins.txt", "0\t2010-10-19T23:55:27Z\t30.2\t-97.7\t22847\n", "gowalla"),
    ("trips.csv", BOOKING, "booking"),
    ("log.csv", "user_id,item_id\n1,2\n", "csv"),
    ("log.tsv", "user_id\titem_id\n1\t2\n", "tsv"),
    ("log.parquet", None, "parquet"),
    ("no_extension", None, "parquet"),  # Parquet is recognised by its magic bytes whatever the name
])
def test_detection(tmp_path, name, text, fmt):
    from recjpq_cli.data.readers import detect_format

    path = tmp_path / name
    if text is None:
        pl.DataFrame({"user_id": [1], "item_id": [2]}).write_parquet(path)
    else:
        write(path, text)
    assert detect_format(path) == fmt


# ---------------------------------------------------------------- numbering, order, duplicates, filtering


@pytest.mark.parametrize("raw_items,expected_order", [
    (["10", "9", "100", "2"], ["2", "9", "10", "100"]),  # all integers: numeric order
    (["10", "9", "a", "2"], ["10", "2", "9", "a"]),  # not all integers: lexicographic
    (["7", "007", "8"], ["007", "7", "8"]),  # two spellings of one number: lexicographic, both kept
])
def test_item_numbering(tmp_path, raw_items, expected_order):
    src = write(tmp_path / "log.csv", "user_id,item_id\n" + "".join(f"u,{i}\n" for i in raw_items))
    prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    items = read(tmp_path / "ds")[2]
    assert items["item"].to_list() == list(range(1, len(raw_items) + 1))
    assert items["raw_item"].to_list() == expected_order


def test_user_numbering_numeric(tmp_path):
    src = write(tmp_path / "log.csv", "user_id,item_id\n" + "".join(f"{u},1\n" for u in (30, 4, 200)))
    prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    users = read(tmp_path / "ds")[1]
    assert users["user"].to_list() == [0, 1, 2] and users["raw_user"].to_list() == ["4", "30", "200"]


def test_time_ties_keep_file_order_and_duplicates_are_kept(tmp_path):
    rows = [(1, "x", 5), (1, "y", 5), (1, "x", 5), (1, "z", 1), (1, "x", 9)]
    src = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["n_interactions"] == 5
    assert sequences(tmp_path / "ds") == {"1": ["z", "x", "y", "x", "x"]}


def test_iterative_filtering_until_stable(tmp_path):
    # i4 is rare -> u3 too short -> i3 rare -> u2 too short -> i2 rare -> u1 too short; u4/u5 form a stable core
    rows = [("u1", "i1"), ("u1", "i2"), ("u2", "i2"), ("u2", "i3"), ("u3", "i3"), ("u3", "i4"),
            ("u4", "i5"), ("u4", "i6"), ("u5", "i5"), ("u5", "i6")]
    src = write(tmp_path / "log.csv", "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in rows))
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "2", "--min-item-interactions", "2")
    assert (facts["n_users"], facts["n_items"], facts["n_interactions"]) == (2, 2, 4)
    dropped = facts["stats"]["dropped_rows"]
    assert dropped["too_few_user_interactions"] + dropped["too_few_item_interactions"] == 6
    assert sequences(tmp_path / "ds") == {"u4": ["i5", "i6"], "u5": ["i5", "i6"]}
    assert read(tmp_path / "ds")[2]["raw_item"].to_list() == ["i5", "i6"]  # ids renumbered 1..2


def test_blank_lines_are_not_rows(tmp_path):
    src = write(tmp_path / "ml.txt", "1 5\n\n1 6\n   \n2 5\n")
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["n_interactions"] == 3 and facts["stats"]["dropped_rows"]["missing_values"] == 0
    assert sequences(tmp_path / "ds") == {"1": ["5", "6"], "2": ["5"]}


def test_missing_values_dropped_and_counted(tmp_path):
    src = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,a,1\n1,,2\n,b,3\n1,c,\n1,d,4\n")
    facts = prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    assert facts["stats"]["dropped_rows"]["missing_values"] == 3
    assert sequences(tmp_path / "ds") == {"1": ["a", "d"]}


# ---------------------------------------------------------------- split and the contract


def test_leave_one_out_split(tmp_path):
    rows = [("a", i) for i in range(5)] + [("b", i) for i in range(3)] + [("c", 0), ("c", 1), ("d", 0)]
    src = write(tmp_path / "log.csv", "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in rows))
    prepare(src, tmp_path / "ds", "--min-user-interactions", "1")
    inter = read(tmp_path / "ds")[0]
    got = {u: g["split"].to_list() for (u,), g in inter.group_by("user", maintain_order=True)}
    assert got == {0: ["train", "train", "train", "val", "test"], 1: ["train", "val", "test"],
                   2: ["train", "train"], 3: ["train"]}


def test_contract_dtypes_order_and_yaml(sample_ds, sample_csv):
    inter, users, items, meta = read(sample_ds)
    assert dict(inter.schema) == INTERACTIONS_SCHEMA
    assert dict(users.schema) == USERS_SCHEMA
    assert dict(items.schema) == ITEMS_SCHEMA
    assert inter["user"].is_sorted() and (inter["pos"].to_numpy() == _expected_pos(inter["user"].to_numpy())).all()
    assert set(inter["split"].unique()) == {"train", "val", "test"}
    assert users["user"].to_list() == list(range(meta["n_users"]))
    assert items["item"].to_list() == list(range(1, meta["n_items"] + 1))
    train_counts = inter.filter(pl.col("split") == "train").group_by("item").len().sort("item")
    assert items.join(train_counts, on="item", how="left")["len"].fill_null(0).to_list() == items["train_count"].to_list()
    assert inter["item"].min() >= 1 and inter["item"].max() == meta["n_items"]

    assert meta["format_version"] == 1
    assert {"format_version", "n_users", "n_items", "n_interactions", "fingerprint", "source", "options",
            "stats"} <= set(meta)
    assert all(type(meta[k]) is int for k in ("n_users", "n_items", "n_interactions"))
    assert meta["n_interactions"] == inter.height
    assert len(meta["fingerprint"]) == 64 and int(meta["fingerprint"], 16) >= 0
    assert meta["source"] == {"path": str(sample_csv.resolve()),
                              "sha256": hashlib.sha256(sample_csv.read_bytes()).hexdigest(), "format": "csv"}
    assert meta["options"]["min_user_interactions"] == 5 and meta["options"]["min_item_interactions"] == 0
    s = meta["stats"]
    lengths = inter.group_by("user").len()["len"]
    assert s["sequence_length"] == {"min": lengths.min(), "median": float(lengths.median()), "max": lengths.max()}
    assert s["long_tail_share"] == pytest.approx((items["train_count"] < LONG_TAIL_THRESHOLD).mean())
    assert set(s["dropped_rows"]) == {"missing_values", "below_min_rating", "too_few_user_interactions",
                                      "too_few_item_interactions"}
    assert s["split_sizes"]["test"] == s["split_sizes"]["val"] == meta["n_users"]

    ds = load_dataset(sample_ds)  # the checked reader later stages use
    assert ds.n_items == meta["n_items"] and ds.offsets[-1] == meta["n_interactions"]


def _expected_pos(user: np.ndarray) -> np.ndarray:
    starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
    lengths = np.diff(np.r_[starts, user.size])
    return np.arange(user.size) - np.repeat(starts, lengths)


def test_sample_data_keeps_whole_catalogue(sample_ds):
    meta = read(sample_ds)[3]
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (1000, 2000, 30000)


def test_fingerprint_stable_and_sensitive(tmp_path, sample_csv):
    base = prepare(sample_csv, tmp_path / "a")["fingerprint"]
    assert prepare(sample_csv, tmp_path / "b")["fingerprint"] == base  # same input, same options
    copy = write(tmp_path / "elsewhere" / "copy.csv", sample_csv.read_bytes())
    assert prepare(copy, tmp_path / "c")["fingerprint"] == base  # the path is not part of it
    assert prepare(sample_csv, tmp_path / "d", "--min-user-interactions", "6")["fingerprint"] != base
    changed = write(tmp_path / "changed.csv", sample_csv.read_text() + "1,1,1999999999\n")
    assert prepare(changed, tmp_path / "e")["fingerprint"] != base


def test_json_file_and_stdout(tmp_path, sample_csv):
    res = invoke(["prepare", sample_csv, "--out", tmp_path / "ds", "--json", tmp_path / "facts.json"])
    assert res.exit_code == 0 and res.stdout == ""  # the table goes to stderr
    assert "prepare" in res.stderr
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["n_items"] == 2000 and facts["out"] == str(tmp_path / "ds")
    res = invoke(["prepare", sample_csv, "--out", tmp_path / "ds2", "--json", "-"])
    assert json.loads(res.stdout) == facts | {"out": str(tmp_path / "ds2"), "seconds": json.loads(res.stdout)["seconds"]}


def test_overwrite(tmp_path, sample_csv):
    out = tmp_path / "ds"
    write(out / "marker", "old")
    write(out / "dataset.yaml", "format_version: 1\n")  # a dataset folder (--overwrite replaces no other kind)
    res = invoke(["prepare", sample_csv, "--out", out, "-q"])
    assert res.exit_code == 1 and str(out) in error_line(res) and "--overwrite" in error_line(res)
    assert (out / "marker").exists()
    res = invoke(["prepare", sample_csv, "--out", out, "-q", "--overwrite"])
    assert res.exit_code == 0 and not (out / "marker").exists() and (out / "dataset.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary siblings left


# ---------------------------------------------------------------- bad input: one Error line, nothing written

NUMS = "user_id,item_id,timestamp\n" + "".join(f"1,{i},{i}\n" for i in range(5))


BAD_INPUTS = {
    "missing file": ("nope.csv", None, [], "not found"),
    "a directory": ("folder.csv", "DIR", [], "directory"),
    "empty file": ("empty.csv", "", [], "empty"),
    "binary garbage": ("garbage.csv", bytes(range(256)) * 20, [], "binary"),
    "not utf-8": ("latin.csv", "user_id,item_id\nJos\xe9,1\n".encode("latin-1"), [], "UTF-8"),
    "fake parquet": ("data.parquet", "user_id,item_id\n1,2\n", [], "Parquet"),
    "undetectable format": ("log.dat", "hello world\n", [], "--format"),
    "header only": ("log.csv", "user_id,item_id\n", [], "no interactions"),
    "missing item column": ("log.csv", "user_id,product\n1,2\n", [], "item_id"),
    "misnamed --user-col": ("log.csv", NUMS, ["--user-col", "visitor"], "visitor"),
    "misnamed --time-col": ("log.csv", NUMS, ["--time-col", "when"], "when"),
    "non-numeric sasrec id": ("ml.txt", "1 2\n1 3\nfoo 4\n", ["--format", "sasrec"], "line 3"),
    "non-numeric movielens id": ("u.data", "1\t2\t5\t100\nx\t3\t4\t200\n", [], "user_id"),
    "non-numeric time": ("log.csv", "user_id,item_id,timestamp\n1,a,5\n1,b,soon\n", [], "'soon'"),
    "non-numeric recbole time": ("x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tlater\n", [], "later"),
    "unparsable date": ("log.csv", "user_id,item_id,timestamp\n1,a,2020-01-01\n1,b,2020-13-45\n", [], "2020-13-45"),
    "unparsable gowalla time": ("g.txt", "0\t2010-10-19T23:55:27Z\t1\t2\t3\n0\t2010-10-99T00:00:00Z\t1\t2\t3\n",
                                ["--format", "gowalla"], "line 2"),
    "unparsable booking date": ("b.csv", BOOKING.replace("2016-04-11,2016-04-12", "yesterday,2016-04-12"), [],
                                "yesterday"),
    "only rows with missing values": ("log.csv", "user_id,item_id,timestamp\n1,,5\n,2,6\n\n", [], "missing"),
    "nothing above --min-rating": ("u.data", "1\t2\t1\t100\n", ["--min-rating", "4"], "below --min-rating"),
    "nothing left after filtering": ("log.csv", NUMS, ["--min-user-interactions", "6"], "no interactions left"),
    "min rating without ratings": ("log.csv", NUMS, ["--min-rating", "3"], "rating"),
    "column options on sasrec": ("ml.txt", SASREC, ["--user-col", "u"], "--user-col"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input(tmp_path, case):
    name, content, args, words = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    src = work / name
    if content == "DIR":
        src.mkdir()
    elif content is not None:
        write(src, content)
    before = sorted(p.name for p in work.iterdir())
    res = invoke(["prepare", src, "--out", work / "ds", "-q", *args])
    assert res.exit_code == 1, res.output
    line = error_line(res)
    assert str(src) in line and words in line, line
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written, no temporary left


def test_out_would_replace_input(tmp_path):
    src = write(tmp_path / "data" / "log.csv", NUMS)
    res = invoke(["prepare", src, "--out", tmp_path / "data", "--overwrite", "-q"])
    assert res.exit_code == 1 and "replace the input" in error_line(res)
    assert src.read_text() == NUMS


@pytest.mark.parametrize("where", ["json", "out"])
def test_unwritable_outputs_are_refused_before_work(tmp_path, sample_csv, where):
    missing = tmp_path / "no" / "such"
    out, json_path = (tmp_path / "ds", missing / "facts.json") if where == "json" else (missing / "ds", None)
    args = ["prepare", sample_csv, "--out", out, "-q"] + (["--json", json_path] if json_path else [])
    res = invoke(args)
    assert res.exit_code == 1 and str(missing) in error_line(res) and "does not exist" in error_line(res)
    assert list(tmp_path.iterdir()) == []


def test_existing_dir_without_overwrite(tmp_path, sample_csv):
    (tmp_path / "ds").mkdir()
    res = invoke(["prepare", sample_csv, "--out", tmp_path / "ds", "-q"])
    assert res.exit_code == 1 and str(tmp_path / "ds") in error_line(res)
    assert list((tmp_path / "ds").iterdir()) == []


@pytest.mark.parametrize("args,words", [
    (["--format", "excel"], ["--format", "sasrec", "parquet"]),
    (["--min-user-interactions", "0"], ["--min-user-interactions"]),
    (["--min-item-interactions", "-1"], ["--min-item-interactions"]),
])
def test_bad_option_values_are_usage_errors(tmp_path, sample_csv, args, words):
    res = invoke(["prepare", sample_csv, "--out", tmp_path / "ds", *args])
    assert res.exit_code == 2
    assert all(w in res.stderr for w in words), res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- the library against a plain reference


def _reference(rows: list[tuple[int, int, int]], min_user: int, min_item: int) -> dict[int, list[int]]:
    """The spec in plain Python: filter until stable, then each user's items by (time, file position)."""
    kept = list(enumerate(rows))
    while True:
        uc, ic = {}, {}
        for _, (u, i, _t) in kept:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        new = [(k, r) for k, r in kept if uc[r[0]] >= min_user and ic[r[1]] >= min_item]
        if len(new) == len(kept):
            break
        kept = new
    seqs: dict[int, list[int]] = {}
    for _k, (u, i, _t) in sorted(kept, key=lambda kr: (kr[1][0], kr[1][2], kr[0])):
        seqs.setdefault(u, []).append(i)
    return seqs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.integers(-3, 8), st.integers(0, 4)), min_size=1, max_size=40),
       min_user=st.integers(1, 4), min_item=st.integers(0, 3))
def test_prepare_matches_reference(tmp_path_factory, rows, min_user, min_item):
    root = tmp_path_factory.mktemp("ref")
    src = write(root / "log.csv", "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    want = _reference(rows, min_user, min_item)
    cfg = PrepareConfig(input=src, out=root / "ds", min_user_interactions=min_user, min_item_interactions=min_item)
    if not want:
        with pytest.raises(Exception, match="no interactions left"):
            run(cfg)
        return
    res = run(cfg)
    assert sequences(root / "ds") == {str(u): [str(i) for i in s] for u, s in sorted(want.items())}
    assert res.n_items == len({i for s in want.values() for i in s})


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_order_is_a_stable_sort_by_user_then_time(data):
    n = data.draw(st.integers(2, 200))
    n_users = data.draw(st.integers(1, 10))
    user = np.array(data.draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)), dtype=np.int32)
    scale = data.draw(st.sampled_from([1, 1000, 2**40, 2**60]))
    ts = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), dtype=np.int64) * scale
    order = _order(user, ts, int(user.max()) + 1)
    got = np.arange(n) if order is None else order
    assert (got == np.lexsort((np.arange(n), ts, user))).all()


_NAMES = ["log.csv", "log.tsv", "ml.txt", "u.data", "ratings.dat", "ratings.csv", "x.inter", "checkins.txt"]
_HEADERS = ["", "user_id,item_id,timestamp\n", "user_id\titem_id\ttimestamp\n", "userId,movieId,rating,timestamp\n",
            "user_id:token\titem_id:token\ttimestamp:float\n", BOOKING.splitlines()[0] + "\n"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(_NAMES), header=st.sampled_from(_HEADERS),
       body=st.text(alphabet="0123456789ab-:.TZ+ ,\t\n", max_size=120),
       fmt=st.sampled_from([None, "sasrec", "movielens", "recbole", "gowalla", "booking", "csv", "tsv"]))
def test_any_text_succeeds_or_fails_with_one_error_line(tmp_path_factory, name, header, body, fmt):
    root = tmp_path_factory.mktemp("fuzz")
    src = write(root / name, header + body)
    res = invoke(["prepare", src, "--out", root / "ds", "-q", "--min-user-interactions", "1",
                  *(["--format", fmt] if fmt else [])])
    if res.exit_code == 0:
        assert load_dataset(root / "ds").n_items >= 1
    else:
        assert res.exit_code == 1, (res.output, res.exception)
        error_line(res)
        assert sorted(p.name for p in root.iterdir()) == [name]


# ---------------------------------------------------------------- synth


def test_synth_catalogue_users_and_determinism(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    for path, seed in ((a, 3), (b, 3), (c, 4)):
        res = invoke(["synth", "--users", 200, "--items", 700, "--interactions", 5000, "--seed", seed,
                      "--out", path, "-q"])
        assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    df = pl.read_csv(a)
    assert df.columns == ["user_id", "item_id", "timestamp"] and df.height == 5000
    assert sorted(df["item_id"].unique()) == list(range(1, 701))
    assert df.group_by("user_id").len()["len"].min() >= 5 and df["user_id"].n_unique() == 200
    assert df.select((pl.col("timestamp").diff().over("user_id") > 0).all()).item()


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet"])
def test_synth_formats_by_extension(tmp_path, ext):
    out = tmp_path / f"log.{ext}"
    res = invoke(["synth", "--users", 20, "--items", 50, "--interactions", 300, "--out", out, "-q", "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["interactions"] == 300
    df = pl.read_parquet(out) if ext == "parquet" else pl.read_csv(out, separator="\t" if ext == "tsv" else ",")
    assert df.columns == ["user_id", "item_id", "timestamp"] and df.height == 300
    facts = prepare(out, tmp_path / "ds")
    assert (facts["format"], facts["n_items"], facts["n_users"]) == (ext, 50, 20)


def test_synth_has_learnable_sequential_structure():
    from recjpq_cli.stages.synth import SynthConfig, generate

    df = generate(SynthConfig(users=1000, items=2000, interactions=30000, out=Path("unused.csv")))
    u, i = df["user_id"].to_numpy(), df["item_id"].to_numpy()
    same = u[1:] == u[:-1]
    assert ((i[1:] == i[:-1]) & same).mean() < 0.02  # few immediate repeats
    last = np.flatnonzero(np.r_[~same, True])
    is_last = np.zeros(len(i) - 1, dtype=bool)
    is_last[last[last > 0] - 1] = True
    pairs = pl.DataFrame({"a": i[:-1][same & ~is_last], "b": i[1:][same & ~is_last]})
    top_next = (pairs.group_by("a", "b").len().sort("len", "b", descending=[True, False])
                .group_by("a", maintain_order=True).agg(pl.col("b").head(10).alias("cand")))
    probe = pl.DataFrame({"a": i[last - 1], "b": i[last]}).join(top_next, on="a", how="left")
    hr_next = probe.select(pl.col("cand").list.contains(pl.col("b")).fill_null(False).mean()).item()
    popular = np.argsort(-np.bincount(np.delete(i, last)))[:10]
    hr_pop = np.isin(i[last], popular).mean()
    assert hr_next > 0.4 and hr_pop < 0.2 and hr_next > 3 * hr_pop


@pytest.mark.parametrize("args,code,words", [
    (["--out", "log.json"], 1, ".csv, .tsv or .parquet"),
    (["--users", "100", "--items", "10", "--interactions", "100", "--out", "x.csv"], 1, "--interactions"),
    (["--items", "5000", "--interactions", "4000", "--out", "x.csv"], 1, "--interactions"),
    (["--users", "0", "--out", "x.csv"], 2, "--users"),
    (["--items", "-3", "--out", "x.csv"], 2, "--items"),
])
def test_synth_bad_values(tmp_path, monkeypatch, args, code, words):
    monkeypatch.chdir(tmp_path)
    res = invoke(["synth", *args])
    assert res.exit_code == code, res.output
    assert words in (error_line(res) if code == 1 else res.stderr)
    assert list(tmp_path.iterdir()) == []


def test_synth_existing_output(tmp_path):
    keep = "user_id,item_id,timestamp\n1,1,0\n"  # a log synth wrote before: --overwrite may replace it
    out = write(tmp_path / "log.csv", keep)
    res = invoke(["synth", "--users", 20, "--items", 50, "--interactions", 300, "--out", out])
    assert res.exit_code == 1 and str(out) in error_line(res) and out.read_text() == keep
    assert invoke(["synth", "--users", 20, "--items", 50, "--interactions", 300, "--out", out, "-q",
                   "--overwrite"]).exit_code == 0
    assert pl.read_csv(out).height == 300 and sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


# ---------------------------------------------------------------- the command line itself


def test_help_lists_commands_without_importing_torch():
    code = "import recjpq_cli.cli, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    res = invoke(["--help"])
    assert res.exit_code == 0 and "prepare" in res.stdout and "synth" in res.stdout


def test_version_and_module_entry_point():
    from recjpq_cli import __version__

    res = invoke(["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"recjpq {__version__}"
    out = subprocess.run([sys.executable, "-m", "recjpq_cli", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0 and "prepare" in out.stdout


@pytest.mark.parametrize("command", ["prepare", "synth"])
def test_docs_cover_every_option(command):
    import typer.main

    from recjpq_cli.cli import app

    doc = (REPO / "docs" / "cli.md").read_text()
    assert f"## `recjpq {command}" in doc
    section = doc.split(f"## `recjpq {command}", 1)[1].split("\n## ", 1)[0]
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    for p in params:
        names = [o for o in p.opts if o.startswith("--")] or [p.name.upper()]
        assert any(f"`{n}" in section for n in names), f"{command}: {names} not in docs/cli.md"
