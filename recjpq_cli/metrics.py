"""Ranking metrics from 1-based target ranks (0 = the target was filtered out: a miss). Pure functions.

Also the long-tail rule, defined once: an item is long-tail when it has fewer than ``LONG_TAIL_THRESHOLD``
training interactions (prepare's statistics, evaluate's long-tail slice, the tables that show them). This module
uses only Tensor methods, so ``prepare`` can read the threshold without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

LONG_TAIL_THRESHOLD = 5


def ndcg_at_k(ranks: Tensor, k: int) -> Tensor:
    """Binary relevance, one target: 1 / log2(rank + 1) when 1 <= rank <= k, else 0. Per user."""
    r = ranks.double()
    hit = (ranks >= 1) & (ranks <= k)
    return (1.0 / (r + 1.0).log2()).where(hit, 0.0)


def recall_at_k(ranks: Tensor, k: int) -> Tensor:
    """= HR@k with one held-out item. Per user."""
    return ((ranks >= 1) & (ranks <= k)).double()


def reciprocal_rank(ranks: Tensor) -> Tensor:
    r = ranks.double()
    return (1.0 / r.clamp(min=1.0)).where(ranks >= 1, 0.0)


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
