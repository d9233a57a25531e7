"""Hostile models (issue 15, serving side): non-finite weights or scores, out-of-range codes, unknown
model names and files whose suffix lies are refused in one line; nothing is written."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import invoke
from hostile import refused, set_json, tamper_model, tamper_run

from recjpq_cli.errors import NonFiniteError
from recjpq_cli.jpq.embedding import FullEmbedding, JPQEmbedding
from recjpq_cli.ranking import target_ranks, topk


def _serve(cmd: str, src, t, tmp_path) -> list:
    """The command line of evaluate / recommend / compress reading ``src``; outputs go to tmp_path."""
    ds = t["ds"]
    if cmd == "evaluate":
        return ["evaluate", src, "--data", ds, "--device", "cpu", "--per-user", tmp_path / "u.parquet",
                "--json", tmp_path / "e.json"]
    if cmd == "recommend":
        return ["recommend", src, "--data", ds, "--out", tmp_path / "r.parquet", "--device", "cpu",
                "--json", tmp_path / "r.json"]
    return ["compress", src, "--data", ds, "--out", tmp_path / "m.safetensors", "--json", tmp_path / "c.json"]


def _nan_centroids(t: dict) -> None:
    t["items.centroids"] = torch.full_like(t["items.centroids"], float("nan"))


# ------------------------------------------------------------------------------------- case 1


@pytest.mark.parametrize("cmd", ["evaluate", "recommend"])
def test_model_file_with_nan_weights_is_refused(trained, tmp_path, cmd) -> None:
    bad = tamper_model(trained["model"], tmp_path / "nan.safetensors", tensors=_nan_centroids)
    refused(_serve(cmd, bad, trained, tmp_path), tmp_path, words=(str(bad), "items.centroids", "non-finite"))


@pytest.mark.parametrize("cmd", ["evaluate", "recommend", "compress"])
def test_run_with_nan_weights_is_refused(trained, tmp_path, cmd) -> None:
    def diverge(ckpt: dict) -> None:
        key = next(k for k, v in ckpt["state_dict"].items() if k.startswith("blocks.") and v.is_floating_point())
        ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("inf"))
    run = tamper_run(trained["run"], tmp_path / "div", diverge)
    refused(_serve(cmd, run, trained, tmp_path), tmp_path, words=(str(run / "best.pt"), "non-finite"))


@pytest.mark.parametrize("cmd", ["evaluate", "recommend"])
def test_scores_that_overflow_are_an_error_not_a_ranking(trained, tmp_path, cmd) -> None:
    """Finite weights whose scores overflow float32: NaN / inf must never rank a target first."""
    def huge(t: dict) -> None:
        t["items.centroids"] = torch.full_like(t["items.centroids"], 3e38)
    bad = tamper_model(trained["model"], tmp_path / "huge.safetensors", tensors=huge)
    refused(_serve(cmd, bad, trained, tmp_path), tmp_path, words=(str(bad), "not finite"))


def _embeddings() -> list:
    torch.manual_seed(0)
    codes = torch.randint(0, 8, (31, 2), dtype=torch.uint8)
    codes[0] = 0
    return [JPQEmbedding(codes=codes, ksub=8, d=4), FullEmbedding(n_items=30, d=4)]


@pytest.mark.parametrize("items", _embeddings(), ids=["jpq", "full"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ranking_refuses_non_finite_scores(items, bad) -> None:
    """Both ranking entry points, on the compiled PQ path (jpq on the CPU) and the torch path (full)."""
    h = torch.randn(3, 4)
    targets = torch.tensor([1, 2, 3])
    assert target_ranks(items, h, targets).min() >= 1 and topk(items, h, 5)[1].shape == (3, 5)
    h[1, 2] = bad
    with pytest.raises(NonFiniteError):
        target_ranks(items, h, targets, chunk=7)
    with pytest.raises(NonFiniteError):
        topk(items, h, 5, chunk=7)


# ------------------------------------------------------------------------------------ case 11


@pytest.mark.parametrize("cmd", ["evaluate", "recommend"])
def test_model_file_sub_ids_beyond_ksub(trained, tmp_path, cmd) -> None:
    def wild(t: dict) -> None:
        t["items.codes"][5, 1] = 255
    bad = tamper_model(trained["model"], tmp_path / "codes.safetensors", tensors=wild)
    refused(_serve(cmd, bad, trained, tmp_path), tmp_path, words=(str(bad), "items.codes", "255", "0..15"))


def test_model_file_codes_shape_against_n_items_and_m(trained, tmp_path) -> None:
    def short(t: dict) -> None:
        t["items.codes"] = t["items.codes"][:-1].clone()
    bad = tamper_model(trained["model"], tmp_path / "short.safetensors", tensors=short)
    refused(_serve("recommend", bad, trained, tmp_path), tmp_path, words=(str(bad), "items.codes", "(n_items + 1, M)"))


def test_run_checkpoint_sub_ids_beyond_ksub(trained, tmp_path) -> None:
    def wild(ckpt: dict) -> None:
        ckpt["state_dict"]["items.codes"][3, 0] = 200
    run = tamper_run(trained["run"], tmp_path / "wild", wild)
    refused(_serve("evaluate", run, trained, tmp_path), tmp_path, words=(str(run / "best.pt"), "200"))


# ---------------------------------------------------------------------------- unknown model name


@pytest.mark.parametrize("cmd", ["evaluate", "recommend"])
def test_unknown_model_name_in_model_file(trained, tmp_path, cmd) -> None:
    bad = tamper_model(trained["model"], tmp_path / "evil.safetensors",
                       meta=lambda m: set_json(m, "model_args", model="evil"))
    refused(_serve(cmd, bad, trained, tmp_path), tmp_path, words=(str(bad), "unknown model 'evil'", "sasrec"))


@pytest.mark.parametrize("cmd", ["evaluate", "compress"])
def test_unknown_model_name_in_checkpoint(trained, tmp_path, cmd) -> None:
    def evil(ckpt: dict) -> None:
        ckpt["model_args"]["model"] = "evil"
    run = tamper_run(trained["run"], tmp_path / "evil", evil)
    refused(_serve(cmd, run, trained, tmp_path), tmp_path, words=("unknown model 'evil'",))


# ------------------------------------------------------------------- case 12: kind by content


def test_checkpoint_under_a_model_suffix_is_read_as_a_checkpoint(trained, tmp_path) -> None:
    """Documented choice (docs/formats.md, "Loading"): a torch checkpoint is read as what it is."""
    ck = tmp_path / "ck.safetensors"
    ck.write_bytes((trained["run"] / "best.pt").read_bytes())
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for src, out in ((ck, a), (trained["run"], b)):
        res = invoke(["recommend", src, "--data", trained["ds"], "--out", out, "--device", "cpu", "-q"])
        assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes()


def test_model_file_under_a_checkpoint_suffix_is_read_as_a_model_file(trained, tmp_path) -> None:
    pt = tmp_path / "model.pt"
    pt.write_bytes(trained["model"].read_bytes())
    res = invoke(["recommend", pt, "--data", trained["ds"], "--out", tmp_path / "r.parquet", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("content, words", [
    (pickle.dumps({"model_args": {}}), ("is a pickle file", "never loads")),
    (b"PAR1" + b"\0" * 64, ("is a Parquet file", "not a model file")),
    (b"\x01\x02garbage" * 10, ("not a model file",)),
    (b"", ("is an empty file",)),
])
@pytest.mark.parametrize("cmd", ["evaluate", "recommend"])
def test_file_that_is_no_model_says_what_it_is(trained, tmp_path, cmd, content, words) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(content)
    refused(_serve(cmd, bad, trained, tmp_path), tmp_path, words=(str(bad), *words))


# ------------------------------------------------------------------------------------ minors


def test_model_files_are_written_0644_like_every_output(trained, tmp_path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    for f in (trained["model"], trained["codes"], trained["run"] / "best.pt"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
