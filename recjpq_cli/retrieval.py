"""Top-k for serving recommendations: the pruned kernel where it is expected to be faster, else ``ranking``.

``topk`` takes and returns what ``ranking.topk`` does and gives the same lists and scores bit for bit. A JPQ
model on the CPU with at least ``prune.MIN_ITEMS`` items goes to the pruned search of ``jpq/prune.py``, whose
inverted lists are built on the first call and kept on the embedding (rebuilt if its codes change); every
other model, and numba missing or disabled (``RECJPQ_NO_NUMBA=1``), takes ``ranking.topk`` (PQTopK or torch).
``recommend`` (and the server) call this; ``evaluate`` keeps ``ranking.target_ranks``, which needs every score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recjpq_cli import ranking
from recjpq_cli.jpq import prune
from recjpq_cli.jpq.embedding import ItemEmbedding, JPQEmbedding

_CACHE_ATTR = "_prune_index"


def prune_index(items: JPQEmbedding) -> prune.PruneIndex:
    """The embedding's inverted lists, built once and cached on it (keyed by the codes' storage and version)."""
    codes = items.codes
    stamp = (codes.data_ptr(), tuple(codes.shape), codes._version)
    cached = items.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    index = prune.build_index(codes.numpy(), items.ksub)
    items.__dict__[_CACHE_ATTR] = (stamp, index)
    return index


@torch.no_grad()
def topk(items: ItemEmbedding, h: Tensor, k: int, excl_rows: Tensor | None = None,
         excl_items: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (scores, item ids) per row, best first, ties to the lower id: ``ranking.topk``'s results."""
    pruned = isinstance(items, JPQEmbedding) and prune.worthwhile(items.n_items)
    tabs = ranking._fast_tables(items, h) if pruned else None  # None: not a CPU float32 JPQ model
    if tabs is None:
        return ranking.topk(items, h, k, excl_rows, excl_items)
    ranking._check_tables(tabs, items.M)  # non-finite scores are an error, never a ranking
    k = min(k, items.n_items)
    ptr, ex = ranking._csr(h.shape[0], excl_rows, excl_items)
    scores, ids, _ = prune.search(tabs.numpy(), items.codes.numpy(), prune_index(items), k, ptr, ex)
    return torch.from_numpy(scores), torch.from_numpy(ids)
