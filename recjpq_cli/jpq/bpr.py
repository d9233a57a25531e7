"""BPR matrix factorisation for code assignment, in vectorised mini-batches on CPU.

Score ``x_ui = p_u . q_i + b_i``; each training interaction (u, i) is paired with one uniformly drawn
item j and the loss is ``softplus(-(x_ui - x_uj))`` (= -log sigmoid). Updates are per-example Adagrad
(LightFM's default schedule, learning rate 0.05, no regularisation) with analytic gradients applied by
``index_add_``: no autograd and no full-table optimiser state, so one step costs O(batch x M) however
large the catalogue. Seeded with an explicit ``torch.Generator``.

Training runs on one intra-op thread (restored afterwards): the ops are small (batch x M), a second
thread gained nothing when measured, and it made steps up to 20x slower while another process used
the other core. One thread also makes the factors independent of the machine's thread count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from recjpq_cli.jpq.types import ProgressFn, TrainData

BATCH = 65536
LEARNING_RATE = 0.05
INIT_STD = 0.1
EPS = 1e-8


def _adagrad_(param: torch.Tensor, acc: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
    """Row-wise Adagrad: ``acc[r] += mean(g^2)``, ``param[r] -= lr * g / sqrt(acc[r])``; repeats add up."""
    g2 = grad.square() if grad.dim() == 1 else grad.square().mean(dim=1)  # (B,)
    acc.index_add_(0, rows, g2)
    scale = LEARNING_RATE / (acc[rows] + EPS).sqrt()  # (B,)
    param.index_add_(0, rows, grad * (scale if grad.dim() == 1 else scale[:, None]), alpha=-1.0)


def train_bpr(train: TrainData, *, M: int, epochs: int, seed: int,
              on_epoch: ProgressFn | None = None, batch: int = BATCH) -> tuple[np.ndarray, float]:
    """Item factors ``(n_items, M)`` (item 1 in row 0) and the mean BPR loss of the last epoch."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(train, M=M, epochs=epochs, seed=seed, on_epoch=on_epoch, batch=batch)
    finally:
        torch.set_num_threads(threads)


def _train(train: TrainData, *, M: int, epochs: int, seed: int,
           on_epoch: ProgressFn | None, batch: int) -> tuple[np.ndarray, float]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    user = torch.from_numpy(np.ascontiguousarray(train.user, dtype=np.int64))
    item = torch.from_numpy(np.ascontiguousarray(train.item, dtype=np.int64))
    n, n_items = user.numel(), train.n_items
    P = torch.randn(train.n_users, M, generator=g) * INIT_STD  # (U, M)
    Q = torch.randn(n_items + 1, M, generator=g) * INIT_STD  # (I+1, M), row 0 padding, never drawn
    b = torch.zeros(n_items + 1)  # (I+1,)
    acc_p, acc_q, acc_b = torch.zeros(train.n_users), torch.zeros(n_items + 1), torch.zeros(n_items + 1)
    loss = float("nan")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            u, i = user[idx], item[idx]  # (B,)
            j = torch.randint(1, n_items + 1, (idx.numel(),), generator=g)  # (B,) uniform negatives
            pu, d = P[u], Q[i] - Q[j]  # (B, M)
            x = (pu * d).sum(dim=1) + b[i] - b[j]  # (B,)
            total += F.softplus(-x).sum(dtype=torch.float64)
            gx = -torch.sigmoid(-x)  # d loss / d x
            gi = gx[:, None] * pu  # (B, M)
            rows = torch.cat([i, j])
            _adagrad_(P, acc_p, u, gx[:, None] * d)
            _adagrad_(Q, acc_q, rows, torch.cat([gi, -gi]))
            _adagrad_(b, acc_b, rows, torch.cat([gx, -gx]))
        loss = float(total) / max(n, 1)
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, loss)
    return Q[1:].numpy().astype(np.float64), loss
