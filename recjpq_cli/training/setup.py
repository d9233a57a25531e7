"""Setting a run up: a new run's config from the request, its codes and starting centroids, the memory check
that refuses a run before allocating it, the model and its optimiser."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from recjpq_cli.config import DEFAULT_MODEL, TrainConfig, build_config
from recjpq_cli.errors import ConfigError, InputError, OutputExistsError, ResourceError
from recjpq_cli.jpq.codebook import codes_to_torch
from recjpq_cli.memory import GIB, available_bytes, estimate


def resolve_new(req: Any) -> tuple[TrainConfig, Path | None, None, None]:
    """A new run's config and codes path (no sidecar or checkpoint yet)."""
    run = req.out
    if run.exists() and not req.overwrite:
        raise OutputExistsError(f"{run}: run folder already exists (use --resume to continue it or --overwrite)")
    above = next(p for p in run.absolute().parents if p.exists())  # missing folders are made with the run
    if not above.is_dir():
        raise InputError(f"{above}: is not a folder, so it cannot hold the run folder {run}")
    embedding = req.embedding or ("jpq" if req.codes is not None else None)
    if embedding is None:
        raise ConfigError("give --codes CODES.npy for RecJPQ embeddings, or --embedding full for the dense baseline")
    if embedding == "jpq" and req.codes is None:
        raise ConfigError("--embedding jpq needs --codes CODES.npy (make one with `recjpq assign`)")
    if embedding == "full" and req.codes is not None:
        raise ConfigError("--codes cannot be combined with --embedding full")
    flags = {"embedding": embedding, "patience": req.patience}
    cfg = build_config(req.model or DEFAULT_MODEL, config_file=req.config_file, overrides=req.overrides, flags=flags)
    return cfg, req.codes, None, None


def load_codes(cfg: TrainConfig, codes_path: Path | None, meta: dict[str, Any]) -> tuple[torch.Tensor | None, dict | None]:
    """The codes as a tensor and their sidecar (None, None for dense embeddings)."""
    if cfg.embedding != "jpq":
        return None, None
    from recjpq_cli.data.codes import load_codes as read

    assert codes_path is not None
    codes, side = read(Path(codes_path), meta)
    m = codes.shape[1]
    if cfg.d % m:
        raise ConfigError(f"d={cfg.d} is not divisible by the code length M={m} of {codes_path}")
    return codes_to_torch(codes), side


def load_init_centroids(cfg: TrainConfig, codes_path: Path | None, side: dict | None) -> torch.Tensor | None:
    """The svd-kmeans starting centroids, rescaled to the uniform init's std; None when there are none to use."""
    if side is None or codes_path is None or not cfg.init_centroids:
        return None
    from recjpq_cli.data.codes import load_init_centroids as read

    c = read(Path(codes_path), side)
    if c is None:
        return None
    d = c.shape[0] * c.shape[2]
    if d != cfg.d:
        raise ConfigError(f"{codes_path}: its initial centroids were made for d={d} (assign --dim), this run has "
                          f"d={cfg.d}; train with --set d={d}, assign again with --dim {cfg.d}, or pass "
                          f"--set init_centroids=false")
    t = torch.from_numpy(c)
    std = float(t.std())
    return t * (cfg.centroid_init / math.sqrt(3.0) / std) if std > 0 else t


def check_memory(cfg: TrainConfig, meta: dict[str, Any], codes: torch.Tensor | None, ksub: int | None,
                 device: torch.device) -> None:
    """Refuse a run whose estimate exceeds the free memory, naming what to change."""
    est = estimate(cfg, int(meta["n_items"]), int(meta["n_interactions"]),
                   codes.shape[1] if codes is not None else None, ksub)
    free = available_bytes(str(device))
    if est.total > free:
        if cfg.loss == "ce" and cfg.negatives == 0:  # the full softmax: (positions x n_items) logits
            hint = ("the full softmax scores every item at every predicted position; train against sampled "
                    "negatives: --set loss=gbce --set negatives=256 (or --set negatives=256 for sampled softmax)")
        elif cfg.embedding == "full":
            hint = "train with RecJPQ codes (--codes) instead of --embedding full"
        else:
            hint = "lower batch_size, max_len or negatives with --set"
        raise ResourceError(f"this run needs about {est.describe()}, but only {free / GIB:.1f} GiB is free on "
                            f"{device}; {hint}")


def check_negatives(cfg: TrainConfig, meta: dict[str, Any], dataset: Path) -> None:
    """A run cannot draw more negatives than there are items."""
    n = int(meta["n_items"])
    if cfg.negatives > n:
        raise ConfigError(f"negatives={cfg.negatives:,} is more than the {n:,} items of {dataset}; "
                          f"lower it with --set negatives=N (N <= {n:,})")


def optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, with ``item_lr`` for the item embedding's parameters."""
    item_params = list(model.items.parameters())
    ids = {id(p) for p in item_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids]},
              {"params": item_params, "lr": cfg.item_lr if cfg.item_lr is not None else cfg.lr}]
    # On CUDA the fused kernel (same update maths, one launch); on the CPU torch's default loop, whose
    # results every earlier run and test was measured with.
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
