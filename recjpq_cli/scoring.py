"""The one scoring loop: users' histories -> ranks of their targets, or top-k lists, over the whole catalogue.

Training's validation, ``evaluate`` and ``recommend`` all go through it, so they encode with the same
precision (``device.autocast``: bf16 on CUDA, float32 on the CPU) and rank with the same kernels
(``ranking.target_ranks``; ``retrieval.topk`` for lists). A user's history is the sequence before ``ends``
(exclusive), its last ``max_len`` items; with ``filter_seen`` the history's items leave the ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from recjpq_cli.data import sequences
from recjpq_cli.data.schema import Dataset
from recjpq_cli.device import autocast

Advance = Callable[[int], None]


@torch.no_grad()
def encode(model: nn.Module, histories: Tensor, device: torch.device) -> Tensor:
    """(B, T) left-padded histories (on any device) -> (B, d) float32 query states on ``device``."""
    with autocast(device):
        h = model.encode(histories.to(device))
    return h.float()


def _batches(model: nn.Module, ds: Dataset, users: np.ndarray, ends: np.ndarray, *, max_len: int,
             batch_size: int, device: torch.device, filter_seen: bool,
             advance: Advance | None) -> Iterator[tuple[int, Tensor, Tensor | None, Tensor | None]]:
    """(start, query states, excluded rows, excluded items) per batch of users, in eval mode."""
    was = model.training
    model.eval()
    try:
        for s in range(0, len(users), batch_size):
            u, e = users[s:s + batch_size], ends[s:s + batch_size]
            h = encode(model, sequences.histories(ds, u, e, max_len), device)
            rows = items = None
            if filter_seen:
                rows, items = (t.to(device) for t in sequences.seen_items(ds, u, e))
            yield s, h, rows, items
            if advance is not None:
                advance(len(u))
    finally:
        model.train(was)


@torch.no_grad()
def ranks(model: nn.Module, ds: Dataset, users: np.ndarray, pos: np.ndarray, *, max_len: int, batch_size: int,
          device: torch.device, filter_seen: bool = True, advance: Advance | None = None) -> np.ndarray:
    """1-based rank of each user's item at ``pos`` among all items (0: filtered out, a miss), from the
    history before it."""
    from recjpq_cli.ranking import target_ranks

    out = np.empty(len(users), dtype=np.int64)
    for s, h, rows, items in _batches(model, ds, users, pos, max_len=max_len, batch_size=batch_size,
                                      device=device, filter_seen=filter_seen, advance=advance):
        tgt = torch.from_numpy(ds.item[pos[s:s + len(h)]].astype(np.int64)).to(device)
        out[s:s + len(h)] = target_ranks(model.items, h, tgt, rows, items).cpu().numpy()
    return out


@torch.no_grad()
def top_k(model: nn.Module, ds: Dataset, users: np.ndarray, ends: np.ndarray, k: int, *, max_len: int,
          batch_size: int, device: torch.device, filter_seen: bool = True,
          advance: Advance | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U, k) item ids and scores per user, best first; -inf marks slots with no item left to recommend."""
    from recjpq_cli.retrieval import topk  # pruned top-k on large JPQ catalogues, else ranking.topk

    k = min(k, ds.n_items)
    ids = np.empty((len(users), k), dtype=np.int64)
    scores = np.empty((len(users), k), dtype=np.float32)
    for s, h, rows, items in _batches(model, ds, users, ends, max_len=max_len, batch_size=batch_size,
                                      device=device, filter_seen=filter_seen, advance=advance):
        sc, it = topk(model.items, h, k, rows, items)
        ids[s:s + len(h)], scores[s:s + len(h)] = it.cpu().numpy(), sc.float().cpu().numpy()
    return ids, scores
