"""`recjpq compress`: the model file round trip (fp32 exact, fp16 within 1%), the size report, post-hoc PQ of
dense runs, loading without unpickling, and bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import error_line, invoke
from test_evaluate import make_run

from recjpq_cli.artifact import model_size, read_artifact
from recjpq_cli.jpq.pq import kmeans_pq


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_ds) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compress-runs")
    return {"jpq": make_run(root / "jpq", sample_ds, d=32, M=8, ksub=64),
            "full": make_run(root / "full", sample_ds, embedding="full"),
            "tied": make_run(root / "tied", sample_ds, embedding="full", tie=True),
            "bert": make_run(root / "bert", sample_ds, embedding="full", model="bert4rec")}


def _facts(path: Path) -> dict:
    return json.loads(path.read_text())


def _evaluate(src: Path, ds: Path, out: Path) -> dict:
    res = invoke(["evaluate", src, "--data", ds, "--json", out, "--per-user", out.with_suffix(".parquet"), "-q"])
    assert res.exit_code == 0, res.output
    return _facts(out)["runs"][0]


def test_fp32_file_gives_the_runs_metrics_exactly_fp16_within_1pc(runs, sample_ds, tmp_path) -> None:
    import polars as pl

    ref = _evaluate(runs["jpq"], sample_ds, tmp_path / "run.json")
    for dtype in ("fp32", "fp16", "bf16"):
        model = tmp_path / f"model-{dtype}.bin"  # any name
        res = invoke(["compress", runs["jpq"], "--out", model, "--data", sample_ds, "--centroid-dtype", dtype,
                      "--json", tmp_path / f"c-{dtype}.json"])
        assert res.exit_code == 0, res.output
        assert "item-table ratio" in res.stderr
        got = _evaluate(model, sample_ds, tmp_path / f"{dtype}.json")
        if dtype == "fp32":
            assert got["metrics"] == ref["metrics"]
            a = pl.read_parquet(tmp_path / "run.parquet")["rank"]
            b = pl.read_parquet(tmp_path / f"{dtype}.parquet")["rank"]
            assert a.equals(b)
        elif dtype == "fp16":
            for k, v in ref["metrics"].items():
                assert got["metrics"][k] == pytest.approx(v, rel=0.01), k
    c32, c16 = _facts(tmp_path / "c-fp32.json"), _facts(tmp_path / "c-fp16.json")
    assert c16["components"]["centroids"]["bytes"] * 2 == c32["components"]["centroids"]["bytes"]
    assert c16["item_table_ratio"] > c32["item_table_ratio"]


def test_size_report_and_file_contents(runs, sample_ds, tmp_path) -> None:
    out = tmp_path / "m.safetensors"
    res = invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds, "--json", tmp_path / "c.json", "-q"])
    assert res.exit_code == 0, res.output
    f = _facts(tmp_path / "c.json")
    n, d, m = 2000, 32, 8
    assert f["n_items"] == n and f["d"] == d and f["M"] == m and f["ksub"] == 64 and f["codes_dtype"] == "uint8"
    assert f["components"]["codes"] == {"count": (n + 1) * m, "bytes": (n + 1) * m}
    assert f["components"]["centroids"]["parameters"] == 64 * d
    assert f["dense_equivalent"]["item_table_bytes"] == 2 * (n + 1) * d * 4
    assert f["item_table_ratio"] == pytest.approx(2 * (n + 1) * d * 4 / ((n + 1) * m + 64 * d * 4))
    assert 1 < f["model_ratio"] < f["item_table_ratio"]
    assert f["file_bytes"] == out.stat().st_size < f["checkpoint_bytes"] == (runs["jpq"] / "best.pt").stat().st_size
    # safetensors: an 8-byte header length, then JSON; no pickle anywhere
    head = out.read_bytes()[:8 + struct.unpack("<Q", out.read_bytes()[:8])[0]]
    header = json.loads(head[8:])
    assert header["items.codes"]["dtype"] == "U8" and header["items.centroids"]["dtype"] == "F32"
    assert not any("optimizer" in k or k.startswith("state") for k in header)
    meta = header["__metadata__"]
    assert meta["format"] == "recjpq-model" and json.loads(meta["model_args"])["n_items"] == n


def test_loading_never_unpickles(runs, sample_ds, tmp_path, monkeypatch) -> None:
    out = tmp_path / "m"
    assert invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds, "-q"]).exit_code == 0

    def refuse(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    art = read_artifact(out)
    assert art.raw_items[0] is None and len(art.raw_items) == 2001 and len(art.raw_users) == 1000
    assert art.model.items.codes.shape == (2001, 8)


def test_gowalla_shaped_catalogue_item_table_ratio_above_40x() -> None:
    from recjpq_cli.models.registry import build_model

    args = {"model": "sasrec", "embedding": "jpq", "n_items": 1_271_638, "d": 512, "max_len": 200, "num_blocks": 2,
            "num_heads": 1, "ffn_dim": 512, "dropout": 0.5, "M": 8, "ksub": 256}
    size = model_size(build_model(args), args["n_items"], args["d"], codes_itemsize=1, centroid_itemsize=4)
    assert size["components"]["codes"]["bytes"] == 1_271_639 * 8
    assert size["item_table_ratio"] > 40  # about 485x: 5.2 GB of dense tables against 10.7 MB
    assert size["model_ratio"] > 40


@pytest.mark.parametrize("run", ["full", "tied", "bert"])
def test_from_dense_post_hoc_pq(runs, sample_ds, tmp_path, run) -> None:
    out = tmp_path / "pq.rjq"
    res = invoke(["compress", runs[run], "--out", out, "--data", sample_ds, "--from-dense", "--code-length", "4",
                  "--centroids", "32", "--kmeans-iters", "5", "--json", tmp_path / "c.json", "-q"])
    assert res.exit_code == 0, res.output
    f = _facts(tmp_path / "c.json")
    assert f["method"] == "post-hoc-pq" and f["M"] == 4 and f["ksub"] == 32
    assert 0 < min(f["quantisation_error"].values()) <= max(f["quantisation_error"].values()) < 1
    untied = run != "tied"
    assert f["components"]["codes"]["count"] == 2001 * 4 * (2 if untied else 1)
    art = read_artifact(out)
    assert art.model_args["embedding"] == "jpq" and bool(art.model_args.get("input_pq")) == untied
    assert _evaluate(out, sample_ds, tmp_path / "e.json")["metrics"]["NDCG@10"] >= 0
    # One centroid per row (ksub = n_items + 1) makes the quantisation lossless, so the model file must rank
    # exactly as the dense run does: this fails when codes, input codes or centroids are written wrongly.
    exact = tmp_path / "exact.rjq"
    res = invoke(["compress", runs[run], "--out", exact, "--data", sample_ds, "--from-dense", "--code-length", "4",
                  "--centroids", "2001", "--kmeans-iters", "1", "--json", tmp_path / "x.json", "-q"])
    assert res.exit_code == 0, res.output
    assert max(_facts(tmp_path / "x.json")["quantisation_error"].values()) < 1e-9
    dense = _evaluate(runs[run], sample_ds, tmp_path / "dense.json")["metrics"]
    got = _evaluate(exact, sample_ds, tmp_path / "e2.json")["metrics"]
    assert got == pytest.approx(dense, abs=1e-4)
    # seeded: the same command gives the same codes
    out2 = tmp_path / "pq2.rjq"
    assert invoke(["compress", runs[run], "--out", out2, "--data", sample_ds, "--from-dense", "--code-length", "4",
                   "--centroids", "32", "--kmeans-iters", "5", "-q"]).exit_code == 0
    assert torch.equal(read_artifact(out2).model.items.codes, art.model.items.codes)


def test_kmeans_recovers_a_product_quantised_table() -> None:
    g = torch.Generator().manual_seed(0)
    m, ksub, dsub, n = 4, 8, 3, 3000
    cents = torch.randn(m, ksub, dsub, generator=g) * 5
    codes = torch.randint(0, ksub, (n, m), generator=g)
    x = torch.cat([cents[k][codes[:, k]] for k in range(m)], 1)
    got_codes, got_cents = kmeans_pq(x, M=m, ksub=ksub, iters=30, seed=0)
    rec = torch.cat([got_cents[k][got_codes[:, k]] for k in range(m)], 1)
    assert torch.allclose(rec, x, atol=1e-4)


# ------------------------------------------------------------------------------------ bad input


def test_bad_input(runs, sample_ds, tmp_path) -> None:
    out = tmp_path / "m.rjq"

    def fails(args: list, code: int = 1, words: tuple = ()) -> None:
        res = invoke(["compress", *args, "--json", tmp_path / "c.json"])
        assert res.exit_code == code, res.output
        if code == 1:
            line = error_line(res)
            assert all(w in line for w in words), line
        assert not out.exists() and not (tmp_path / "c.json").exists()

    fails([runs["full"], "--out", out, "--data", sample_ds], words=("--from-dense",))
    fails([runs["jpq"], "--out", out, "--data", sample_ds, "--from-dense"], words=("--embedding full",))
    fails([runs["full"], "--out", out, "--data", sample_ds, "--from-dense", "--code-length", "5"],
          words=("--code-length 5",))
    other = make_run(tmp_path / "other", sample_ds, fingerprint="e" * 64)
    fails([other, "--out", out, "--data", sample_ds], words=(str(other), str(sample_ds), "eeeeeeeeeeee"))
    fails([tmp_path / "nope", "--out", out, "--data", sample_ds], words=(str(tmp_path / "nope"),))
    fails([runs["jpq"], "--out", out, "--data", tmp_path / "nods"], words=(str(tmp_path / "nods"),))
    fails([runs["jpq"], "--out", tmp_path / "missing" / "m.rjq", "--data", sample_ds], words=("missing",))
    fails([runs["jpq"], "--out", out, "--data", sample_ds, "--centroid-dtype", "fp8"], code=2)
    fails([runs["jpq"], "--out", out, "--data", sample_ds, "--checkpoint", "first"], code=2)
    fails([runs["full"], "--out", out, "--data", sample_ds, "--from-dense", "--centroids", "1"], code=2)
    out.write_text("keep")
    res = invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds])
    assert res.exit_code == 1 and "--overwrite" in error_line(res) and out.read_text() == "keep"
    res = invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds, "--overwrite", "-q"])
    assert res.exit_code == 1 and "not a recjpq model file" in error_line(res) and out.read_text() == "keep"
    out.unlink()
    assert invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds, "-q"]).exit_code == 0
    assert invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds, "--overwrite", "-q"]).exit_code == 0
    assert out.stat().st_size > 100


@pytest.mark.parametrize("cut", [0.5, 0.99, 10])
def test_truncated_model_file_is_one_error_line(runs, sample_ds, tmp_path, cut) -> None:
    out = tmp_path / "m.rjq"
    assert invoke(["compress", runs["jpq"], "--out", out, "--data", sample_ds, "-q"]).exit_code == 0
    data = out.read_bytes()
    bad = tmp_path / "bad.rjq"
    bad.write_bytes(data[: int(len(data) * cut)] if cut < 1 else data[:cut])
    for cmd in (["evaluate", bad, "--data", sample_ds], ["recommend", bad, "--data", sample_ds, "--out", tmp_path / "r.parquet"]):
        res = invoke(cmd)
        assert res.exit_code == 1
        line = error_line(res)
        assert str(bad) in line and ("truncated" in line or "not a recjpq" in line), line
    assert not (tmp_path / "r.parquet").exists()
