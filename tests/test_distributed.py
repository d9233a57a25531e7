"""DDP through torchrun: 2 CPU processes (gloo) equal one process with the doubled batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from recjpq_cli.cli import app

COMMON = ["--set", "d=32", "--set", "max_len=30", "--set", "dropout=0.0", "--set", "val_users=100",
          "--device", "cpu", "--max-steps", "3", "-q"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                             "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["RECJPQ_DIST_TIMEOUT"] = "30"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ds_codes(tmp_path_factory, sample_csv) -> tuple[Path, Path]:
    runner = CliRunner()
    root = tmp_path_factory.mktemp("ddp")
    ds, codes = root / "ds", root / "codes.npy"
    assert runner.invoke(app, ["prepare", str(sample_csv), "--out", str(ds), "-q"]).exit_code == 0
    res = runner.invoke(app, ["assign", str(ds), "--strategy", "random", "-m", "4", "-b", "32", "--out", str(codes), "-q"])
    assert res.exit_code == 0, res.output
    return ds, codes


def _ddp_and_single(ds: Path, codes: Path, tmp_path: Path, sets: list[str]) -> tuple[dict, dict]:
    """Train 3 steps with two gloo processes at batch 32 and with one at batch 64; both checkpoints, after
    checking they hold the same step, loss and weights."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recjpq_cli", "train", str(ds), "--codes", str(codes), "--out", str(ddp), "--set", "batch_size=32",
           *sets]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    res1 = CliRunner().invoke(app, ["train", str(ds), "--codes", str(codes), "--out", str(single),
                                    "--set", "batch_size=64", *sets])
    assert res1.exit_code == 0, res1.stderr
    a = torch.load(ddp / "last.pt", weights_only=True)
    b = torch.load(single / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    assert abs(a["last_loss"] - b["last_loss"]) < 1e-4, (a["last_loss"], b["last_loss"])
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v.float(), b["state_dict"][k].float(), rtol=1e-3, atol=1e-4)
    return a, b


def test_two_gloo_processes_match_one_process_with_doubled_batch(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    ddp = tmp_path / "ddp"
    a, b = _ddp_and_single(ds, codes, tmp_path, COMMON)
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert sorted(p.name for p in ddp.iterdir()) == [".lock", "best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    # --resume under DDP, with the semantics printed at start
    cmd_resume = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "recjpq_cli", "train", str(ds), "--out", str(ddp), "--resume", "--max-steps", "5"]
    res = subprocess.run(cmd_resume, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "effective batch 64" in res.stderr and "learning rate not scaled" in res.stderr
    resumed = torch.load(ddp / "last.pt", weights_only=True)
    assert resumed["step"] == 5 and resumed["world_size"] == 2


def test_two_gloo_processes_match_one_process_for_gbert4rec(ds_codes, tmp_path) -> None:
    """BERT4Rec's masks come from (seed, step, user, position) and the loss is divided by the global masked
    count, so two processes equal one with the doubled batch here too."""
    ds, codes = ds_codes
    _ddp_and_single(ds, codes, tmp_path, ["--model", "bert4rec", "--set", "loss=gbce", "--set", "negatives=8", *COMMON])


_RANKS_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
from pathlib import Path
from recjpq_cli.config import build_config
from recjpq_cli import distributed
from recjpq_cli.models.registry import build_model, model_args_from_config
from recjpq_cli.stages.train import LossModule
from recjpq_cli.negatives import uniform_negatives
ctx = distributed.init("cpu")
cfg = build_config("sasrec", overrides={"d": 16, "max_len": 10, "dropout": 0.0})
torch.manual_seed(0)
codes = torch.randint(0, 8, (51, 4), dtype=torch.uint8); codes[0] = 0
m = build_model(model_args_from_config(cfg, 50, (51, 4), 8), codes)
ddp = distributed.wrap(LossModule(m, cfg, torch.device("cpu")), ctx)
opt = torch.optim.Adam(m.parameters(), lr=0.1)
g = torch.Generator().manual_seed(100 + ctx.rank)  # different data on each rank
inp = torch.randint(1, 51, (4, 10), generator=g); tgt = torch.randint(1, 51, (4, 10), generator=g)
negs = uniform_negatives(0, 0, torch.arange(4) + 4 * ctx.rank, 10, 1, 50, True)
loss = ddp(inp=inp, tgt=tgt, negs=negs); loss.backward(); opt.step()
c = m.items.centroids.detach().clone()
others = [torch.zeros_like(c) for _ in range(ctx.world_size)]
dist.all_gather(others, c)
assert all(torch.equal(o, others[0]) for o in others), "centroids differ between ranks"
assert not torch.equal(others[0], build_model(model_args_from_config(cfg, 50, (51, 4), 8), codes).items.centroids)
print("OK", ctx.rank)
del ddp, loss  # shutdown's contract: no DDP reducer may outlive the process group
distributed.shutdown(ctx)
"""


def test_centroid_gradients_are_synchronised(tmp_path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS_SCRIPT)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("OK") == 2


def test_half_set_environment_is_one_error_line(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    env = _env() | {"RANK": "0", "WORLD_SIZE": "2"}
    res = subprocess.run([sys.executable, "-m", "recjpq_cli", "train", str(ds), "--codes", str(codes),
                          "--out", str(tmp_path / "r"), *COMMON], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "MASTER_ADDR" in lines[0]
    assert not (tmp_path / "r").exists()


def test_master_port_in_use_is_one_error_line(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env() | {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "RECJPQ_DIST_TIMEOUT": "5"}
        res = subprocess.run([sys.executable, "-m", "recjpq_cli", "train", str(ds), "--codes", str(codes),
                              "--out", str(tmp_path / "r"), *COMMON], env=env, capture_output=True, text=True,
                             timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    assert lines and lines[-1].startswith("Error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()
