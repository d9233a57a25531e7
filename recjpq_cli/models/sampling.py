"""Negatives for a run: uniform or popularity-proportional draws, built once per run.

The draws come from ``negatives.py``'s counter-based hash of (seed, step, user, position, j), so a resumed
or distributed run draws what a plain run draws. Popularity sampling needs the training counts' cumulative
table, made once here and kept on the device; ``log_q`` (log-probability of each item id being drawn) is what
the sampled softmax's logQ correction subtracts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from recjpq_cli import negatives
from recjpq_cli.device import to_device

if TYPE_CHECKING:
    from recjpq_cli.config import TrainConfig
    from recjpq_cli.data.schema import Dataset


@dataclass
class Sampler:
    cfg: TrainConfig
    n_items: int
    cum_counts: Tensor | None = None  # popularity: cumulative training counts of items 1..n_items
    log_q: Tensor | None = None  # (n_items + 1,) log-probability of each id as a negative, for logQ

    def draw(self, step: int, users: np.ndarray, length: int, device: torch.device) -> Tensor | None:
        """(B, length, K) per position or (B, K) per sequence; None without negatives."""
        cfg = self.cfg
        if cfg.negatives == 0:
            return None
        u = to_device(torch.from_numpy(users), device)
        per_position = cfg.negatives_per == "position"
        if self.cum_counts is not None:
            return negatives.popularity_negatives(cfg.seed, step, u, length, cfg.negatives, self.cum_counts,
                                                  per_position)
        return negatives.uniform_negatives(cfg.seed, step, u, length, cfg.negatives, self.n_items,
                                           per_position=per_position)


def sampler(cfg: TrainConfig, ds: Dataset, device: torch.device) -> Sampler:
    """The run's sampler: the popularity table only when asked. Uniform sampling needs no ``log_q``: the
    correction subtracts it from every logit, positive included, so a constant q changes nothing."""
    s = Sampler(cfg=cfg, n_items=ds.n_items)
    if cfg.negatives and cfg.negative_sampling == "popularity":
        cum, log_q = negatives.popularity_table(torch.from_numpy(ds.train_counts().astype(np.int64)))
        s.cum_counts = cum.to(device)
        s.log_q = log_q.to(device) if cfg.resolved_logq() else None
    return s
