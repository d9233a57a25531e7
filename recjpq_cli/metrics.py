"""Ranking metrics from 1-based target ranks (0 = the target was filtered out: a miss). Pure functions."""

from __future__ import annotations

import torch
from torch import Tensor

LONG_TAIL_THRESHOLD = 5


def ndcg_at_k(ranks: Tensor, k: int) -> Tensor:
    """Binary relevance, one target: 1 / log2(rank + 1) when 1 <= rank <= k, else 0. Per user."""
    r = ranks.double()
    hit = (ranks >= 1) & (ranks <= k)
    return torch.where(hit, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))


def recall_at_k(ranks: Tensor, k: int) -> Tensor:
    """= HR@k with one held-out item. Per user."""
    return ((ranks >= 1) & (ranks <= k)).double()


def reciprocal_rank(ranks: Tensor) -> Tensor:
    r = ranks.double()
    return torch.where(ranks >= 1, 1.0 / r.clamp(min=1.0), torch.zeros_like(r))


def per_user(ranks: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """Per-user metric columns: NDCG@k and Recall@k for each k, and RR."""
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"NDCG@{k}"] = ndcg_at_k(ranks, k)
        out[f"Recall@{k}"] = recall_at_k(ranks, k)
    out["RR"] = reciprocal_rank(ranks)
    return out


def summarise(columns: dict[str, Tensor]) -> dict[str, float]:
    """Means of per-user columns; RR's mean is reported as MRR."""
    res = {}
    for name, col in columns.items():
        key = "MRR" if name == "RR" else name
        res[key] = float(col.mean()) if col.numel() else 0.0
    return res
