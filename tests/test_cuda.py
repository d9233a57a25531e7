"""CUDA-only checks (``pytest -m cuda``, run by ``benchmarks/gpu_check.sh``; skipped without a GPU): bf16
autocast in the training step, and the memory estimate ``train`` refuses with against what a step allocates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recjpq_cli.config import build_config
from recjpq_cli.data import sequences
from recjpq_cli.device import autocast
from recjpq_cli.memory import estimate
from recjpq_cli.models.objective import LossModule
from recjpq_cli.models.registry import build_model, model_args_from_config, spec
from recjpq_cli.negatives import uniform_negatives

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
N_ITEMS, M, KSUB = 200_000, 8, 256


def _model(cfg, dev):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, KSUB, (N_ITEMS + 1, M), dtype=torch.uint8, generator=g)
    codes[0] = 0
    return build_model(model_args_from_config(cfg, N_ITEMS, tuple(codes.shape), KSUB), codes).to(dev)


def _batch(cfg, step: int, dev) -> dict[str, torch.Tensor]:
    """A batch in the task's own format (random sequences with every position real)."""
    g = torch.Generator().manual_seed(step)
    b, length = cfg.batch_size, cfg.max_len
    users = np.arange(b) + step * b
    per_position = cfg.negatives_per == "position"
    negs = (uniform_negatives(cfg.seed, step, torch.from_numpy(users).to(dev), length, cfg.negatives, N_ITEMS,
                              per_position) if cfg.negatives else None)
    if spec(cfg.model).task.name == "masked":
        task = spec(cfg.model).task
        mask = task.masks(cfg, users, np.full(users.max() + 1, length), step)
        pos, filled = sequences.masked_slots(mask)
        out = {"seq": torch.randint(1, N_ITEMS + 1, (b, length), generator=g), "mask": torch.from_numpy(mask),
               "pos": torch.from_numpy(pos), "filled": torch.from_numpy(filled)}
        if negs is None:
            out["rows"] = torch.from_numpy(np.flatnonzero(filled))
    else:
        out = {"inp": torch.randint(1, N_ITEMS + 1, (b, length), generator=g),
               "tgt": torch.randint(1, N_ITEMS + 1, (b, length), generator=g)}
        if negs is None:
            out["rows"] = torch.arange(b * length)
    out = {k: v.to(dev) for k, v in out.items()}
    return out | ({"negs": negs} if negs is not None else {})


@pytest.mark.parametrize("model,sets", [
    ("sasrec", {}),
    ("gsasrec", {"negatives_per": "sequence"}),
    ("sasrec", {"loss": "ce", "negatives": 256, "negatives_per": "sequence"}),
    ("bert4rec", {"loss": "gbce", "negatives": 256, "negatives_per": "sequence"}),  # gBERT4Rec
    ("bert4rec", {"batch_size": 16}),  # full softmax over 200k items
])
def test_cuda_memory_estimate_bounds_the_peak(model: str, sets: dict) -> None:
    dev = torch.device("cuda")
    cfg = build_config(model, overrides={"d": 128, "max_len": 200, **sets})
    est = estimate(cfg, N_ITEMS, 0, M, KSUB)  # no dataset on the GPU
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    net = _model(cfg, dev)
    step = LossModule(net, cfg, dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    for i in range(3):
        loss = step(**_batch(cfg, i, dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= est.total, f"{model} {sets}: peak {peak / 2**20:.0f} MiB above the estimate {est.describe()}"


def test_cuda_steps_run_under_bf16_autocast() -> None:
    dev = torch.device("cuda")
    cfg = build_config("sasrec", overrides={"d": 64, "max_len": 50, "batch_size": 32})
    net = _model(cfg, dev)
    batch = _batch(cfg, 0, dev)
    with autocast(dev):
        h = net.hidden(batch["inp"])
    assert h.dtype == torch.bfloat16  # the backbone's matmuls run in bf16
    pred = spec("sasrec").task.predict(net, batch, dev)
    assert pred.h.dtype == torch.float32  # scores and losses in float32
    loss = LossModule(net, cfg, dev)(**batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert net.items.centroids.grad is not None and net.items.centroids.grad.dtype == torch.float32
