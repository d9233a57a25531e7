"""Full-catalogue ranking over any item embedding, in item chunks.

Memory stays bounded by batch x (chunk + k): the (batch, n_items) score matrix never exists for
large catalogues. Ties go to the lower item id. Used by train (validation), evaluate and recommend.

JPQ models on the CPU take the compiled PQTopK path (``jpq/pqtopk.py``) when numba is present: the same
float32 sums in the same order, so the same ranks and lists, without any (batch, chunk) score matrix.

Non-finite scores (NaN compares false, so a NaN model would rank every target first) raise NonFiniteError;
the check is a device flag read once per call, or a bound on the compiled path's tables.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recjpq_cli.errors import NonFiniteError
from recjpq_cli.jpq import pqtopk
from recjpq_cli.jpq.embedding import ItemEmbedding, JPQEmbedding

DEFAULT_CHUNK = 65_536
NON_FINITE = ("scores are not finite (NaN or inf): the model's outputs overflowed or it diverged, so it "
              "cannot rank items; train again with a lower learning rate")
_F32_MAX = torch.finfo(torch.float32).max


def _check_tables(tabs: Tensor, m: int) -> None:
    """The compiled path sums M table entries per item: every sum is finite when each |entry| < max / M."""
    if tabs.numel() and not bool(tabs.abs().amax() < _F32_MAX / m):
        raise NonFiniteError(NON_FINITE)


def _check_ok(ok: Tensor) -> None:
    """``ok``: a device flag AND-ed over every score chunk, read once per call (one host sync)."""
    if not bool(ok):
        raise NonFiniteError(NON_FINITE)


def _mask_chunk(scores: Tensor, start: int, end: int, excl_rows: Tensor | None, excl_items: Tensor | None) -> None:
    """Set padding (id 0) and excluded (row, item) pairs inside [start, end) to -inf, in place."""
    if start == 0:
        scores[:, 0] = float("-inf")
    if excl_rows is not None and excl_items is not None and excl_rows.numel():
        sel = (excl_items >= start) & (excl_items < end)
        scores[excl_rows[sel], excl_items[sel] - start] = float("-inf")


def _fast_tables(items: ItemEmbedding, h: Tensor) -> Tensor | None:
    """The (B, M * ksub) float32 sub-item score tables when the compiled PQ path applies, else None."""
    if not isinstance(items, JPQEmbedding) or h.device.type != "cpu" or not pqtopk.available():
        return None
    prep = items.prepare(h)
    if prep.dtype != torch.float32 or items.codes.device.type != "cpu":
        return None
    return prep.contiguous()


def _csr(b: int, excl_rows: Tensor | None, excl_items: Tensor | None):
    if excl_rows is None or excl_items is None:
        return pqtopk.exclusions_csr(b, None, None)
    return pqtopk.exclusions_csr(b, excl_rows.numpy(), excl_items.numpy())


@torch.no_grad()
def target_ranks(items: ItemEmbedding, h: Tensor, targets: Tensor, excl_rows: Tensor | None = None,
                 excl_items: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """1-based rank of each row's target among all items (ties to the lower id).

    Excluded (row, item) pairs are removed from the ranking; a target that is itself excluded gets rank 0
    (a miss). h (B, d), targets (B,) -> (B,) int64.
    """
    b = h.shape[0]
    dev = h.device
    tabs = _fast_tables(items, h)
    if tabs is not None:
        _check_tables(tabs, items.M)
        ptr, ex = _csr(b, excl_rows, excl_items)
        return torch.from_numpy(pqtopk.ranks(tabs.numpy(), items.codes.numpy(), targets.numpy(), ptr, ex))
    prep = items.prepare(h)
    t_score = torch.empty(b, dtype=prep.dtype, device=dev)
    n = items.n_items + 1
    # Target scores from the same kernel as the chunk scores, so a target never outranks itself.
    order = torch.argsort(targets)
    ts = targets[order]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lo, hi = torch.searchsorted(ts, torch.tensor([s, e], device=dev)).tolist()
        if hi > lo:
            rows = order[lo:hi]
            sc = items.score_range(prep[rows], s, e)
            t_score[rows] = sc.gather(1, (ts[lo:hi] - s)[:, None])[:, 0]
    greater = torch.zeros(b, dtype=torch.long, device=dev)
    arange = torch.arange(b, device=dev)
    ok = torch.ones((), dtype=torch.bool, device=dev)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        sc = items.score_range(prep, s, e)
        ok &= torch.isfinite(sc[:, 1:] if s == 0 else sc).all()
        _mask_chunk(sc, s, e, excl_rows, excl_items)
        ids = torch.arange(s, e, device=dev)
        beats = (sc > t_score[:, None]) | ((sc == t_score[:, None]) & (ids[None, :] < targets[:, None]))
        in_chunk = (targets >= s) & (targets < e)
        beats[arange[in_chunk], targets[in_chunk] - s] = False
        greater += beats.sum(1)
    _check_ok(ok)
    ranks = greater + 1
    if excl_rows is not None and excl_items is not None and excl_rows.numel():
        filtered = torch.zeros(b, dtype=torch.bool, device=dev)
        filtered[excl_rows[excl_items == targets[excl_rows]]] = True
        ranks = torch.where(filtered, torch.zeros_like(ranks), ranks)
    return ranks


def _sort_key(scores: Tensor, ids: Tensor) -> Tensor:
    """An int64 key ordering by score descending, then id ascending (exact, no float ties)."""
    bits = scores.float().contiguous().view(torch.int32).long()
    mono = torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)  # order-preserving int for float32
    return (mono << 32) | (0xFFFFFFFF - ids)


@torch.no_grad()
def topk(items: ItemEmbedding, h: Tensor, k: int, excl_rows: Tensor | None = None,
         excl_items: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Top-k (scores, item ids) per row over the whole catalogue, best first; ties to the lower id."""
    b = h.shape[0]
    dev = h.device
    k = min(k, items.n_items)
    tabs = _fast_tables(items, h)
    if tabs is not None:
        _check_tables(tabs, items.M)
        ptr, ex = _csr(b, excl_rows, excl_items)
        scores, ids = pqtopk.topk(tabs.numpy(), items.codes.numpy(), k, ptr, ex)
        return torch.from_numpy(scores), torch.from_numpy(ids)
    prep = items.prepare(h)
    n = items.n_items + 1
    best_key = torch.full((b, 0), 0, dtype=torch.long, device=dev)
    best_score = torch.empty((b, 0), dtype=torch.float32, device=dev)
    ok = torch.ones((), dtype=torch.bool, device=dev)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        sc = items.score_range(prep, s, e).float()
        ok &= torch.isfinite(sc[:, 1:] if s == 0 else sc).all()
        _mask_chunk(sc, s, e, excl_rows, excl_items)
        ids = torch.arange(s, e, device=dev).expand(b, -1)
        key = _sort_key(sc, ids)
        kk = min(k, e - s)
        ck, ci = key.topk(kk, dim=1)
        cand_key = torch.cat([best_key, ck], dim=1)
        cand_score = torch.cat([best_score, sc.gather(1, ci)], dim=1)
        top_key, pos = cand_key.topk(min(k, cand_key.shape[1]), dim=1)
        best_key, best_score = top_key, cand_score.gather(1, pos)
    _check_ok(ok)
    best_ids = 0xFFFFFFFF - (best_key & 0xFFFFFFFF)
    return best_score, best_ids
