"""`recjpq evaluate`: metrics against hand computations, exact chunked ranking, the popularity baseline, the
JSON and per-user contracts, paired t-test marks, sampling, and every bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from conftest import error_line, invoke

from recjpq_cli import ranking
from recjpq_cli.checkpoint import save_checkpoint
from recjpq_cli.data.schema import CHECKPOINT_FORMAT_VERSION, read_dataset_meta
from recjpq_cli.jpq.embedding import FullEmbedding, JPQEmbedding
from recjpq_cli.metrics import ndcg_at_k, per_user, recall_at_k, reciprocal_rank, summarise
from recjpq_cli.models.registry import build_model

# ------------------------------------------------------------------------------------ run helper


def make_run(run: Path, ds: Path, *, embedding: str = "jpq", d: int = 16, M: int = 4, ksub: int = 16,
             model: str = "sasrec", seed: int = 0, tie: bool = False, fingerprint: str | None = None) -> Path:
    """A run folder as `recjpq train` writes it (issue 4's checkpoint contract), with random weights:
    best.pt from ``seed`` and last.pt from ``seed + 1``."""
    meta = read_dataset_meta(ds)
    n = int(meta["n_items"])
    args: dict[str, Any] = {
        "model": model, "embedding": embedding, "n_items": n, "d": d, "max_len": 20, "num_blocks": 1,
        "num_heads": 1, "ffn_dim": d, "dropout": 0.0, "pos_init_std": 0.05, "centroid_init": 0.05,
        "tie_embeddings": tie, "M": M if embedding == "jpq" else None, "ksub": ksub if embedding == "jpq" else None,
        "activation": "gelu" if model == "bert4rec" else "relu",
    }
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "embedding": embedding, "d": d}))
    for name, s in (("best.pt", seed), ("last.pt", seed + 1)):
        torch.manual_seed(s)
        codes = None
        if embedding == "jpq":
            codes = torch.randint(0, ksub, (n + 1, M), dtype=torch.uint8)
            codes[0] = 0
        m = build_model(args, codes=codes)
        with torch.no_grad():  # larger centroids/embeddings than the init, so ranks spread out
            for p in m.items.parameters():
                p.normal_(0.0, 1.0)
        opt = torch.optim.Adam(m.parameters())
        save_checkpoint(run / name, {
            "format_version": CHECKPOINT_FORMAT_VERSION, "model": model, "embedding": embedding,
            "model_args": args, "config": {"model": model, "embedding": embedding, "d": d},
            "state_dict": m.state_dict(), "optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "epoch": 1, "step": 10, "best_metric": 0.0,
            "dataset_fingerprint": fingerprint or str(meta["fingerprint"]),
            "codes_meta": {"strategy": "random", "M": M, "ksub": ksub} if embedding == "jpq" else None,
            "world_size": 1,
        })
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_ds) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-runs")
    return {"jpq": make_run(root / "jpq", sample_ds), "full": make_run(root / "full", sample_ds, embedding="full")}


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------ metrics


def test_metrics_against_hand_computed_values() -> None:
    ranks = torch.tensor([1, 2, 3, 11, 0])  # 0 = the target was filtered out
    assert ndcg_at_k(ranks, 10).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.5, 0.0, 0.0])
    assert recall_at_k(ranks, 2).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert reciprocal_rank(ranks).tolist() == pytest.approx([1.0, 0.5, 1 / 3, 1 / 11, 0.0])
    s = summarise(per_user(ranks, [1, 10]))
    assert s["NDCG@1"] == pytest.approx(0.2)
    assert s["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 5)
    assert s["Recall@10"] == pytest.approx(0.6)
    assert s["MRR"] == pytest.approx((1 + 0.5 + 1 / 3 + 1 / 11) / 5)


def _tie_heavy_jpq(n: int = 700, m: int = 4, ksub: int = 4, seed: int = 0) -> JPQEmbedding:
    g = torch.Generator().manual_seed(seed)
    emb = JPQEmbedding(codes=torch.randint(0, ksub, (n + 1, m), generator=g, dtype=torch.uint8), ksub=ksub, d=m * 2)
    with torch.no_grad():  # small integers: many exactly tied scores
        emb.centroids.copy_(torch.randint(-2, 3, emb.centroids.shape, generator=g).float())
    return emb


def _reference_ranks(scores: torch.Tensor, targets: torch.Tensor, rows, items) -> torch.Tensor:
    """Full sort of every score, ties to the lower id, excluded items removed."""
    s = scores.clone()
    s[:, 0] = float("-inf")
    excluded = torch.zeros_like(s, dtype=torch.bool)
    excluded[rows, items] = True
    out = []
    for b in range(s.shape[0]):
        t = int(targets[b])
        if excluded[b, t]:
            out.append(0)
            continue
        keep = ~excluded[b]
        keep[0] = False
        ids = torch.nonzero(keep)[:, 0]
        order = sorted(ids.tolist(), key=lambda i: (-float(s[b, i]), i))
        out.append(order.index(t) + 1)
    return torch.tensor(out)


@pytest.mark.parametrize("fast", [True, False])
def test_chunked_ranks_and_topk_equal_a_full_sort(fast, monkeypatch) -> None:
    monkeypatch.setenv("RECJPQ_NO_NUMBA", "0" if fast else "1")
    emb = _tie_heavy_jpq()
    g = torch.Generator().manual_seed(1)
    h = torch.randint(-2, 3, (9, emb.d), generator=g).float()
    targets = torch.randint(1, emb.n_items + 1, (9,), generator=g)
    rows = torch.cat([torch.randint(0, 9, (60,), generator=g), torch.tensor([0, 1])])
    items = torch.cat([torch.randint(1, emb.n_items + 1, (60,), generator=g), targets[:2]])  # 2 targets seen
    scores = emb.score_all(h).detach()
    ref = _reference_ranks(scores, targets, rows, items)
    got = ranking.target_ranks(emb, h, targets, rows, items, chunk=97)
    assert torch.equal(got, ref) and (got[:2] == 0).all()
    for k in (1, 10, 50):
        sc, ids = ranking.topk(emb, h, k, rows, items, chunk=97)
        for b in range(9):
            s = scores[b].clone()
            s[0] = float("-inf")
            s[items[rows == b]] = float("-inf")
            order = sorted(range(emb.n_items + 1), key=lambda i: (-float(s[i]), i))[:k]
            assert ids[b].tolist() == order
            assert torch.equal(sc[b], s[order])


def test_compiled_path_equals_torch_path_on_ties(monkeypatch) -> None:
    emb = _tie_heavy_jpq(n=3000, m=8, ksub=4, seed=3)
    g = torch.Generator().manual_seed(2)
    h = torch.randint(-2, 3, (40, emb.d), generator=g).float()
    targets = torch.randint(1, emb.n_items + 1, (40,), generator=g)
    rows, items = torch.randint(0, 40, (300,), generator=g), torch.randint(1, emb.n_items + 1, (300,), generator=g)
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("RECJPQ_NO_NUMBA", flag)
        out[flag] = (ranking.target_ranks(emb, h, targets, rows, items), *ranking.topk(emb, h, 20, rows, items))
    for a, b in zip(out["0"], out["1"], strict=True):
        assert torch.equal(a, b)


def test_dense_ranking_uses_the_same_contract() -> None:
    emb = FullEmbedding(n_items=300, d=8)
    h = torch.randn(5, 8)
    targets = torch.tensor([1, 50, 100, 200, 300])
    got = ranking.target_ranks(emb, h, targets, chunk=64)
    assert torch.equal(got, _reference_ranks(emb.score_all(h).detach(), targets, torch.tensor([], dtype=torch.long),
                                             torch.tensor([], dtype=torch.long)))


# --------------------------------------------------------------------------- popularity baseline


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> Path:
    """3 users, items 10/20/30/40. Train counts: 10:2, 20:3, 30:2, 40:2 -> popularity order 20, 10, 30, 40."""
    root = tmp_path_factory.mktemp("tiny")
    seqs = {"u1": [10, 20, 10, 30, 40], "u2": [20, 20, 30, 10, 20], "u3": [30, 40, 40, 20, 10]}
    lines = ["user_id,item_id,timestamp"] + [f"{u},{it},{t}" for u, s in seqs.items() for t, it in enumerate(s)]
    (root / "tiny.csv").write_text("\n".join(lines) + "\n")
    res = invoke(["prepare", root / "tiny.csv", "--out", root / "ds", "--time-col", "timestamp",
                  "--min-user-interactions", "3", "-q"])
    assert res.exit_code == 0, res.output
    return root / "ds"


@pytest.mark.parametrize("split,filter_seen,ranks", [
    ("test", False, [4, 1, 2]),  # u1 -> 40, u2 -> 20, u3 -> 10
    ("test", True, [1, None, 1]),  # u1: 20,10,30 seen; u2's target 20 is seen (a miss); u3: 20 seen
    ("val", True, [1, 1, 1]),  # inputs are the training items only
])
def test_popularity_baseline_against_hand_computation(tiny_ds, tmp_path, split, filter_seen, ranks) -> None:
    res = invoke(["evaluate", "--data", tiny_ds, "--baseline", "popularity", "--split", split,
                  "--filter-seen" if filter_seen else "--no-filter-seen", "--json", tmp_path / "e.json",
                  "--per-user", tmp_path / "u.parquet", "-q"])
    assert res.exit_code == 0, res.output
    facts = _json(tmp_path / "e.json")
    (run,) = facts["runs"]
    assert run["name"] == "popularity"
    pu = pl.read_parquet(tmp_path / "u.parquet").sort("user")
    assert pu["user"].to_list() == ["u1", "u2", "u3"]
    assert pu["rank"].to_list() == ranks
    ndcg = [0.0 if r is None else (1 / math.log2(r + 1) if r <= 10 else 0.0) for r in ranks]
    assert run["metrics"]["NDCG@10"] == pytest.approx(sum(ndcg) / 3)
    assert run["metrics"]["MRR"] == pytest.approx(sum(0 if r is None else 1 / r for r in ranks) / 3)
    assert run["long_tail"]["share"] == 1.0 and run["head"]["share"] == 0.0  # every item < 5 interactions
    expected_repeats = 1 if split == "test" else 0
    assert facts["repeated_targets"] == expected_repeats


# ----------------------------------------------------------------------------- the whole command


RUN_KEYS = {"name", "split", "k", "filter_seen", "sampled_users", "seed", "metrics", "long_tail", "head", "size",
            "significance"}


def test_json_per_user_and_table(runs, sample_ds, tmp_path) -> None:
    res = invoke(["evaluate", runs["jpq"], runs["full"], "--data", sample_ds, "--baseline", "popularity",
                  "--k", "5,10", "--json", tmp_path / "e.json", "--per-user", tmp_path / "u.parquet"])
    assert res.exit_code == 0, res.output
    assert "NDCG@10" in res.stderr and "popularity" in res.stderr and "t-test" in res.stderr
    facts = _json(tmp_path / "e.json")
    assert [r["name"] for r in facts["runs"]] == ["jpq", "full", "popularity"]
    for r in facts["runs"]:
        assert RUN_KEYS <= set(r)
        assert r["split"] == "test" and r["k"] == [5, 10] and r["filter_seen"] is True
        assert r["sampled_users"] is None and r["seed"] is None
        assert set(r["metrics"]) == {"NDCG@5", "Recall@5", "NDCG@10", "Recall@10", "MRR"}
        assert set(r["long_tail"]) >= {"share", "metrics"} and set(r["head"]) >= {"share", "metrics"}
        assert r["long_tail"]["share"] + r["head"]["share"] == pytest.approx(1.0)
    assert facts["runs"][0]["significance"]["mark"] is None
    assert {r["significance"]["mark"] for r in facts["runs"][1:]} <= {"+", "=", "-"}
    assert facts["runs"][0]["size"]["item_table_ratio"] > 1
    assert facts["repeated_targets"] > 0 and facts["users"] == 1000
    pu = pl.read_parquet(tmp_path / "u.parquet")
    assert pu.columns == ["user", "target", "rank", "long_tail", "NDCG@5", "Recall@5", "NDCG@10", "Recall@10", "RR"]
    assert pu.height == 1000 and pu["user"].dtype == pl.String and pu["rank"].null_count() > 0
    first = facts["runs"][0]
    for col in ("NDCG@10", "Recall@5"):
        assert pu[col].mean() == pytest.approx(first["metrics"][col])
    assert pu["RR"].mean() == pytest.approx(first["metrics"]["MRR"])
    lt = pu.filter(pl.col("long_tail"))
    assert lt.height / pu.height == pytest.approx(first["long_tail"]["share"])
    assert lt["NDCG@10"].mean() == pytest.approx(first["long_tail"]["metrics"]["NDCG@10"])


def test_compiled_and_torch_evaluation_agree(runs, sample_ds, tmp_path, monkeypatch) -> None:
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("RECJPQ_NO_NUMBA", flag)
        res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--json", tmp_path / f"{flag}.json", "-q",
                      "--sample-users", "300"])
        assert res.exit_code == 0, res.output
        out[flag] = _json(tmp_path / f"{flag}.json")["runs"][0]["metrics"]
    assert out["0"] == out["1"]


def test_marks_from_paired_t_tests() -> None:
    from scipy.stats import ttest_rel

    from recjpq_cli.stages.evaluate import RunResult, significance

    rng = np.random.default_rng(0)
    base = rng.random(400)
    better, worse = base + 0.05 + rng.normal(0, 0.01, 400), base - 0.05 + rng.normal(0, 0.01, 400)
    noise = base + rng.normal(0, 0.3, 400)
    runs = [RunResult(name=n, source=None, kind="run", metrics={}, long_tail={}, head={}, size={})
            for n in ("ref", "better", "worse", "noise", "same")]
    significance(runs, [base, better, worse, noise, base.copy()])
    assert [r.significance["mark"] for r in runs] == [None, "+", "-", "=", "="]
    assert runs[1].significance["alpha_corrected"] == pytest.approx(0.05 / 4)
    assert runs[3].significance["p"] == pytest.approx(float(ttest_rel(noise, base).pvalue))
    # Bonferroni: p ~ 0.03 (t = 2.18, 399 df) is significant for one comparison, not for four
    z = rng.normal(0, 1, 400)
    z = (z - z.mean()) / z.std(ddof=1) * 0.01
    x = base + z + 2.18 * 0.01 / math.sqrt(400)
    two = runs[:2]
    significance(two, [base, x])
    assert 0.025 < two[1].significance["p"] < 0.05 and two[1].significance["mark"] == "+"
    five = [RunResult(name=str(i), source=None, kind="run", metrics={}, long_tail={}, head={}, size={})
            for i in range(5)]
    significance(five, [base, x, x, x, x])
    assert five[1].significance["mark"] == "="


def test_sample_users_is_seeded_and_reported(runs, sample_ds, tmp_path) -> None:
    out = []
    for i, seed in enumerate((7, 7, 8)):
        res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--sample-users", "200", "--seed", seed,
                      "--json", tmp_path / f"{i}.json", "--per-user", tmp_path / f"{i}.parquet", "-q"])
        assert res.exit_code == 0, res.output
        facts = _json(tmp_path / f"{i}.json")
        assert facts["users"] == 200 and facts["users_total"] == 1000
        assert facts["runs"][0]["sampled_users"] == 200 and facts["runs"][0]["seed"] == seed
        out.append(pl.read_parquet(tmp_path / f"{i}.parquet")["user"].to_list())
    assert out[0] == out[1] and out[0] != out[2]


def test_checkpoint_last_reads_last_pt(runs, sample_ds, tmp_path) -> None:
    got = {}
    for which in ("best", "last"):
        res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--checkpoint", which, "-q",
                      "--sample-users", "200", "--json", tmp_path / f"{which}.json"])
        assert res.exit_code == 0, res.output
        got[which] = _json(tmp_path / f"{which}.json")["runs"][0]["metrics"]
    assert got["best"] != got["last"]


# ------------------------------------------------------------------------------------ bad input


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "u.parquet").exists()


def test_run_of_another_dataset_is_refused(sample_ds, tmp_path) -> None:
    other = make_run(tmp_path / "other", sample_ds, fingerprint="f" * 64)
    res = invoke(["evaluate", other, "--data", sample_ds, "--json", tmp_path / "e.json",
                  "--per-user", tmp_path / "u.parquet"])
    assert res.exit_code == 1
    line = error_line(res)
    assert str(other) in line and str(sample_ds) in line and "ffffffffffff" in line
    _nothing_written(tmp_path)


@pytest.mark.parametrize("what", ["missing", "empty-dir", "garbage", "truncated"])
def test_unreadable_sources_are_one_error_line(runs, sample_ds, tmp_path, what) -> None:
    src = tmp_path / "src"
    if what == "empty-dir":
        src.mkdir()
    elif what == "garbage":
        src.write_bytes(b"not a model at all")
    elif what == "truncated":
        shutil.copytree(runs["jpq"], src)
        data = (src / "best.pt").read_bytes()
        (src / "best.pt").write_bytes(data[: len(data) // 2])
    res = invoke(["evaluate", src, "--data", sample_ds, "--json", tmp_path / "e.json",
                  "--per-user", tmp_path / "u.parquet"])
    assert res.exit_code == 1
    assert str(src) in error_line(res)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args", [["--k", "0"], ["--k", "5,-1"], ["--k", "ten"], ["--split", "train"],
                                  ["--batch-size", "0"], ["--sample-users", "0"], ["--checkpoint", "first"],
                                  ["--baseline", "random"], []])
def test_bad_option_values_exit_2(runs, sample_ds, tmp_path, args) -> None:
    src = [] if args == [] else [runs["jpq"]]
    res = invoke(["evaluate", *src, "--data", sample_ds, *args, "--json", tmp_path / "e.json",
                  "--per-user", tmp_path / "u.parquet"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    _nothing_written(tmp_path)


def test_existing_per_user_file_needs_overwrite(runs, sample_ds, tmp_path) -> None:
    (tmp_path / "u.parquet").write_text("keep")
    res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--per-user", tmp_path / "u.parquet"])
    assert res.exit_code == 1 and "--overwrite" in error_line(res)
    assert (tmp_path / "u.parquet").read_text() == "keep"
    res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--per-user", tmp_path / "u.parquet",
                  "--overwrite", "-q", "--sample-users", "50"])
    assert res.exit_code == 1 and "not a per-user file" in error_line(res)  # --overwrite replaces only its kind
    (tmp_path / "u.parquet").unlink()
    for n in (60, 50):
        res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--per-user", tmp_path / "u.parquet",
                      "--overwrite", "-q", "--sample-users", n])
        assert res.exit_code == 0 and pl.read_parquet(tmp_path / "u.parquet").height == n


def test_missing_dataset_and_json_folder(runs, sample_ds, tmp_path) -> None:
    res = invoke(["evaluate", runs["jpq"], "--data", tmp_path / "nope"])
    assert res.exit_code == 1 and str(tmp_path / "nope") in error_line(res)
    res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--json", tmp_path / "no" / "e.json",
                  "--per-user", tmp_path / "u.parquet"])
    assert res.exit_code == 1 and str(tmp_path / "no") in error_line(res)
    _nothing_written(tmp_path)


def test_a_checkpoint_file_given_directly_is_read_as_a_checkpoint(runs, sample_ds, tmp_path) -> None:
    got = {}
    for name, src in (("dir", runs["jpq"]), ("file", runs["jpq"] / "best.pt")):
        res = invoke(["evaluate", src, "--data", sample_ds, "-q", "--sample-users", "100",
                      "--json", tmp_path / f"{name}.json"])
        assert res.exit_code == 0, res.output
        got[name] = _json(tmp_path / f"{name}.json")["runs"][0]["metrics"]
    assert got["dir"] == got["file"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_one_error_line(runs, sample_ds) -> None:
    res = invoke(["evaluate", runs["jpq"], "--data", sample_ds, "--device", "cuda"])
    assert res.exit_code == 1 and "--device cuda" in error_line(res)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_evaluation_matches_cpu(runs, sample_ds, tmp_path) -> None:
    got = {}
    for dev in ("cpu", "cuda"):
        for name in ("jpq", "full"):
            res = invoke(["evaluate", runs[name], "--data", sample_ds, "--device", dev, "-q",
                          "--json", tmp_path / f"{dev}-{name}.json"])
            assert res.exit_code == 0, res.output
            got[dev, name] = _json(tmp_path / f"{dev}-{name}.json")["runs"][0]["metrics"]
    for name in ("jpq", "full"):
        for k, v in got["cpu", name].items():
            assert got["cuda", name][k] == pytest.approx(v, abs=2e-3), (name, k)
