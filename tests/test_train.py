"""`recjpq train` end to end on sample_data: learning, checkpoints, exact resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from recjpq_cli.cli import app

SMALL = ["--set", "d=32", "--set", "max_len=50", "--set", "dropout=0.2", "--set", "val_users=300", "--device", "cpu"]


def _run(runner: CliRunner, args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output + res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def ds_codes(tmp_path_factory, sample_csv) -> tuple[Path, Path]:
    runner = CliRunner()
    root = tmp_path_factory.mktemp("train")
    ds, codes = root / "ds", root / "codes.npy"
    assert _run(runner, ["prepare", sample_csv, "--out", ds, "-q"]).exit_code == 0
    res = _run(runner, ["assign", ds, "--strategy", "svd", "--out", codes, "-q"])  # M=8, ksub=256
    assert res.exit_code == 0, res.output
    return ds, codes


def _popularity_ndcg(ds: Path, users_sample: int = 300) -> float:
    """Validation NDCG@10 of the popularity ranking on the same seeded sample train validates on."""
    from recjpq_cli.config import build_config
    from recjpq_cli.data.schema import load_dataset
    from recjpq_cli.stages.train import Validator

    data = load_dataset(ds)
    cfg = build_config("sasrec", overrides={"val_users": users_sample, "max_len": 50})
    v = Validator(data, cfg, torch.device("cpu"))
    counts = torch.from_numpy(data.train_counts()).double()
    from recjpq_cli.data import sequences
    from recjpq_cli.jpq.embedding import FullEmbedding
    from recjpq_cli.metrics import ndcg_at_k
    from recjpq_cli.ranking import target_ranks

    emb = FullEmbedding(n_items=data.n_items, d=1, tie=True)
    with torch.no_grad():
        emb.input.weight[:, 0] = counts.float() / counts.max()
    h = torch.ones(len(v.users), 1)
    rows, items = sequences.seen_items(data, v.users, v.pos)
    ranks = target_ranks(emb, h, torch.from_numpy(data.item[v.pos].astype(np.int64)), rows, items)
    return float(ndcg_at_k(ranks, 10).mean())


def test_sasrec_jpq_learns_on_sample_data(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    runner = CliRunner()
    out = tmp_path / "run"
    # Centroids are shared by many items: under a 200-step budget they want a larger step than dense tables.
    res = _run(runner, ["train", ds, "--codes", codes, "--out", out, "--max-steps", 200, "-q",
                        "--json", tmp_path / "t.json", *SMALL, "--set", "lr=0.01", "--set", "dropout=0.1"])
    assert res.exit_code == 0, res.output + res.stderr
    facts = json.loads((tmp_path / "t.json").read_text())
    assert facts["steps"] == 200 and facts["stop_reason"] == "max_steps"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 200
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # the loss falls
    best = max(x["NDCG@10"] for x in lines)
    pop = _popularity_ndcg(ds)
    assert best >= 2 * pop, (best, pop)
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (out / name).is_file()
    ck = torch.load(out / "best.pt", weights_only=True)
    for key in ("format_version", "model", "embedding", "model_args", "config", "state_dict", "optimizer", "rng",
                "epoch", "step", "best_metric", "dataset_fingerprint", "codes_meta", "world_size"):
        assert key in ck
    assert ck["embedding"] == "jpq" and ck["world_size"] == 1
    assert ck["best_metric"] == pytest.approx(best)
    item_params = [k for k in ck["state_dict"] if k.startswith("items.")]
    assert sorted(item_params) == ["items.centroids", "items.codes"]
    conf = yaml.safe_load((out / "config.yaml").read_text())
    assert conf["d"] == 32 and conf["model"] == "sasrec" and conf["embedding"] == "jpq"


@pytest.mark.parametrize("model,extra", [
    ("gsasrec", ["--set", "negatives=16"]),
    ("gsasrec", ["--set", "negatives=8", "--set", "negatives_per=sequence"]),
    ("bert4rec", []),
])
def test_other_models_train_a_few_steps(ds_codes, tmp_path, model: str, extra: list[str]) -> None:
    ds, codes = ds_codes
    res = _run(CliRunner(), ["train", ds, "--codes", codes, "--model", model, "--out", tmp_path / "r",
                             "--max-steps", 3, "-q", *SMALL, *extra])
    assert res.exit_code == 0, res.output + res.stderr
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["model"] == model and ck["step"] == 3
    # the steps were real: a finite loss, finite weights that moved from the init, finite validation metrics
    assert np.isfinite(ck["last_loss"]) and ck["last_loss"] > 0, ck["last_loss"]
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert all(np.isfinite(v) for v in ck["metrics"].values()) and ck["metrics"]["Recall@10"] >= 0


def test_dense_baseline_has_two_untied_tables_or_one_tied(ds_codes, tmp_path) -> None:
    ds, _ = ds_codes
    for tie, tables in (("false", 2), ("true", 1)):
        out = tmp_path / f"dense-{tie}"
        res = _run(CliRunner(), ["train", ds, "--embedding", "full", "--out", out, "--max-steps", 2, "-q", *SMALL,
                                 "--set", f"tie_embeddings={tie}"])
        assert res.exit_code == 0, res.output + res.stderr
        sd = torch.load(out / "last.pt", weights_only=True)["state_dict"]
        assert len([k for k in sd if k.startswith("items.") and k.endswith("weight")]) == tables


@pytest.mark.parametrize("model", [["--model", "sasrec"], ["--model", "bert4rec", "--set", "loss=gbce",
                                                              "--set", "negatives=8"]])
def test_resume_is_exact(ds_codes, tmp_path, model) -> None:
    """Stopped after 3 steps and resumed to 7 ends with the same weights as 7 uninterrupted steps.

    Same data order, negatives, BERT4Rec's masks, dropout masks and Adam state, and deterministic kernels (the
    centroid gather's backward accumulates in a fixed order): bit for bit.
    """
    ds, codes = ds_codes
    runner = CliRunner()
    common = [*SMALL, *model, "--set", "batch_size=300", "--set", "dropout=0.3", "-q"]  # 4 steps an epoch
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(runner, ["train", ds, "--codes", codes, "--out", a, "--max-steps", 7, *common]).exit_code == 0
    assert _run(runner, ["train", ds, "--codes", codes, "--out", b, "--max-steps", 3, *common]).exit_code == 0
    res = _run(runner, ["train", ds, "--out", b, "--resume", "--max-steps", 7, "-q"])
    assert res.exit_code == 0, res.output + res.stderr
    sa = torch.load(a / "last.pt", weights_only=True)
    sb = torch.load(b / "last.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 7
    assert sa["last_loss"] == sb["last_loss"]
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    steps_b = [json.loads(x)["step"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert steps_b[0] == 3 and steps_b[-1] == 7  # it really stopped at 3 and resumed


def test_resume_refuses_a_changed_setting(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    runner = CliRunner()
    out = tmp_path / "r"
    assert _run(runner, ["train", ds, "--codes", codes, "--out", out, "--max-steps", 1, *SMALL, "-q"]).exit_code == 0
    before = (out / "last.pt").read_bytes()
    res = _run(runner, ["train", ds, "--out", out, "--resume", "--set", "d=64", "--max-steps", 2])
    assert res.exit_code == 1 and "d=64" in _one_error_line(res)
    res = _run(runner, ["train", ds, "--out", out, "--resume", "--model", "bert4rec"])
    assert res.exit_code == 1
    _one_error_line(res)
    res = _run(runner, ["train", ds, "--out", out, "--resume", "--set", "d=32", "--max-steps", 2, "-q"])
    assert res.exit_code == 0, res.stderr  # repeating the run's own value is fine
    assert (out / "last.pt").read_bytes() != before


def _codes_copy(src: Path, dst: Path, mutate=None, sidecar=True) -> Path:
    arr = np.load(src)
    if mutate:
        arr = mutate(arr)
    np.save(dst, arr)
    if sidecar:
        dst.with_suffix(".yaml").write_text(src.with_suffix(".yaml").read_text())
    return dst


@pytest.mark.parametrize("case", ["no_sidecar", "wrong_dtype", "d_not_divisible", "other_dataset",
                                  "unknown_key", "wrong_type", "exists", "no_codes", "negative_seed",
                                  "parent_is_a_file"])
def test_bad_input_gives_one_error_line_and_writes_nothing(ds_codes, tmp_path, case: str) -> None:
    ds, codes = ds_codes
    out = tmp_path / "run"
    args = ["train", ds, "--out", out, "--max-steps", 1, *SMALL]
    if case == "no_sidecar":
        args += ["--codes", _codes_copy(codes, tmp_path / "c.npy", sidecar=False)]
    elif case == "wrong_dtype":
        args += ["--codes", _codes_copy(codes, tmp_path / "c.npy", mutate=lambda a: a.astype(np.float32))]
    elif case == "d_not_divisible":
        args += ["--codes", codes, "--set", "d=30", "--set", "num_heads=1"]
    elif case == "other_dataset":
        other = tmp_path / "other.yaml"
        side = yaml.safe_load(codes.with_suffix(".yaml").read_text())
        side["dataset_fingerprint"] = "0" * 64
        c = _codes_copy(codes, tmp_path / "other.npy")
        c.with_suffix(".yaml").write_text(yaml.safe_dump(side))
        del other
        args += ["--codes", c]
    elif case == "unknown_key":
        args += ["--codes", codes, "--set", "dimension=3"]
    elif case == "wrong_type":
        args += ["--codes", codes, "--set", "d=big"]
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args += ["--codes", codes]
    elif case == "no_codes":
        pass
    elif case == "negative_seed":
        args += ["--codes", codes, "--set", "seed=-1"]
    elif case == "parent_is_a_file":
        (tmp_path / "runs").write_text("a file")
        out = tmp_path / "runs" / "deeper" / "run"
        args = ["train", ds, "--out", out, "--codes", codes, "--max-steps", 1, *SMALL]
    res = _run(CliRunner(), args)
    assert res.exit_code == 1, res.output + res.stderr
    _one_error_line(res)
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    else:
        assert not out.exists()


def test_missing_folders_above_the_run_are_made_only_with_the_run(ds_codes, tmp_path) -> None:
    """README's `--out runs/sasrec-svd` works in a fresh folder; a run refused in set-up leaves no folders."""
    ds, codes = ds_codes
    refused = _run(CliRunner(), ["train", ds, "--out", tmp_path / "a" / "b" / "run", "--codes", codes,
                                 "--max-steps", 1, *SMALL, "--set", "d=30", "--set", "num_heads=1"])
    assert refused.exit_code == 1 and not (tmp_path / "a").exists()
    out = tmp_path / "runs" / "sasrec" / "run"
    res = _run(CliRunner(), ["train", ds, "--out", out, "--codes", codes, "--max-steps", 1, *SMALL])
    assert res.exit_code == 0, res.output + res.stderr
    assert (out / "config.yaml").exists() and (out / "last.pt").exists()
    assert sorted(p.name for p in (tmp_path / "runs" / "sasrec").iterdir()) == ["run"]


