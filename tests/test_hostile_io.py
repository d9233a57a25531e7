"""Hostile paths and files (issue 15, not training): --overwrite of another kind, outputs over inputs,
read-only and full disks, foreign Parquet types, tampered dataset folders. Each refusal: exit 1, one
``Error:`` line, no traceback, the folder's files unchanged (no temporary left behind)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import numpy as np
import polars as pl
import pytest
from conftest import invoke
from hostile import copy_tree, refused, snapshot, tamper_dataset

# ------------------------------------------------------------------- case 3: --overwrite of another kind


def test_prepare_overwrite_refuses_a_folder_that_is_not_a_dataset(sample_csv, tmp_path) -> None:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "thesis.tex").write_text("years of work")
    refused(["prepare", sample_csv, "--out", victim, "--overwrite"], tmp_path,
            words=(str(victim), "is a folder, not a dataset folder"))


def test_prepare_overwrite_refuses_its_own_input(sample_ds, tmp_path) -> None:
    ds = copy_tree(sample_ds, tmp_path / "ds")
    raw = ds / "raw.csv"
    pl.read_parquet(ds / "interactions.parquet").select(user_id="user", item_id="item").write_csv(raw)
    refused(["prepare", raw, "--out", ds, "--overwrite"], tmp_path, words=(str(ds), "replace the input"))


def test_prepare_overwrite_replaces_a_dataset_folder(sample_csv, sample_ds, tmp_path) -> None:
    ds = copy_tree(sample_ds, tmp_path / "ds")
    (ds / "stale").write_text("x")
    res = invoke(["prepare", sample_csv, "--out", ds, "--overwrite", "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ds.iterdir()) == sorted(p.name for p in sample_ds.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_synth_overwrite_replaces_only_a_synthetic_log(tmp_path, suffix) -> None:
    small = ["synth", "--users", 10, "--items", 10, "--interactions", 50, "-q"]
    victim = tmp_path / f"thesis{suffix}"
    victim.write_text("user,item\nmy,data\n")
    refused([*small, "--out", victim, "--overwrite"], tmp_path, words=(str(victim), "--overwrite replaces only"))
    log = tmp_path / f"log{suffix}"
    assert invoke([*small, "--out", log]).exit_code == 0
    before = log.read_bytes()
    res = invoke([*small, "--seed", 1, "--out", log, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert log.read_bytes() != before  # a log synth wrote is replaced


@pytest.mark.parametrize("cmd", ["assign", "compress", "recommend", "evaluate"])
def test_overwrite_replaces_only_the_commands_own_kind(trained, tmp_path, cmd) -> None:
    """Each file output with --overwrite over another kind of file: a text file, a raw Parquet log."""
    ds = trained["ds"]
    other = tmp_path / "other.parquet"
    pl.DataFrame({"user_id": ["a"], "item_id": ["b"]}).write_parquet(other)
    args = {
        "assign": ["assign", ds, "--strategy", "random", "-m", 4, "-b", 16, "--out", tmp_path / "c.npy"],
        "compress": ["compress", trained["run"], "--data", ds, "--out", other],
        "recommend": ["recommend", trained["model"], "--data", ds, "--out", other, "--device", "cpu"],
        "evaluate": ["evaluate", trained["model"], "--data", ds, "--per-user", other, "--device", "cpu"],
    }[cmd]
    if cmd == "assign":
        (tmp_path / "c.npy").write_text("not codes")
    refused([*args, "--overwrite"], tmp_path, words=("--overwrite replaces only",))


def test_assign_overwrite_refuses_a_sidecar_that_is_not_one(trained, tmp_path) -> None:
    out = tmp_path / "dataset.npy"
    np.save(out, np.zeros((3, 4), dtype=np.uint8))
    (tmp_path / "dataset.yaml").write_text("n_items: 3\nmy: notes\n")
    refused(["assign", trained["ds"], "--strategy", "random", "-m", 4, "-b", 16, "--out", out, "--overwrite"],
            tmp_path, words=(str(tmp_path / "dataset.yaml"), "not a codes sidecar"))


def test_overwrite_of_the_same_kind_still_works(trained, tmp_path) -> None:
    out = tmp_path / "r.parquet"
    for k in (5, 3):
        res = invoke(["recommend", trained["model"], "--data", trained["ds"], "--out", out, "--k", k,
                      "--device", "cpu", "--overwrite", "-q"])
        assert res.exit_code == 0, res.output
    assert pl.read_parquet(out)["rank"].max() == 3


# -------------------------------------------------------------------- case 4, case 5: odd destinations


def test_prepare_out_dot_in_a_folder_that_is_not_a_dataset(sample_csv, tmp_path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    refused(["prepare", sample_csv, "--out", ".", "--overwrite"], tmp_path, words=("not a dataset folder",))


def test_prepare_out_dot_inside_a_dataset_folder(sample_csv, sample_ds, tmp_path, monkeypatch) -> None:
    ds = copy_tree(sample_ds, tmp_path / "ds")
    monkeypatch.chdir(ds)
    refused(["prepare", sample_csv, "--out", ".", "--overwrite"], tmp_path, words=(str(ds), "current folder"))


def test_assign_out_is_a_directory(trained, tmp_path) -> None:
    (tmp_path / "d.npy").mkdir()
    refused(["assign", trained["ds"], "--strategy", "random", "-m", 4, "-b", 16, "--out", tmp_path / "d.npy",
             "--overwrite"], tmp_path, words=(str(tmp_path / "d.npy"), "is a folder, not a .npy array"))


def test_assign_sidecar_path_is_a_directory(trained, tmp_path) -> None:
    (tmp_path / "d.yaml").mkdir()
    refused(["assign", trained["ds"], "--strategy", "random", "-m", 4, "-b", 16, "--out", tmp_path / "d.npy",
             "--overwrite"], tmp_path, words=(str(tmp_path / "d.yaml"), "is a folder"))


# ----------------------------------------------------------------- case 6 and 7: read-only and full disks


def _commands(t: dict, tmp_path) -> dict[str, list]:
    ds = t["ds"]
    return {
        "prepare": ["prepare", t["sample_csv"], "--out", tmp_path / "ds"],
        "assign": ["assign", ds, "--strategy", "random", "-m", 4, "-b", 16, "--out", tmp_path / "c.npy"],
        "compress": ["compress", t["run"], "--data", ds, "--out", tmp_path / "m.safetensors"],
        "recommend": ["recommend", t["model"], "--data", ds, "--out", tmp_path / "r.parquet", "--device", "cpu"],
        "evaluate": ["evaluate", t["model"], "--data", ds, "--per-user", tmp_path / "u.parquet", "--device", "cpu"],
    }


@pytest.fixture
def io_cases(trained, sample_csv):
    return dict(trained, sample_csv=sample_csv)


def _under(path, root) -> bool:
    return str(path).startswith(str(root))


@pytest.mark.parametrize("cmd", ["prepare", "assign", "compress", "recommend", "evaluate"])
def test_read_only_destination(io_cases, tmp_path, monkeypatch, cmd) -> None:
    """Simulated (tests run as root): creating a file in the destination folder fails with EROFS."""
    real = tempfile.mkstemp

    def mkstemp(*a, **k):
        if _under(k.get("dir", ""), tmp_path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, **k)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    refused(_commands(io_cases, tmp_path)[cmd], tmp_path, words=(str(tmp_path), "Read-only file system"))


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EACCES, errno.EISDIR])
@pytest.mark.parametrize("cmd", ["prepare", "assign", "compress", "recommend", "evaluate"])
def test_rename_onto_the_destination_fails(io_cases, tmp_path, monkeypatch, cmd, err) -> None:
    real = os.replace

    def replace(src, dst, *a, **k):
        if _under(dst, tmp_path) and ".tmp-" not in os.path.basename(dst):
            raise OSError(err, os.strerror(err))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    refused(_commands(io_cases, tmp_path)[cmd], tmp_path, words=(str(tmp_path), os.strerror(err)))


def _full_disk(monkeypatch, tmp_path, cmd: str) -> None:
    """Make the command's writer fail as it does on a full disk: after writing part of the file, with the
    exception type that library really raises (measured on /dev/full)."""
    def partial(path) -> None:
        with open(path, "wb") as f:
            f.write(b"partial")
    if cmd in ("prepare", "recommend", "evaluate"):
        real = pl.DataFrame.write_parquet

        def write_parquet(self, file, *a, **k):
            if _under(file, tmp_path):
                partial(file)
                raise pl.exceptions.ComputeError("parquet: File out of specification: underlying IO error: "
                                                 "No space left on device (os error 28)")
            return real(self, file, *a, **k)
        monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    elif cmd == "assign":
        def save(f, *a, **k):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(np, "save", save)
    else:
        import safetensors.torch
        from safetensors import SafetensorError

        def save_file(tensors, filename, metadata=None):
            partial(filename)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize("cmd", ["prepare", "assign", "compress", "recommend", "evaluate"])
def test_full_disk(io_cases, tmp_path, monkeypatch, cmd) -> None:
    _full_disk(monkeypatch, tmp_path, cmd)
    refused(_commands(io_cases, tmp_path)[cmd], tmp_path, words=(str(tmp_path), "No space left on device"))


def test_full_disk_during_prepare_overwrite_keeps_the_old_dataset(sample_csv, sample_ds, tmp_path, monkeypatch) -> None:
    ds = copy_tree(sample_ds, tmp_path / "ds")
    _full_disk(monkeypatch, tmp_path, "prepare")
    refused(["prepare", sample_csv, "--out", ds, "--overwrite", "--min-user-interactions", 20], tmp_path,
            words=(str(ds), "No space left on device"))


# ---------------------------------------------------------------- case 8: Parquet id columns of odd types


@pytest.mark.parametrize("col, values, dtype", [
    ("user_id", [[1, 2], [3]], "List(Int64)"),
    ("item_id", [b"\xff\xfe", b"ab"], "Binary"),
    ("user_id", [{"a": 1}, {"a": 2}], "Struct"),
])
def test_parquet_id_column_of_a_foreign_type(tmp_path, col, values, dtype) -> None:
    other = "item_id" if col == "user_id" else "user_id"
    src = tmp_path / "log.parquet"
    pl.DataFrame({col: values, other: ["x", "y"]}).write_parquet(src)
    refused(["prepare", src, "--out", tmp_path / "ds"], tmp_path, words=(str(src), f"'{col}'", dtype))


# ------------------------------------------------------------------- case 9: tampered dataset folders


def _item(value: int):
    return lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(value).otherwise(pl.col("item"))
                                      .cast(pl.Int32).alias("item"))


TAMPERED = {
    "n_items many": (None, lambda m: m.update(n_items="many"), ("dataset.yaml", "'n_items'", "'many'")),
    "n_users bool": (None, lambda m: m.update(n_users=True), ("dataset.yaml", "'n_users'")),
    "item above n_items": (_item(99_999), None, ("interactions.parquet", "'item'", "99999", "n_items")),
    "item 0": (_item(0), None, ("interactions.parquet", "'item'", "outside 1..")),
    "user type": (lambda df: df.with_columns(pl.col("user").cast(pl.Int64)), None,
                  ("interactions.parquet", "'user'", "Int64")),
    "split value": (lambda df: df.with_columns(pl.lit("later").alias("split")), None,
                    ("interactions.parquet", "'split'")),
    "item null": (lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(None)
                                             .otherwise(pl.col("item")).alias("item")), None,
                  ("interactions.parquet", "'item'", "missing")),
    "unordered": (lambda df: df.reverse(), None, ("interactions.parquet", "not ordered by user")),
}


@pytest.mark.parametrize("case", list(TAMPERED))
@pytest.mark.parametrize("cmd", ["assign", "evaluate", "train"])
def test_tampered_dataset_is_refused_on_load(trained, tmp_path, cmd, case) -> None:
    frame, meta, words = TAMPERED[case]
    ds = tamper_dataset(trained["ds"], tmp_path / "ds", frame, meta)
    args = {"assign": ["assign", ds, "--strategy", "svd", "-m", 4, "-b", 16, "--out", tmp_path / "c.npy"],
            "evaluate": ["evaluate", "--data", ds, "--baseline", "popularity", "--json", tmp_path / "e.json"],
            "train": ["train", ds, "--embedding", "full", "--out", tmp_path / "run", "--max-steps", 1,
                      "--set", "d=16", "--set", "max_len=10", "--device", "cpu"]}[cmd]
    refused(args, tmp_path, words=words)


# ----------------------------------------------------- case 15, 16: outputs over inputs, --json over --out


def test_compress_out_is_the_runs_own_checkpoint(trained, tmp_path) -> None:
    run = copy_tree(trained["run"], tmp_path / "run")
    refused(["compress", run, "--data", trained["ds"], "--out", run / "best.pt", "--overwrite"], tmp_path,
            words=(str(run / "best.pt"), "own input"))


@pytest.mark.parametrize("cmd", ["recommend", "evaluate"])
def test_output_over_a_dataset_file(trained, tmp_path, cmd) -> None:
    ds = copy_tree(trained["ds"], tmp_path / "ds")
    flag = "--out" if cmd == "recommend" else "--per-user"
    refused([cmd, trained["model"], "--data", ds, flag, ds / "interactions.parquet", "--overwrite",
             "--device", "cpu"], tmp_path, words=(str(ds / "interactions.parquet"), "own input"))


def test_recommend_out_over_its_users_file(trained, tmp_path) -> None:
    users = tmp_path / "users.parquet"
    users.write_text("1\n2\n")
    refused(["recommend", trained["model"], "--data", trained["ds"], "--users", users, "--out", users,
             "--overwrite", "--device", "cpu"], tmp_path, words=(str(users), "own input"))


def test_json_over_an_input(trained, tmp_path) -> None:
    model = tmp_path / "m.safetensors"
    shutil.copy(trained["model"], model)
    refused(["recommend", model, "--data", trained["ds"], "--out", tmp_path / "r.parquet", "--json", model,
             "--device", "cpu"], tmp_path, words=(str(model), "--json", "own input"))


@pytest.mark.parametrize("cmd", ["prepare", "assign", "assign-sidecar", "compress", "recommend", "evaluate", "synth"])
def test_json_and_out_name_the_same_file(io_cases, tmp_path, cmd) -> None:
    t = io_cases
    out = {"prepare": tmp_path / "ds" / "dataset.yaml", "assign": tmp_path / "c.npy",
           "assign-sidecar": tmp_path / "c.yaml", "compress": tmp_path / "m.safetensors",
           "recommend": tmp_path / "r.parquet", "evaluate": tmp_path / "u.parquet",
           "synth": tmp_path / "s.csv"}[cmd]
    if cmd == "synth":
        args = ["synth", "--users", 10, "--items", 10, "--interactions", 50, "--out", out]
    else:
        args = _commands(t, tmp_path)[cmd.split("-")[0]]
    if cmd == "prepare":
        (tmp_path / "ds").mkdir()
    refused([*args, "--json", out], tmp_path, words=(str(out), "--json and --out name the same file"))


# ------------------------------------------------------------------------------------------ minors


def test_users_file_ids_match_exactly_as_written(trained, tmp_path) -> None:
    raw = pl.read_parquet(trained["ds"] / "users.parquet")["raw_user"]
    a, b = raw[0], raw[1]
    users = tmp_path / "users.txt"
    users.write_text(f"{a}\n\n   \n{b}\n")  # blank lines are skipped
    out = tmp_path / "r.parquet"
    res = invoke(["recommend", trained["model"], "--data", trained["ds"], "--users", users, "--out", out, "-q",
                  "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(out)["user"].unique(maintain_order=True).to_list() == [a, b]
    out.unlink()
    users.write_text(f"{a}\n {b} \n")  # ' 2 ' is not the raw id '2'
    refused(["recommend", trained["model"], "--data", trained["ds"], "--users", users, "--out", out,
             "--device", "cpu"], tmp_path, words=(str(users), f"unknown user id ' {b} '", "line 2"))


def test_recommend_k_above_the_catalogue(trained, tmp_path) -> None:
    refused(["recommend", trained["model"], "--data", trained["ds"], "--out", tmp_path / "r.parquet", "--k", 5000,
             "--device", "cpu"], tmp_path, words=("--k 5,000", "2,000 items"))


def test_user_col_equal_to_item_col(tmp_path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("user_id,item_id\n1,2\n")
    refused(["prepare", src, "--out", tmp_path / "ds", "--user-col", "user_id", "--item-col", "user_id"], tmp_path,
            words=("--user-col", "--item-col", "'user_id'"))


def test_snapshot_sees_a_leftover_temporary(tmp_path) -> None:
    """The helper every test here relies on notices a hidden temporary file."""
    before = snapshot(tmp_path)
    (tmp_path / ".x.tmp-1").write_bytes(b"")
    assert snapshot(tmp_path) != before
