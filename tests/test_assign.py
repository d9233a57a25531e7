"""`recjpq assign`: codes contract, balance, determinism, no leakage, uniqueness, svd reference, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from recjpq_cli.cli import app
from recjpq_cli.data.codes import SIDECAR_KEYS, load_codes, save_codes, sidecar_path
from recjpq_cli.errors import ConfigError, InputError
from recjpq_cli.jpq.assignment import (
    SVDStrategy,
    TrainData,
    count_collisions,
    count_matrix,
    discretise,
    duplicate_mask,
    make_unique,
    svd_factors,
)

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "interactions.csv"
FAST = {"bpr": ["--epochs", "2"], "svd": [], "random": []}


def _run(args: list[object]):
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(args: list[object]):
    res = _run(args)
    assert res.exit_code == 0, res.output + res.stderr
    return res


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


def _write_csv(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def _leaky_rows(tail_seed: int, n_users: int = 120, n_items: int = 60, length: int = 9) -> list[tuple[int, int, int]]:
    """Training items fixed (every item appears in training); the last two items per user from ``tail_seed``."""
    rng, tail = np.random.default_rng(0), np.random.default_rng(tail_seed)
    rows = []
    for u in range(n_users):
        items = list(rng.integers(1, n_items + 1, length - 2)) + list(tail.integers(1, n_items + 1, 2))
        if u < n_items:  # item u + 1 is certainly in training
            items[0] = u + 1
        rows += [(u, int(i), t) for t, i in enumerate(items)]
    return rows


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory) -> Path:
    ds = tmp_path_factory.mktemp("assign") / "ds"
    _ok(["prepare", SAMPLE, "--out", ds, "-q"])
    return ds


@pytest.fixture(scope="module")
def assigned(sample_ds, tmp_path_factory) -> dict[str, Path]:
    """Default-size codes (M=8, ksub=256) for each strategy on sample_data, written once."""
    root = tmp_path_factory.mktemp("codes")
    out = {}
    for s in ("random", "svd", "bpr"):
        out[s] = root / f"{s}.npy"
        _ok(["assign", sample_ds, "--strategy", s, "--out", out[s], "--json", root / f"{s}.json", "-q", *FAST[s]])
    return out


# ---------------------------------------------------------------- the codes files


@pytest.mark.parametrize("strategy", ["random", "svd", "bpr"])
def test_codes_dtype_shape_and_sidecar(assigned, sample_ds, strategy):
    meta = yaml.safe_load((sample_ds / "dataset.yaml").read_text())
    codes, side = load_codes(assigned[strategy], meta)
    assert codes.dtype == np.uint8 and codes.shape == (meta["n_items"] + 1, 8)
    assert not codes[0].any() and int(codes.max()) < 256
    assert set(SIDECAR_KEYS) <= set(side)
    assert side["format_version"] == 1 and side["strategy"] == strategy
    assert (side["M"], side["ksub"], side["seed"], side["dtype"]) == (8, 256, 0, "uint8")
    assert side["dataset_fingerprint"] == meta["fingerprint"] and side["n_items"] == meta["n_items"]
    assert side["collisions_after"] == 0 and len(side["occupancy"]["min"]) == len(side["occupancy"]["max"]) == 8
    if strategy == "svd":
        assert 0 < side["explained_variance"] < 1
    if strategy == "bpr":
        assert side["epochs"] == 2 and 0 < side["final_loss"] < np.log(2)
    facts = json.loads(assigned[strategy].with_suffix(".json").read_text())
    assert facts["out"] == str(assigned[strategy]) and facts["collisions_after"] == side["collisions_after"]


def test_uint16_when_more_than_256_centroids(sample_ds, tmp_path):
    out = tmp_path / "c.npy"
    _ok(["assign", sample_ds, "-s", "svd", "-b", "300", "-m", "2", "-o", out, "-q"])
    codes, side = load_codes(out)
    assert codes.dtype == np.uint16 and side["dtype"] == "uint16" and int(codes.max()) == 299


@pytest.mark.parametrize("strategy", ["svd", "bpr"])
def test_bins_balanced(assigned, strategy):
    codes, side = load_codes(assigned[strategy])
    n = side["n_items"]
    for k in range(8):
        counts = np.bincount(codes[1:, k], minlength=256)
        assert counts.max() <= 2 * counts.min() and counts.min() >= n // 256 - 1
        assert side["occupancy"]["min"][k] == counts.min() and side["occupancy"]["max"][k] == counts.max()


@pytest.mark.parametrize("strategy", ["random", "svd", "bpr"])
def test_same_seed_byte_identical_other_seed_differs(assigned, sample_ds, tmp_path, strategy):
    again, other = tmp_path / "again.npy", tmp_path / "other.npy"
    _ok(["assign", sample_ds, "-s", strategy, "-o", again, "-q", *FAST[strategy]])
    _ok(["assign", sample_ds, "-s", strategy, "-o", other, "--seed", "1", "-q", *FAST[strategy]])
    assert again.read_bytes() == assigned[strategy].read_bytes()
    assert other.read_bytes() != again.read_bytes()


def test_no_leakage_from_validation_and_test_items(tmp_path):
    dss = []
    for name, tail_seed in (("a", 1), ("b", 2)):
        csv = _write_csv(tmp_path / f"{name}.csv", _leaky_rows(tail_seed))
        dss.append(tmp_path / name)
        _ok(["prepare", csv, "--out", dss[-1], "-q"])
    metas = [yaml.safe_load((d / "dataset.yaml").read_text()) for d in dss]
    assert metas[0]["n_items"] == metas[1]["n_items"] and metas[0]["fingerprint"] != metas[1]["fingerprint"]
    for s in ("random", "svd", "bpr"):
        outs = [tmp_path / f"{s}-{d.name}.npy" for d in dss]
        for d, out in zip(dss, outs, strict=True):
            _ok(["assign", d, "-s", s, "-m", "4", "-b", "16", "-o", out, "-q", *FAST[s]])
        assert outs[0].read_bytes() == outs[1].read_bytes(), s
    # the check can fail: a changed training item changes the svd codes
    rows = _leaky_rows(1)
    rows[0] = (rows[0][0], 60 if rows[0][1] != 60 else 59, rows[0][2])
    csv = _write_csv(tmp_path / "c.csv", rows)
    _ok(["prepare", csv, "--out", tmp_path / "c", "-q"])
    _ok(["assign", tmp_path / "c", "-s", "svd", "-m", "4", "-b", "16", "-o", tmp_path / "svd-c.npy", "-q"])
    assert (tmp_path / "svd-c.npy").read_bytes() != (tmp_path / "svd-a.npy").read_bytes()


# ---------------------------------------------------------------- uniqueness


def test_unique_removes_collisions_and_no_unique_keeps_them(sample_ds, tmp_path):
    u, nu = tmp_path / "u.npy", tmp_path / "nu.npy"
    _ok(["assign", sample_ds, "-s", "random", "-m", "6", "--dim", "24", "-b", "4", "-o", u, "-q"])  # 4^6 = 4,096 codes for 2,000 items
    _ok(["assign", sample_ds, "-s", "random", "-m", "6", "--dim", "24", "-b", "4", "-o", nu, "--no-unique", "-q"])
    cu, su = load_codes(u)
    cn, sn = load_codes(nu)
    assert su["collisions_before"] == sn["collisions_before"] == sn["collisions_after"] == count_collisions(cn[1:]) > 0
    assert su["collisions_after"] == 0 and np.unique(cu[1:], axis=0).shape[0] == su["n_items"]
    moved = np.any(cu != cn, axis=1)
    assert moved.sum() == su["collisions_before"]  # only the repeats move
    assert np.array_equal(moved[1:], duplicate_mask(cn[1:].astype(np.int64)))


def test_make_unique_nearest_value_last_split_first_ties_low():
    codes = np.array([[0, 0], [0, 0], [0, 0], [0, 1]])
    out, moved = make_unique(codes, ksub=4)
    assert moved == 2 and out.tolist() == [[0, 0], [0, 2], [0, 3], [0, 1]]
    out, _ = make_unique(np.array([[1, 2], [1, 2]]), ksub=4)
    assert out.tolist() == [[1, 2], [1, 1]]  # 1 and 3 are both one away: the lower wins
    out, _ = make_unique(np.array([[0, 0], [0, 1], [0, 0]]), ksub=2)
    assert out.tolist() == [[0, 0], [0, 1], [1, 0]]  # last split full: the split before changes


def test_make_unique_fills_a_full_code_space():
    codes = np.zeros((8, 3), dtype=np.int64)
    out, moved = make_unique(codes, ksub=2)
    assert moved == 7 and np.unique(out, axis=0).shape[0] == 8
    with pytest.raises(ConfigError):
        make_unique(np.zeros((9, 3), dtype=np.int64), ksub=2)


def test_unique_with_wide_codes_uses_hashed_keys():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, (500, 40))  # 40 splits x 2 bits > 64 bits
    codes[250:] = codes[:250]
    out, moved = make_unique(codes, ksub=3)
    assert moved == 250 and count_collisions(out) == 0
    assert (np.sum(out != codes, axis=1) == np.where(np.arange(500) >= 250, 1, 0)).all()


# ---------------------------------------------------------------- the maths


def test_discretise_equal_frequency_bins_by_stable_rank():
    x = np.random.default_rng(0).normal(size=(1000, 3))
    codes = discretise(x, ksub=7, seed=0)
    for k in range(3):
        assert set(np.bincount(codes[:, k], minlength=7).tolist()) <= {142, 143}
        order = np.argsort(x[:, k])
        assert np.all(np.diff(codes[order, k]) >= 0)  # monotone in the factor
    const = discretise(np.zeros((10, 1)), ksub=5, seed=3)  # ties: the seeded noise decides, still balanced
    assert np.bincount(const[:, 0]).tolist() == [2] * 5
    assert np.array_equal(const, discretise(np.zeros((10, 1)), ksub=5, seed=3))


def _tiny_train(n_users: int = 30, n_items: int = 20) -> TrainData:
    rng = np.random.default_rng(5)
    user = rng.integers(0, n_users, 400)
    item = rng.integers(1, n_items + 1, 400)
    return TrainData(user=user, item=item, n_users=n_users, n_items=n_items)


def test_svd_matches_dense_numpy_svd():
    train = _tiny_train()
    a = count_matrix(train)
    dense = np.zeros((train.n_users, train.n_items))
    np.add.at(dense, (train.user, train.item - 1), 1.0)
    assert np.array_equal(a.toarray(), dense)
    _, s_ref, vt_ref = np.linalg.svd(dense, full_matrices=False)
    M = 4
    ref = vt_ref[:M] * np.sign(vt_ref[:M][np.arange(M), np.argmax(np.abs(vt_ref[:M]), axis=1)])[:, None]
    factors, s = svd_factors(a, M, seed=0)
    assert np.allclose(s, s_ref[:M]) and np.all(np.diff(s) < 0)
    assert np.allclose(factors, ref.T, atol=1e-8)
    result = SVDStrategy().assign(train, M=M, ksub=4, seed=0)
    assert np.array_equal(result.codes, discretise(ref.T, 4, seed=0))
    assert np.isclose(result.facts["explained_variance"], (s_ref[:M] ** 2).sum() / (dense ** 2).sum())


def test_svd_component_count_limits():
    train = _tiny_train(n_users=5, n_items=20)
    a = count_matrix(train)
    factors, s = svd_factors(a, 5, seed=0)  # M == min(shape): dense fallback
    _, s_ref, _ = np.linalg.svd(a.toarray(), full_matrices=False)
    assert factors.shape == (20, 5) and np.allclose(s, s_ref)
    with pytest.raises(ConfigError, match=r"6 components \(-m 6\)"):
        svd_factors(a, 6, seed=0)
    with pytest.raises(ConfigError, match=r"\(--dim 6\).*smaller --dim"):  # svd-kmeans names its own option
        svd_factors(a, 6, seed=0, option="--dim")


# ---------------------------------------------------------------- load_codes checks


def _tamper(src: Path, dst: Path, codes=None, **side_changes) -> Path:
    c, side = load_codes(src)
    save_codes(dst, c if codes is None else codes, {**side, **side_changes})
    return dst


def test_load_codes_rejects_bad_files(assigned, sample_ds, tmp_path):
    src = assigned["random"]
    meta = yaml.safe_load((sample_ds / "dataset.yaml").read_text())
    c, _ = load_codes(src, meta)
    cases = {
        "fingerprint": (_tamper(src, tmp_path / "fp.npy", dataset_fingerprint="0" * 64), "another dataset"),
        "format": (_tamper(src, tmp_path / "fv.npy", format_version=2), "format_version"),
        "dtype": (_tamper(src, tmp_path / "dt.npy", codes=c.astype(np.uint16)), "dtype"),
        "shape": (_tamper(src, tmp_path / "sh.npy", codes=c[:-1]), "shape"),
        "padding": (_tamper(src, tmp_path / "pad.npy", codes=np.vstack([c[1:2], c[1:]])), "row 0"),
        "range": (_tamper(src, tmp_path / "rg.npy", ksub=4), "ksub"),
    }
    for name, (path, words) in cases.items():
        with pytest.raises(InputError, match=words) as e:
            load_codes(path, meta, dataset_dir=sample_ds)
        assert str(path.with_suffix("")) in str(e.value), name  # CODES.npy or CODES.yaml
    assert str(sample_ds / "dataset.yaml") in str(pytest.raises(
        InputError, load_codes, cases["fingerprint"][0], meta, dataset_dir=sample_ds).value)
    lone = tmp_path / "lone.npy"
    shutil.copy(src, lone)
    with pytest.raises(InputError, match="sidecar"):
        load_codes(lone)
    with pytest.raises(InputError, match="not found"):
        load_codes(tmp_path / "none.npy")
    assert sidecar_path(lone) == tmp_path / "lone.yaml"


# ---------------------------------------------------------------- bad input: one Error line, nothing written


def _tiny_ds(tmp_path: Path) -> Path:
    csv = _write_csv(tmp_path / "tiny.csv", [(u, 1 + (u * 7 + t) % 100, t) for u in range(50) for t in range(6)])
    _ok(["prepare", csv, "--out", tmp_path / "tiny", "-q"])
    return tmp_path / "tiny"


def test_bad_input_is_one_error_line_and_writes_nothing(sample_ds, tmp_path):
    tiny = _tiny_ds(tmp_path)  # 100 items
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("hello")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "codes.npy"
    cases = [  # (args, exit code, words in the message)
        ([tmp_path / "missing", "-s", "svd"], 1, "not found"),
        ([foreign, "-s", "svd"], 1, "dataset.yaml"),
        ([SAMPLE, "-s", "svd"], 1, "not a dataset folder"),
        ([sample_ds, "-s", "svd", "-m", "0"], 2, "code-length"),
        ([sample_ds, "-s", "svd", "-b", "1"], 2, "centroids"),
        ([sample_ds, "-s", "svd", "-b", "65537"], 2, "centroids"),
        ([tiny, "-s", "svd", "-b", "256"], 1, "more than the dataset's 100 items"),
        ([sample_ds, "-s", "random", "-b", "2", "-m", "10", "--dim", "20"], 1, "cannot have distinct codes"),
        ([sample_ds, "-s", "kmeans"], 2, "'random', 'svd', 'bpr'"),
        ([sample_ds, "-s", "random", "-m", "3"], 1, "--dim 512 must be a positive multiple of the code length M=3"),
        ([sample_ds, "--dim", "1200", "-m", "4", "-b", "16"], 1, "--dim 1200 SVD components need at least 1200"),
        ([sample_ds, "-s", "svd", "--epochs", "0"], 2, "epochs"),
        ([sample_ds, "-s", "svd", "--json", tmp_path / "nowhere" / "f.json"], 1, "nowhere"),
    ]
    for args, code, words in cases:
        res = _run(["assign", *args, "--out", out])
        assert res.exit_code == code, (args, res.output, res.stderr)
        text = _one_error_line(res) if code == 1 else res.output + res.stderr
        assert words in " ".join(text.split()), (args, text)
        assert list(out_dir.iterdir()) == [], args
    res = _run(["assign", sample_ds, "-s", "svd", "--out", out_dir / "codes.bin"])
    assert res.exit_code == 1 and ".npy" in _one_error_line(res) and list(out_dir.iterdir()) == []
    _ok(["assign", sample_ds, "-s", "random", "-b", "2", "-m", "10", "--dim", "20", "--no-unique", "--out", out, "-q"])


def test_existing_output_needs_overwrite(sample_ds, tmp_path):
    out = tmp_path / "c.npy"
    _ok(["assign", sample_ds, "-s", "random", "-o", out, "-q"])
    before = out.read_bytes(), sidecar_path(out).read_text()
    res = _run(["assign", sample_ds, "-s", "random", "--seed", "3", "-o", out])
    assert res.exit_code == 1 and "--overwrite" in _one_error_line(res)
    assert (out.read_bytes(), sidecar_path(out).read_text()) == before
    _ok(["assign", sample_ds, "-s", "random", "--seed", "3", "-o", out, "--overwrite", "-q"])
    assert out.read_bytes() != before[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "c.yaml"]


def test_table_on_stderr_and_json_on_stdout(sample_ds, tmp_path):
    res = _ok(["assign", sample_ds, "-s", "svd", "-m", "4", "-b", "32", "-o", tmp_path / "c.npy", "--json", "-"])
    facts = json.loads(res.stdout)
    assert facts["explained_variance"] > 0 and facts["M"] == 4 and facts["ksub"] == 32
    assert "explained variance" in res.stderr and "collisions" in res.stderr


def test_stable_rank_matches_a_stable_sort_with_ties():
    from recjpq_cli.jpq.assignment import stable_rank

    rng = np.random.default_rng(0)
    for _ in range(100):
        x = rng.integers(0, rng.integers(1, 20), (int(rng.integers(1, 60)), 3)).astype(np.float64)
        ref = np.empty(x.shape, dtype=np.int64)
        for k in range(3):
            ref[np.argsort(x[:, k], kind="stable"), k] = np.arange(x.shape[0])
        assert np.array_equal(stable_rank(x), ref)


def test_epochs_change_bpr_codes(assigned, sample_ds, tmp_path):
    one = tmp_path / "one.npy"
    _ok(["assign", sample_ds, "-s", "bpr", "--epochs", "1", "-o", one, "-q"])
    _, side = load_codes(one)
    assert side["epochs"] == 1 and one.read_bytes() != assigned["bpr"].read_bytes()


@pytest.mark.parametrize(("n", "m", "ksub", "high"), [
    (3000, 3, 16, 4),  # many repeats of few codes: one-split moves in several splits
    (4000, 2, 64, 5),  # a crowded last split
    (64, 2, 8, 8),  # the whole code space: lexicographic fallback
    (500, 40, 3, 3),  # 40 x 2 bits > 64: hashed keys
    (2000, 4, 8, 1),  # one group of equal codes (a tail at the origin): neighbours exhausted, then the scan
    (3000, 4, 16, 2),  # 16 large groups whose one-split neighbourhoods overlap: resumed searches
    (600, 40, 3, 1),  # one group with hashed keys
])
def test_make_unique_compiled_path_equals_the_plain_reference(n, m, ksub, high):
    from recjpq_cli.jpq import pqtopk
    from recjpq_cli.jpq.assignment import make_unique_plain

    if not pqtopk.available():
        pytest.skip("numba not usable")
    codes = np.random.default_rng(n).integers(0, high, (n, m))
    codes[n // 2:] = codes[:n - n // 2]  # every code of the second half repeats one of the first
    fast, moved_fast = make_unique(codes, ksub)
    plain, moved_plain = make_unique_plain(codes, ksub)
    assert moved_fast == moved_plain > 0 and np.array_equal(fast, plain) and count_collisions(fast) == 0


def test_first_of_equal_names_each_codes_first_item():
    from recjpq_cli.jpq.assignment import first_of_equal

    codes = np.random.default_rng(3).integers(0, 3, (500, 3))
    first: dict[tuple, int] = {}
    want = [first.setdefault(tuple(row), i) for i, row in enumerate(codes.tolist())]
    assert np.array_equal(first_of_equal(codes), want)
    assert np.array_equal(duplicate_mask(codes), np.array(want) != np.arange(500))