def test_unknown_model_is_a_usage_error(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    res = _run(CliRunner(), ["train", ds, "--codes", codes, "--model", "caser", "--out", tmp_path / "r"])
    assert res.exit_code == 2
    assert "sasrec" in res.stderr and "bert4rec" in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_on_resume_is_an_error_and_run_is_untouched(ds_codes, tmp_path, damage: str) -> None:
    ds, codes = ds_codes
    runner = CliRunner()
    out = tmp_path / "r"
    assert _run(runner, ["train", ds, "--codes", codes, "--out", out, "--max-steps", 1, *SMALL, "-q"]).exit_code == 0
    last = out / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _run(runner, ["train", ds, "--out", out, "--resume", "--max-steps", 2])
    assert res.exit_code == 1
    assert "last.pt" in _one_error_line(res)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_memory_estimate_refuses_before_allocating(ds_codes, tmp_path, monkeypatch) -> None:
    ds, _ = ds_codes
    import recjpq_cli.training.setup as setup

    monkeypatch.setattr(setup, "available_bytes", lambda device: 1024)
    res = _run(CliRunner(), ["train", ds, "--embedding", "full", "--out", tmp_path / "r", *SMALL])
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "GiB" in line and "--codes" in line
    assert not (tmp_path / "r").exists()


def test_config_file_and_precedence(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    conf = tmp_path / "c.yaml"
    conf.write_text("d: 16\nmax_len: 30\nlr: 0.01\nval_users: 50\n")
    out = tmp_path / "r"
    res = _run(CliRunner(), ["train", ds, "--codes", codes, "--config", conf, "--set", "d=32", "--out", out,
                             "--max-steps", 1, "--patience", 3, "-q", "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["d"] == 32 and saved["max_len"] == 30 and saved["lr"] == 0.01 and saved["patience"] == 3


def test_early_stopping_keeps_best(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    out = tmp_path / "r"
    res = _run(CliRunner(), ["train", ds, "--codes", codes, "--out", out, "--max-epochs", 30, "--patience", 1,
                             "--set", "lr=0.3", "-q", "--json", tmp_path / "j.json", *SMALL])
    assert res.exit_code == 0, res.stderr
    facts = json.loads((tmp_path / "j.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert facts["stop_reason"] == "early_stop" and facts["epochs"] < 30, facts  # lr=0.3 diverges: it stops
    # patience 1: the last epoch did not improve on the best before it, and every earlier epoch did
    assert lines[-1]["NDCG@10"] <= max(x["NDCG@10"] for x in lines[:-1])
    assert all(b["NDCG@10"] > max(x["NDCG@10"] for x in lines[:i + 1]) for i, b in enumerate(lines[1:-1]))
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["best_metric"] == pytest.approx(max(x["NDCG@10"] for x in lines))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_steps_and_checkpoint_round_trip(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    out = tmp_path / "r"
    args = ["train", ds, "--codes", codes, "--out", out, "--max-steps", 5, "--device", "cuda",
            "--set", "d=32", "--set", "max_len=50", "-q"]
    res = _run(CliRunner(), args)
    assert res.exit_code == 0, res.stderr
    ck = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
    assert all(v.device.type == "cpu" for v in ck["state_dict"].values())
    res = _run(CliRunner(), ["train", ds, "--out", out, "--resume", "--max-steps", 8, "--device", "cuda", "-q"])
    assert res.exit_code == 0, res.stderr
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 8


def test_unwritable_json_path_is_refused_before_training(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    res = _run(CliRunner(), ["train", ds, "--codes", codes, "--out", tmp_path / "r", *SMALL,
                             "--json", tmp_path / "missing" / "t.json"])
    assert res.exit_code == 1
    assert "missing" in _one_error_line(res)
    assert not (tmp_path / "r").exists()


def test_metrics_lines_are_strict_json_even_without_steps(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    out = tmp_path / "r"
    runner = CliRunner()
    res = _run(runner, ["train", ds, "--codes", codes, "--out", out, "--time-limit", 0, *SMALL, "-q"])
    assert res.exit_code == 0, res.stderr  # stopped before its first step: validated with no training loss

    def no_nan(x: str) -> None:
        raise AssertionError(f"non-JSON constant {x}")

    lines = [json.loads(x, parse_constant=no_nan) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 0 and lines[0]["train_loss"] is None
    res = _run(runner, ["train", ds, "--out", out, "--resume", "--time-limit", 60, "--max-steps", 1, "-q"])
    assert res.exit_code == 0, res.stderr
    lines = [json.loads(x, parse_constant=no_nan) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1] and lines[1]["train_loss"] is not None


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_training_like_ctrl_c(ds_codes, tmp_path, sig: str) -> None:
    """SIGTERM (a scheduler's time limit) and SIGINT (Ctrl-C) validate, save last.pt and best.pt, exit 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    ds, codes = ds_codes
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "recjpq_cli", "train", str(ds), "--codes", str(codes), "--out", str(run),
           *SMALL, "--set", "steps_per_epoch=2", "--max-steps", "1000000", "--json", str(tmp_path / "t.json"), "-q"]
    proc = subprocess.Popen(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):  # training, past two validations
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    facts = json.loads((tmp_path / "t.json").read_text())
    assert facts["stop_reason"] == "interrupted" and facts["steps"] >= 4
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["step"] == facts["steps"] and (run / "best.pt").is_file()
    assert not list(tmp_path.glob(".*tmp*")) and not list(run.glob(".*tmp*"))


def test_compile_key_compiles_the_training_step(ds_codes, tmp_path, monkeypatch) -> None:
    """``compile: true`` runs the step through torch.compile (recorded here; the real compiler takes a minute
    on the CPU, measured by benchmarks/bench_compile.py); the default does not."""
    ds, codes = ds_codes
    seen = []

    def fake_compile(module, *a, **k):
        seen.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    for flag, want in (("true", ["LossModule"]), ("false", [])):
        seen.clear()
        res = _run(CliRunner(), ["train", ds, "--codes", codes, "--out", tmp_path / flag, *SMALL, "--max-steps", 2,
                                 "--set", f"compile={flag}"])
        assert res.exit_code == 0, res.output
        assert seen == want
