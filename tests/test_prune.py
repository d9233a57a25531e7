"""The pruned top-k (jpq/prune.py) against PQTopK: the same ids and the same scores bit for bit, on random
and trained models, heavy ties, k above the unexcluded items, M=1 and M=16, ksub 256 and 1,024; the
fallback pass; the index cache; and `recommend` through the pruned path."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import invoke

from recjpq_cli import ranking, retrieval
from recjpq_cli.jpq import pqtopk, prune
from recjpq_cli.jpq.embedding import FullEmbedding, JPQEmbedding

pytestmark = pytest.mark.skipif(not pqtopk.available(), reason="needs numba")


def codes_for(rng: np.random.Generator, n: int, m: int, ksub: int) -> np.ndarray:
    codes = rng.integers(0, ksub, (n + 1, m)).astype(np.uint8 if ksub <= 256 else np.uint16)
    codes[0] = 0
    return codes


def exclusions(rng: np.random.Generator, b: int, n: int, per_row: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(b), per_row)
    return pqtopk.exclusions_csr(b, rows, rng.integers(1, n + 1, b * per_row))


def assert_same(tabs, codes, k, ptr, ex, index=None) -> np.ndarray:
    """Pruned == PQTopK (ids equal, scores equal as bits); returns the entries each row touched."""
    index = index if index is not None else prune.build_index(codes, tabs.shape[1] // codes.shape[1])
    want_s, want_i = pqtopk.topk(tabs, codes, k, ptr, ex)
    got_s, got_i, touched = prune.search(tabs, codes, index, k, ptr, ex)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s.view(np.int32), want_s.view(np.int32))
    return touched


@pytest.mark.parametrize(("m", "ksub"), [(1, 256), (8, 256), (16, 256), (4, 1024), (8, 1024), (8, 8192)])
@pytest.mark.parametrize("k", [1, 10, 60])
def test_random_models_identical_to_pqtopk(m, ksub, k) -> None:
    rng = np.random.default_rng(m * 1000 + ksub + k)
    n = 6000
    codes = codes_for(rng, n, m, ksub)
    b = 6
    ptr, ex = exclusions(rng, b, n, 40)
    # Gaussian tables (flat: the fallback pass) and heavy-tailed ones (a few sub-ids dominate: early stops).
    flat = rng.standard_normal((b, m * ksub)).astype(np.float32)
    peaked = (rng.standard_normal((b, m * ksub)) ** 3 * 4).astype(np.float32)
    index = prune.build_index(codes, ksub)
    assert_same(flat, codes, k, ptr, ex, index)
    touched = assert_same(peaked, codes, k, ptr, ex, index)
    assert (touched < n).any()  # the bound stopped the search before one split was done


@pytest.mark.parametrize("share", [0.0, 1e9])
def test_fallback_pass_and_pure_pruning_identical(monkeypatch, share) -> None:
    """share 0: every query switches to the exhaustive pass after its first list; 1e9: never switches."""
    monkeypatch.setattr(prune, "FALLBACK_SHARE", share)
    rng = np.random.default_rng(7)
    n, m, ksub = 5000, 8, 256
    codes = codes_for(rng, n, m, ksub)
    ptr, ex = exclusions(rng, 8, n, 30)
    for tabs in (rng.standard_normal((8, m * ksub)), rng.standard_normal((8, m * ksub)) ** 3):
        touched = assert_same(tabs.astype(np.float32), codes, 10, ptr, ex)
        if share == 0.0:
            assert (touched <= n).all()


def test_heavy_ties() -> None:
    """Sub-item scores from three values and codes from four sub-ids: most items tie with many others."""
    rng = np.random.default_rng(3)
    n, m, ksub = 4000, 8, 256
    codes = (rng.integers(0, 4, (n + 1, m)) * 3).astype(np.uint8)
    tabs = rng.integers(0, 3, (5, m * ksub)).astype(np.float32)
    ptr, ex = exclusions(rng, 5, n, 25)
    for k in (1, 10, 200):
        assert_same(tabs, codes, k, ptr, ex)
    ones = np.ones((2, m * ksub), dtype=np.float32)  # every item the same score: ids ascending
    s, i, _ = prune.search(ones, codes, prune.build_index(codes, ksub), 10, *pqtopk.exclusions_csr(2, None, None))
    np.testing.assert_array_equal(i, np.tile(np.arange(1, 11), (2, 1)))


def test_k_above_the_unexcluded_items_pads_as_pqtopk() -> None:
    rng = np.random.default_rng(4)
    n, m, ksub = 60, 4, 256
    codes = codes_for(rng, n, m, ksub)
    tabs = rng.standard_normal((3, m * ksub)).astype(np.float32)
    rows = np.repeat(np.arange(3), [55, 0, 60])  # row 0: 5 items left, row 2: none
    items = np.concatenate([rng.choice(np.arange(1, n + 1), 55, replace=False), np.arange(1, n + 1)])
    ptr, ex = pqtopk.exclusions_csr(3, rows, items)
    assert_same(tabs, codes, 10, ptr, ex)
    s, i, _ = prune.search(tabs, codes, prune.build_index(codes, ksub), 10, ptr, ex)
    assert np.isfinite(s[0, :5]).all() and np.isneginf(s[0, 5:]).all() and i[0, 5] == 0
    assert np.isneginf(s[2]).all()


def test_every_item_excluded_but_k() -> None:
    rng = np.random.default_rng(5)
    n, m, ksub, k = 3000, 8, 256, 10
    codes = codes_for(rng, n, m, ksub)
    tabs = (rng.standard_normal((2, m * ksub)) ** 3).astype(np.float32)
    keep = rng.choice(np.arange(1, n + 1), k, replace=False)
    excluded = np.setdiff1d(np.arange(1, n + 1), keep)
    ptr, ex = pqtopk.exclusions_csr(2, np.repeat([0, 1], len(excluded)), np.tile(excluded, 2))
    assert_same(tabs, codes, k, ptr, ex)
    _, i, _ = prune.search(tabs, codes, prune.build_index(codes, ksub), k, ptr, ex)
    assert set(i[0]) == set(keep)


def test_index_lists_every_item_once_per_split() -> None:
    rng = np.random.default_rng(6)
    codes = codes_for(rng, 500, 4, 32)
    idx = prune.build_index(codes, 32)
    for m in range(4):
        assert sorted(idx.ids[m]) == list(range(1, 501))
        for c in range(32):
            ids = idx.ids[m, idx.ptr[m, c]:idx.ptr[m, c + 1]]
            assert (codes[ids, m] == c).all() and (np.diff(ids) > 0).all()
        np.testing.assert_array_equal(idx.codes[m], codes[idx.ids[m]])


def _jpq(n: int, seed: int = 0) -> JPQEmbedding:
    g = torch.Generator().manual_seed(seed)
    emb = JPQEmbedding(codes=torch.randint(0, 64, (n + 1, 4), generator=g, dtype=torch.uint8), ksub=64, d=16)
    with torch.no_grad():
        emb.centroids.normal_(0.0, 1.0, generator=g)
    return emb


def test_retrieval_picks_the_kernel_and_caches_the_index(monkeypatch) -> None:
    emb = _jpq(3000)
    h = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)) * 3
    rows, items = torch.tensor([0, 0, 2]), torch.tensor([5, 9, 17])
    want = ranking.topk(emb, h, 10, rows, items)
    calls = []
    real = prune.search
    monkeypatch.setattr(prune, "search", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(retrieval.topk(emb, h, 10, rows, items)[1], want[1]) and not calls  # 3,000 < MIN_ITEMS
    monkeypatch.setattr(prune, "MIN_ITEMS", 1000)
    got = retrieval.topk(emb, h, 10, rows, items)
    assert calls and torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    first = retrieval.prune_index(emb)
    assert retrieval.prune_index(emb) is first  # built once per model
    with torch.no_grad():
        emb.codes[1] = (emb.codes[1] + 1) % 64
    assert retrieval.prune_index(emb) is not first  # codes changed: rebuilt
    assert torch.equal(retrieval.topk(emb, h, 10)[1], ranking.topk(emb, h, 10)[1])
    dense = FullEmbedding(n_items=3000, d=16)  # not JPQ: ranking's path
    n_calls = len(calls)
    assert torch.equal(retrieval.topk(dense, h, 5)[1], ranking.topk(dense, h, 5)[1]) and len(calls) == n_calls


def test_trained_sample_model_recommend_identical(monkeypatch, sample_ds, tmp_path) -> None:
    """svd codes and a few training steps on sample_data; `recommend` gives the same file pruned or not."""
    codes, run, users = tmp_path / "codes.npy", tmp_path / "run", tmp_path / "users.txt"
    users.write_text("\n".join(str(u) for u in range(1, 1001, 7)))  # raw ids of sample_data's users
    assert invoke(["assign", sample_ds, "--strategy", "svd", "-m", "8", "-b", "256", "--out", codes, "-q"]).exit_code == 0
    res = invoke(["train", sample_ds, "--codes", codes, "--out", run, "--max-steps", "3", "--device", "cpu", "-q",
                  "--set", "d=32", "--set", "max_len=20", "--set", "val_users=64"])
    assert res.exit_code == 0, res.output
    plain = tmp_path / "plain.parquet"
    assert invoke(["recommend", run, "--data", sample_ds, "--out", plain, "--k", "20", "-q", "--users", users]).exit_code == 0
    calls = []
    real = prune.search
    monkeypatch.setattr(prune, "MIN_ITEMS", 1)

    def spy(*a):
        out = real(*a)
        calls.append(out[2])
        return out

    monkeypatch.setattr(prune, "search", spy)
    pruned = tmp_path / "pruned.parquet"
    assert invoke(["recommend", run, "--data", sample_ds, "--out", pruned, "--k", "20", "-q", "--users", users]).exit_code == 0
    assert calls  # the pruned kernel served every batch
    a, b = pl.read_parquet(plain), pl.read_parquet(pruned)
    assert a.height > 0 and a.equals(b)
