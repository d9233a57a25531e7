"""`recjpq recommend`: top-k per user equal to a full sort, seen items never recommended, --users, from a run
or a model file, bad input; and the whole path from `recjpq train` through evaluate, compress and recommend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import error_line, invoke
from test_evaluate import make_run

from recjpq_cli.checkpoint import load_checkpoint, model_from_checkpoint
from recjpq_cli.data import sequences
from recjpq_cli.data.schema import load_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_ds) -> Path:
    return make_run(tmp_path_factory.mktemp("rec-runs") / "jpq", sample_ds)


def _seen(ds_path: Path) -> pl.DataFrame:
    ds = load_dataset(ds_path)
    users = ds.raw_users()
    items = ds.raw_items()
    return pl.DataFrame({"user": users.gather(pl.Series(ds.user_index())), "item": items.gather(pl.Series(ds.item))})


def test_every_user_gets_k_unseen_items_best_first(run, sample_ds, tmp_path) -> None:
    out = tmp_path / "recs.parquet"
    res = invoke(["recommend", run, "--data", sample_ds, "--k", "7", "--out", out, "--json", tmp_path / "r.json"])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert df.columns == ["user", "rank", "item", "score"]
    assert df["user"].dtype == pl.String and df["item"].dtype == pl.String
    assert df.height == 1000 * 7 and df["user"].n_unique() == 1000
    assert df.group_by("user").agg(pl.col("rank"))["rank"].list.sort().to_list() == [list(range(1, 8))] * 1000
    ordered = df.sort(["user", "rank"]).group_by("user", maintain_order=True).agg(pl.col("score").diff().max())
    assert (ordered["score"].fill_null(0) <= 0).all()  # scores fall with rank
    assert df.join(_seen(sample_ds), on=["user", "item"], how="semi").height == 0  # seen items never recommended
    facts = json.loads((tmp_path / "r.json").read_text())
    assert facts["users"] == 1000 and facts["rows"] == 7000 and facts["filter_seen"] is True


def test_unfiltered_top_k_equals_a_full_sort(run, sample_ds, tmp_path) -> None:
    out = tmp_path / "recs.parquet"
    (tmp_path / "users.txt").write_text("3\n\n10\n3\n")  # blank lines skipped, repeats kept once
    res = invoke(["recommend", run, "--data", sample_ds, "--k", "5", "--out", out, "--users", tmp_path / "users.txt",
                  "--no-filter-seen", "-q"])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert df["user"].unique(maintain_order=True).to_list() == ["3", "10"]
    ds = load_dataset(sample_ds)
    model = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    uid = {u: i for i, u in enumerate(ds.raw_users().to_list())}
    raw_items = ds.raw_items()
    for user in ("3", "10"):
        u = np.array([uid[user]])
        with torch.no_grad():
            h = model.encode(sequences.histories(ds, u, ds.offsets[u + 1], 20))
            scores = model.items.score_all(h)[0]
        scores[0] = float("-inf")
        order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:5]
        got = df.filter(pl.col("user") == user).sort("rank")
        assert got["item"].to_list() == raw_items.gather(order).to_list()
        assert got["score"].to_numpy() == pytest.approx(scores[order].numpy(), rel=1e-6)


def test_model_file_and_run_recommend_the_same(run, sample_ds, tmp_path) -> None:
    model = tmp_path / "model.rjq"
    assert invoke(["compress", run, "--out", model, "--data", sample_ds, "-q"]).exit_code == 0
    for src, name in ((run, "a"), (model, "b")):
        res = invoke(["recommend", src, "--data", sample_ds, "--out", tmp_path / f"{name}.parquet", "-q"])
        assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "a.parquet").equals(pl.read_parquet(tmp_path / "b.parquet"))


def test_bad_input(run, sample_ds, tmp_path) -> None:
    out = tmp_path / "recs.parquet"
    (tmp_path / "users.txt").write_text("3\nghost\n10\nnobody\n")
    res = invoke(["recommend", run, "--data", sample_ds, "--out", out, "--users", tmp_path / "users.txt"])
    assert res.exit_code == 1
    line = error_line(res)
    assert str(tmp_path / "users.txt") in line and "'ghost'" in line and "line 2" in line and "1 more" in line
    assert not out.exists()
    for k in ("0", "-3"):
        res = invoke(["recommend", run, "--data", sample_ds, "--out", out, "--k", k])
        assert res.exit_code == 2 and not out.exists()
    other = make_run(tmp_path / "other", sample_ds, fingerprint="d" * 64)
    res = invoke(["recommend", other, "--data", sample_ds, "--out", out])
    assert res.exit_code == 1 and str(other) in error_line(res) and not out.exists()
    res = invoke(["recommend", run, "--data", sample_ds, "--out", out, "--users", tmp_path / "none.txt"])
    assert res.exit_code == 1 and "none.txt" in error_line(res)
    out.write_text("keep")
    res = invoke(["recommend", run, "--data", sample_ds, "--out", out])
    assert res.exit_code == 1 and "--overwrite" in error_line(res) and out.read_text() == "keep"


def test_train_then_evaluate_compress_recommend(sample_ds, tmp_path) -> None:
    """The real pipeline: a few training steps through the CLI, then every command of this issue."""
    codes, run = tmp_path / "codes.npy", tmp_path / "run"
    res = invoke(["assign", sample_ds, "--strategy", "random", "-m", "4", "-b", "32", "--out", codes, "-q"])
    assert res.exit_code == 0, res.output
    res = invoke(["train", sample_ds, "--codes", codes, "--out", run, "--max-steps", "3", "--device", "cpu", "-q",
                  "--set", "d=16", "--set", "max_len=20", "--set", "val_users=100", "--set", "batch_size=32"])
    assert res.exit_code == 0, res.output
    model = tmp_path / "model.rjq"
    assert invoke(["compress", run, "--out", model, "--data", sample_ds, "-q"]).exit_code == 0
    res = invoke(["evaluate", run, model, "--data", sample_ds, "--baseline", "popularity", "-q",
                  "--json", tmp_path / "e.json"])
    assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "e.json").read_text())["runs"]
    assert runs[0]["metrics"] == runs[1]["metrics"] and runs[1]["significance"]["mark"] == "="
    res = invoke(["recommend", model, "--data", sample_ds, "--out", tmp_path / "r.parquet", "--k", "3", "-q"])
    assert res.exit_code == 0 and pl.read_parquet(tmp_path / "r.parquet").height == 3000
