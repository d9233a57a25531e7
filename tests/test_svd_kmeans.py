"""`assign --strategy svd-kmeans` (RecJPQ-HC) and training that starts from its centroids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import error_line, invoke

from recjpq_cli.data.codes import centroids_path, load_codes
from recjpq_cli.jpq import lowrank
from recjpq_cli.jpq.assignment import TrainData, count_matrix, interleave, spectral_item_vectors

TRAIN = ["--model", "sasrec", "--set", "max_len=20", "--set", "val_users=50", "--max-steps", "1", "--device", "cpu",
         "-q"]


def _ok(args: list[object]):
    res = invoke(args)
    assert res.exit_code == 0, res.output + res.stderr
    return res


def _one_error_line(res) -> str:
    assert res.exit_code != 0
    return error_line(res)


@pytest.fixture(scope="module")
def km(tmp_path_factory, sample_ds) -> tuple[Path, Path]:
    ds, codes = sample_ds, tmp_path_factory.mktemp("kmeans") / "codes.npy"
    _ok(["assign", ds, "-s", "svd-kmeans", "--dim", 32, "-m", 4, "-b", 16, "-o", codes, "-q"])
    return ds, codes


# ---------------------------------------------------------------- item vectors


def test_spectral_vectors_are_v_times_s_and_zero_for_cold_items():
    # item 3 has one interaction (user 0); item 4 has none in training
    user = np.array([0, 0, 1, 1, 2, 2, 3, 0])
    item = np.array([1, 2, 1, 2, 1, 2, 1, 3])
    a = count_matrix(TrainData(user=user, item=item, n_users=4, n_items=4))
    x, s = spectral_item_vectors(a, 2, 0)
    u, s_all, vt = np.linalg.svd(a.toarray())
    assert np.allclose(s, s_all[:2]) and s[0] >= s[1]
    assert np.allclose(np.abs(x), np.abs(vt[:2].T * s_all[:2]), atol=1e-5)  # up to each component's sign
    assert not x[3].any() and 0 < np.linalg.norm(x[2]) < np.linalg.norm(x[0])  # rare item: a short vector
    assert interleave(8, 4).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# ---------------------------------------------------------------- assign


def test_assign_writes_codes_sidecar_and_centroids(km):
    ds, codes_path = km
    meta = yaml.safe_load((ds / "dataset.yaml").read_text())
    codes, side = load_codes(codes_path, meta)
    assert side["strategy"] == "svd-kmeans" and side["d"] == 32 and (side["M"], side["ksub"]) == (4, 16)
    assert side["centroids_file"] == "codes.centroids.npy" and side["collisions_after"] == 0
    cents = np.load(centroids_path(codes_path), allow_pickle=False)
    assert cents.dtype == np.float32 and cents.shape == (4, 16, 8) and np.isfinite(cents).all()
    # every item that --unique did not move sits on its nearest centroid in every split
    train = load_dataset_train(ds)
    x = lowrank.item_vectors(count_matrix(train), 32, 0, columns=interleave(32, 4)).vectors.contiguous().numpy()
    on_nearest = np.ones(train.n_items, dtype=bool)
    for k in range(4):
        near = torch.cdist(torch.from_numpy(np.ascontiguousarray(x[:, 8 * k:8 * k + 8])), torch.from_numpy(cents[k]))
        on_nearest &= near.argmin(1).numpy() == codes[1:, k]
    assert on_nearest.sum() >= train.n_items - side["collisions_before"]


def load_dataset_train(ds: Path) -> TrainData:
    from recjpq_cli.stages.assign import train_data

    return train_data(ds)[0]


def test_assign_same_seed_identical_other_seed_differs(km, tmp_path):
    ds, codes_path = km
    again, other = tmp_path / "again.npy", tmp_path / "other.npy"
    _ok(["assign", ds, "-s", "svd-kmeans", "--dim", 32, "-m", 4, "-b", 16, "-o", again, "-q"])
    _ok(["assign", ds, "-s", "svd-kmeans", "--dim", 32, "-m", 4, "-b", 16, "-o", other, "--seed", 1, "-q"])
    assert again.read_bytes() == codes_path.read_bytes()
    assert centroids_path(again).read_bytes() == centroids_path(codes_path).read_bytes()
    assert centroids_path(other).read_bytes() != centroids_path(again).read_bytes()


def test_assign_bad_dim_is_one_error_line_and_writes_nothing(km, tmp_path):
    ds, _ = km
    out = tmp_path / "c.npy"
    line = _one_error_line(invoke(["assign", ds, "-s", "svd-kmeans", "--dim", 30, "-m", 4, "-b", 16, "-o", out]))
    assert "--dim 30" in line and "M=4" in line
    line = _one_error_line(invoke(["assign", ds, "-s", "svd-kmeans", "--dim", 4000, "-m", 4, "-b", 16, "-o", out]))
    assert "--dim 4000" in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- train starts from the centroids


def _centroids_of(run: Path) -> torch.Tensor:
    return torch.load(run / "best.pt", weights_only=True)["state_dict"]["items.centroids"]


def test_train_starts_from_the_kmeans_centroids_rescaled(km, tmp_path):
    ds, codes_path = km
    run = tmp_path / "run"
    # learning rates so small that one step cannot move a centroid measurably
    _ok(["train", ds, "--codes", codes_path, "--set", "d=32", "--set", "lr=1e-12", "--out", run, *TRAIN])
    got = _centroids_of(run)
    want = torch.from_numpy(np.load(centroids_path(codes_path)))
    want = want * (0.05 / math.sqrt(3.0) / want.std())
    assert torch.allclose(got, want, atol=1e-7)
    # and with init_centroids=false the uniform +-0.05 init is used instead
    off = tmp_path / "off"
    _ok(["train", ds, "--codes", codes_path, "--set", "d=32", "--set", "lr=1e-12", "--set", "init_centroids=false",
         "--out", off, *TRAIN])
    c = _centroids_of(off)
    assert not torch.allclose(c, want, atol=1e-3) and float(c.abs().max()) <= 0.05 + 1e-6


def test_train_refuses_centroids_of_another_d(km, tmp_path):
    ds, codes_path = km
    run = tmp_path / "run"
    line = _one_error_line(invoke(["train", ds, "--codes", codes_path, "--set", "d=64", "--out", run, *TRAIN]))
    assert "d=32" in line and "d=64" in line and str(codes_path) in line
    assert not run.exists()


def test_train_names_a_missing_or_broken_centroids_file(km, tmp_path):
    ds, codes_path = km
    local = tmp_path / "codes.npy"
    for suffix in (".npy", ".yaml"):
        local.with_suffix(suffix).write_bytes(codes_path.with_suffix(suffix).read_bytes())
    line = _one_error_line(invoke(["train", ds, "--codes", local, "--set", "d=32", "--out", tmp_path / "r1", *TRAIN]))
    assert "codes.centroids.npy" in line and "not found" in line
    np.save(centroids_path(local), np.zeros((4, 16, 8), dtype=np.float64))
    line = _one_error_line(invoke(["train", ds, "--codes", local, "--set", "d=32", "--out", tmp_path / "r2", *TRAIN]))
    assert "codes.centroids.npy" in line and "float32" in line
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# ---------------------------------------------------------------- the k-means underneath (jpq/pq.py)


def test_kmeans_pp_seeds_one_centroid_per_separated_blob():
    from recjpq_cli.jpq.pq import _kmeans_pp

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    x = (centres.repeat_interleave(50, 0) + torch.rand(200, 2, generator=g)).expand(3, -1, -1).contiguous()
    seeds = _kmeans_pp(x, 4, g)  # (3, 4, 2): in every split, one seed near each blob
    for m in range(3):
        assert sorted(torch.cdist(seeds[m], centres).argmin(1).tolist()) == [0, 1, 2, 3]


def test_kmeans_pq_above_the_kmeans_pp_limit_seeds_from_distinct_rows(monkeypatch):
    import recjpq_cli.jpq.pq as pq

    monkeypatch.setattr(pq, "KMEANS_PP_MAX_KSUB", 8)  # ksub 16 takes the random-rows path
    monkeypatch.setattr(pq, "_kmeans_pp", None)  # and must not call k-means++
    monkeypatch.setattr(pq, "KMEANS_BLOCK_FLOATS", 2 * 16 * 7)  # distance blocks of 7 rows: many, one partial
    g = torch.Generator().manual_seed(0)
    rows = pq._random_rows(torch.arange(2 * 40 * 3, dtype=torch.float32).reshape(2, 40, 3), 16, g)
    assert rows.shape == (2, 16, 3) and all(len(set(rows[m, :, 0].tolist())) == 16 for m in range(2))
    x = torch.randn(300, 8, generator=g)
    codes, cents = pq.kmeans_pq(x, M=2, ksub=16, iters=5, seed=0)
    assert codes.shape == (300, 2) and cents.shape == (2, 16, 4) and int(codes.max()) < 16
    # codes are the nearest of the returned centroids
    for m in range(2):
        assert torch.equal(codes[:, m], torch.cdist(x[:, 4 * m:4 * m + 4], cents[m]).argmin(1))


# ---------------------------------------------------------------- bounded-memory SVD and k-means (issue 19)


def test_randomized_svd_matches_arpack_up_to_sign(sample_ds):
    a = count_matrix(load_dataset_train(sample_ds))
    ref, s_ref = spectral_item_vectors(a, 32, 0)  # ARPACK, the exact reference
    spec = lowrank.item_vectors(a, 32, 0)
    x = spec.vectors.numpy()
    assert x.dtype == np.float32 and x.shape == (2000, 32)
    assert np.allclose(spec.singular_values, s_ref, rtol=1e-3)
    cos = np.abs((x * ref).sum(0)) / (np.linalg.norm(x, axis=0) * np.linalg.norm(ref, axis=0))
    assert cos[:8].min() > 0.999  # the leading components agree up to sign
    assert (x.sum(0) >= 0).all()  # the sign rule: every component's column sum is >= 0
    assert abs(spec.explained_variance - float(np.square(s_ref).sum() / np.square(a.data).sum())) < 1e-3


def test_objective_within_one_percent_of_the_arpack_pipeline(km):
    from recjpq_cli.jpq.pq import kmeans_pq, objective

    ds, codes_path = km
    side = yaml.safe_load(codes_path.with_suffix(".yaml").read_text())
    x, _ = spectral_item_vectors(count_matrix(load_dataset_train(ds)), 32, 0)  # the previous implementation
    table = torch.from_numpy(np.ascontiguousarray(x[:, interleave(32, 4)]))
    ref = objective(table, *kmeans_pq(table, M=4, ksub=16, iters=20, seed=0))
    assert abs(side["kmeans_objective"] / ref - 1) < 0.01, (side["kmeans_objective"], ref)


def test_kmeans_objective_is_the_mean_squared_distance():
    from recjpq_cli.jpq.pq import objective

    x = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    cents = torch.tensor([[[0.0, 0.0], [2.0, 2.0]], [[1.0, 1.0], [0.0, 0.0]]])  # (M=2, ksub=2, dsub=2)
    codes = torch.tensor([[0, 0], [1, 0]])
    assert objective(x, codes, cents) == pytest.approx((0 + 0 + 4 + 4) / 2)  # row 1: (2,0)-(2,2), (3,1)-(1,1)


def test_blocked_assignment_equals_one_block_and_reports_progress(monkeypatch):
    import recjpq_cli.jpq.pq as pq

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=g)
    whole = pq.kmeans_pq(x, M=2, ksub=2, iters=3, seed=0)  # 1,000 rows > 256 x 2: sampled, then assigned
    monkeypatch.setattr(pq, "ASSIGN_ROWS", 70)  # 15 blocks, the last partial
    steps: list[tuple[str, int, int]] = []
    buf = torch.zeros(1000, 12)
    buf[:, :8] = x
    blocked = pq.kmeans_pq(buf[:, :8], M=2, ksub=2, iters=3, seed=0, on_step=lambda *a: steps.append(a))
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[1], blocked[1])
    assert [s for s in steps if s[0] == "assignment"][-1] == ("assignment", 15, 15)
    assert steps[0] == ("k-means", 1, 3)


def test_the_default_strategy_is_svd_kmeans(sample_ds, tmp_path):
    out = tmp_path / "c.npy"
    _ok(["assign", sample_ds, "--out", out, "--dim", 64, "-b", 16, "-q"])  # no --strategy (the ksub rule: below)
    codes, side = load_codes(out)
    assert (side["strategy"], side["d"], side["ksub"], side["ksub_auto"]) == ("svd-kmeans", 64, 16, False)
    assert side["memory_estimate_bytes"] > 0 and side["kmeans_objective"] > 0
    assert np.load(centroids_path(out)).shape == (8, 16, 8)


def test_ksub_follows_dim_capped_at_half_the_items(sample_ds, tmp_path):
    for dim, want in ((1024, 128), (128, 1000)):  # 131,072 / 1,024; 131,072 / 128 = 1,024 > 2,000 / 2
        out = tmp_path / f"r{dim}.npy"
        _ok(["assign", sample_ds, "-s", "random", "--dim", dim, "--out", out, "-q"])
        side = yaml.safe_load(out.with_suffix(".yaml").read_text())
        assert (side["ksub"], side["d"], side["ksub_auto"]) == (want, dim, True)
    out = tmp_path / "explicit.npy"
    _ok(["assign", sample_ds, "-s", "random", "--dim", 128, "-b", 64, "--out", out, "-q"])
    assert yaml.safe_load(out.with_suffix(".yaml").read_text())["ksub_auto"] is False


def test_a_run_that_cannot_fit_is_refused_naming_dim(sample_ds, tmp_path, monkeypatch):
    import recjpq_cli.stages.assign as stage

    monkeypatch.setattr(stage, "available_bytes", lambda device: 2**20)
    line = _one_error_line(invoke(["assign", sample_ds, "--dim", 32, "-m", 4, "-b", 16, "--out", tmp_path / "c.npy"]))
    assert "GiB" in line and "lower --dim" in line
    assert list(tmp_path.iterdir()) == []


def test_memory_estimate_is_shown_before_the_work(sample_ds, tmp_path, monkeypatch):
    """On a terminal it is printed before the work; in a log it is in --json (stderr keeps only summaries)."""
    import json

    from rich.console import Console

    res = _ok(["assign", sample_ds, "--dim", 32, "-m", 4, "-b", 16, "--out", tmp_path / "c.npy",
               "--json", tmp_path / "a.json"])
    assert "memory estimate" not in res.stderr
    assert json.loads((tmp_path / "a.json").read_text())["memory_estimate_bytes"] > 0
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    res = _ok(["assign", sample_ds, "--dim", 32, "-m", 4, "-b", 16, "--out", tmp_path / "d.npy"])
    assert "memory estimate" in res.stderr and "GiB available" in res.stderr


def test_empty_training_matrix_is_one_error_line(sample_ds, tmp_path, monkeypatch):
    import recjpq_cli.stages.assign as stage

    meta = yaml.safe_load((sample_ds / "dataset.yaml").read_text())
    none = np.empty(0, dtype=np.int64)
    empty = TrainData(user=none, item=none, n_users=meta["n_users"], n_items=meta["n_items"])
    monkeypatch.setattr(stage, "train_data", lambda ds: (empty, meta))
    line = _one_error_line(invoke(["assign", sample_ds, "--dim", 32, "-m", 4, "-b", 16, "--out", tmp_path / "c.npy"]))
    assert "no training interactions" in line and "--strategy random" in line
    assert list(tmp_path.iterdir()) == []


def test_train_with_another_d_names_the_exact_assign_command(km, tmp_path):
    ds, codes_path = km
    line = _one_error_line(invoke(["train", ds, "--codes", codes_path, "--set", "d=64", "--out", tmp_path / "r",
                                   *TRAIN]))
    assert f"recjpq assign {ds} --strategy svd-kmeans --dim 64 -m 4 -b 16 --seed 0 --out {codes_path} --overwrite" in line


def test_train_hints_when_ksub_times_d_is_small(km, tmp_path):
    ds, codes_path = km  # ksub 16 at d=32: 512 < 131,072
    quiet = _ok(["train", ds, "--codes", codes_path, "--set", "d=32", "--out", tmp_path / "q", *TRAIN])
    assert "ksub=16" not in quiet.stderr  # -q: no hint
    loud = [a for a in TRAIN if a != "-q"]
    res = _ok(["train", ds, "--codes", codes_path, "--set", "d=32", "--out", tmp_path / "r", *loud])
    text = " ".join(res.stderr.split())
    assert "ksub=16" in text and f"recjpq assign {ds} --strategy svd-kmeans --dim 32 -m 4 --seed 0" in text
    assert "gives ksub 1,000" in text


def test_tail_study_variant_moves_only_tail_items_before_kmeans(sample_ds, km, tmp_path):
    """benchmarks/tail_codes.py (issue 19's tail study, not kept in `assign`) really changes the tail items'
    vectors, and only theirs, so a rerun of the study compares two different codes."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "tail.npy"
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "tail_codes.py"), str(sample_ds), str(out),
                          "--dim", "32", "-m", "4", "-b", "16", "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "tail items: " in res.stderr
    tail_codes, plain = np.load(out), np.load(km[1])
    assert tail_codes.shape == plain.shape and not np.array_equal(tail_codes, plain)
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import tail_codes as variant
    finally:
        sys.path.remove(str(root / "benchmarks"))
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    dense = (rng.random((200, 60)) < 0.15).astype(np.float64)  # 40 head items, about 30 users each
    dense[:, 40:] = 0
    for j in range(40, 60):  # 20 tail items with 1 to 3 users
        dense[rng.choice(200, 1 + j % 3, replace=False), j] = 1
    a = sp.csr_matrix(dense)
    counts = np.asarray(a.sum(0)).ravel()
    tail = (counts > 0) & (counts < 5)
    assert tail.sum() == 20 and (counts[:40] >= 5).all()
    plain_x = lowrank.item_vectors(a, 8, 0).vectors.numpy().copy()
    placed_x = variant.item_vectors_with_placed_tail(a, 8, 0).vectors.numpy()
    np.testing.assert_array_equal(placed_x[~tail], plain_x[~tail])
    assert not np.allclose(placed_x[tail], plain_x[tail])
