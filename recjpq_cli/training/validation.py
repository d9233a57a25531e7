"""Validation during training: NDCG@10 / Recall@10 over the whole catalogue on a fixed, seeded sample of
validation users, through the one scoring loop that ``evaluate --split val`` uses (``scoring.ranks``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recjpq_cli import distributed as dist
from recjpq_cli import scoring
from recjpq_cli.data import sequences
from recjpq_cli.data.schema import Dataset
from recjpq_cli.metrics import ndcg_at_k, recall_at_k

TARGET_METRIC = "NDCG@10"
VAL_BATCH = 256


def sample_users(ds: Dataset, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation users (and their target positions) a run validates on: all, or a seeded sample of n.
    The same draw as ``evaluate --split val --sample-users n --seed seed``."""
    users, pos = sequences.eval_targets(ds, "val")
    if len(users) > n:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), n, replace=False))
        users, pos = users[pick], pos[pick]
    return users, pos


class Validator:
    """NDCG@10 / Recall@10 of a model on this process's share of the validation sample (all-reduced)."""

    def __init__(self, ds: Dataset, cfg: Any, device: torch.device, rank: int = 0, world: int = 1):
        users, pos = sample_users(ds, cfg.val_users, cfg.seed)
        self.users, self.pos = users[rank::world], pos[rank::world]
        self.ds, self.cfg, self.device = ds, cfg, device

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        ranks = torch.from_numpy(scoring.ranks(model, self.ds, self.users, self.pos, max_len=self.cfg.max_len,
                                               batch_size=VAL_BATCH, device=self.device, filter_seen=True))
        sums = torch.zeros(3, dtype=torch.float64)
        for s in range(0, len(ranks), VAL_BATCH):  # summed per batch, as the figures were always summed
            r = ranks[s:s + VAL_BATCH]
            sums += torch.stack([ndcg_at_k(r, 10).sum(), recall_at_k(r, 10).sum(),
                                 torch.tensor(float(len(r)), dtype=torch.float64)])
        sums = dist.all_reduce_sum(sums, self.device)
        n = max(1.0, float(sums[2]))
        return {"NDCG@10": float(sums[0]) / n, "Recall@10": float(sums[1]) / n}
