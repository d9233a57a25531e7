"""Post-hoc product quantisation of a trained dense item table (``compress --from-dense``).

k-means with ``ksub`` centroids in each of the ``M`` sub-spaces of size ``dsub = d / M``, all sub-spaces at
once: the assignment step is one batched matmul per item chunk, ``(M, chunk, dsub) x (M, dsub, ksub)``, and
the update is one ``index_add_`` over the flat ``(M * ksub)`` centroid table. Seeded; no loop over items.

The result plugs into ``JPQEmbedding`` (codes ``(n_items + 1, M)`` with padding row 0, centroids
``(M, ksub, dsub)``). A dense model with untied input and output tables gets one PQ per table:
``PQInputJPQ`` scores with the output table's codes and embeds inputs with the input table's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from recjpq_cli.jpq.codebook import codes_torch_dtype
from recjpq_cli.jpq.embedding import JPQEmbedding

if TYPE_CHECKING:
    from recjpq_cli.jpq.types import StepFn

# The assignment step's distance block holds at most this many floats (M x rows x ksub): 256 MiB.
KMEANS_BLOCK_FLOATS = 64 * 2**20
# As faiss: k-means trains on at most this many rows per centroid; then every row is assigned once.
MAX_POINTS_PER_CENTROID = 256
# k-means++ seeding looks at this many rows per centroid (its cost is ksub passes over them).
SEED_POINTS_PER_CENTROID = 32
# Above this many centroids per split, seeding is ksub distinct random rows (faiss's default) instead of
# k-means++, whose ksub sequential passes over the rows take minutes once ksub is in the thousands.
KMEANS_PP_MAX_KSUB = 1024


def _assign(x: Tensor, cents: Tensor, chunk: int | None = None) -> Tensor:
    """Nearest centroid per sub-space: x (M, n, dsub), cents (M, ksub, dsub) -> (M, n) int64.

    Rows go in blocks of ``chunk`` (default: as many as keep the distance block under KMEANS_BLOCK_FLOATS).
    """
    m_splits, ksub = cents.shape[0], cents.shape[1]
    chunk = chunk or max(1, KMEANS_BLOCK_FLOATS // (m_splits * ksub))
    c_sq = (cents * cents).sum(-1)[:, None, :]  # (M, 1, ksub)
    c_t = cents.transpose(1, 2).contiguous()  # (M, dsub, ksub)
    out = torch.empty(x.shape[0], x.shape[1], dtype=torch.long)
    for s in range(0, x.shape[1], chunk):
        dist = torch.baddbmm(c_sq, x[:, s:s + chunk], c_t, alpha=-2.0)  # (M, c, ksub), ||x||^2 dropped
        out[:, s:s + chunk] = dist.argmin(-1)
    return out


def _kmeans_pp(x: Tensor, ksub: int, g: torch.Generator) -> Tensor:
    """k-means++ seeding in every sub-space at once: x (M, n, dsub) -> (M, ksub, dsub).

    Each next centroid is drawn with probability proportional to the squared distance to the nearest one so
    far, by inverse CDF (cumulative sum + binary search) in float64; when every row is covered, uniformly.
    """
    m_splits, n, _ = x.shape
    ar = torch.arange(m_splits)
    cents = torch.empty(m_splits, ksub, x.shape[2], dtype=x.dtype)
    cents[:, 0] = x[ar, torch.randint(0, n, (m_splits,), generator=g)]
    d2 = ((x - cents[:, :1]) ** 2).sum(-1)  # (M, n)
    for j in range(1, ksub):  # over centroids: ksub sequential draws
        cum = torch.cumsum(d2.double(), 1)  # (M, n)
        total = cum[:, -1:]
        u = torch.rand(m_splits, 1, generator=g, dtype=torch.float64) * total
        nxt = torch.searchsorted(cum, u)[:, 0].clamp(max=n - 1)
        uniform = torch.randint(0, n, (m_splits,), generator=g)
        nxt = torch.where(total[:, 0] > 0, nxt, uniform)
        cents[:, j] = x[ar, nxt]
        torch.minimum(d2, ((x - cents[:, j:j + 1]) ** 2).sum(-1), out=d2)
    return cents


def _random_rows(x: Tensor, ksub: int, g: torch.Generator) -> Tensor:
    """ksub distinct random rows per sub-space: x (M, n, dsub) -> (M, ksub, dsub)."""
    pick = torch.rand(x.shape[0], x.shape[1], generator=g).argsort(1)[:, :ksub]  # (M, ksub)
    return torch.gather(x, 1, pick.unsqueeze(-1).expand(-1, -1, x.shape[2]))


# Rows of the table turned into (M, rows, dsub) at a time for the final assignment of every row.
ASSIGN_ROWS = 65536



def _splits(rows: Tensor, M: int) -> Tensor:
    """(n, d) rows -> (M, n, dsub) contiguous float32: sub-space m holds columns m*dsub .. (m+1)*dsub - 1."""
    n, d = rows.shape
    return rows.float().reshape(n, M, d // M).transpose(0, 1).contiguous()


def _assign_all(table: Tensor, cents: Tensor, chunk: int | None, on_step: StepFn | None) -> Tensor:
    """Nearest centroids (M, n) of every row of ``table`` (n, d), ASSIGN_ROWS rows at a time: no full copy."""
    n, M = table.shape[0], cents.shape[0]
    out = torch.empty(M, n, dtype=torch.long)
    blocks = max(1, -(-n // ASSIGN_ROWS))
    for b, s in enumerate(range(0, n, ASSIGN_ROWS)):
        out[:, s:s + ASSIGN_ROWS] = _assign(_splits(table[s:s + ASSIGN_ROWS], M), cents, chunk)
        if on_step is not None:
            on_step("assignment", b + 1, blocks)
    return out


@torch.no_grad()
def kmeans_pq(table: Tensor, *, M: int, ksub: int, iters: int = 20, seed: int = 0,
              chunk: int | None = None, on_step: StepFn | None = None) -> tuple[Tensor, Tensor]:
    """Product-quantise rows of ``table`` (n, d): codes (n, M) int64 and centroids (M, ksub, d / M) float32.

    Trains on a seeded sample of at most ``256 * ksub`` rows (as faiss), then assigns every row in blocks
    (``table`` may be a strided view; it is never copied whole). Centroids start from k-means++ seeding
    (ksub <= 1,024) or ksub distinct random rows (more); an emptied centroid is moved to a random row.
    Training stops early when no assignment changes. ``on_step`` hears each iteration and block.
    """
    n, d = table.shape
    if d % M:
        raise ValueError(f"d={d} is not divisible by M={M}")
    dsub = d // M
    g = torch.Generator().manual_seed(seed)
    table = table.detach().cpu()
    n_train = min(n, MAX_POINTS_PER_CENTROID * ksub)
    sampled = n_train < n
    x = _splits(table[torch.randperm(n, generator=g)[:n_train]] if sampled else table, M)  # (M, n_train, dsub)
    n = n_train
    if ksub <= KMEANS_PP_MAX_KSUB:
        n_seed = min(n, SEED_POINTS_PER_CENTROID * ksub)
        cents = _kmeans_pp(x[:, torch.randperm(n, generator=g)[:n_seed]], ksub, g)  # (M, ksub, dsub)
    else:
        cents = _random_rows(x, ksub, g)
    offsets = (torch.arange(M) * ksub)[:, None]  # (M, 1)
    codes = _assign(x, cents, chunk)
    for it in range(iters):
        flat = (codes + offsets).reshape(-1)  # (M * n,)
        sums = torch.zeros(M * ksub, dsub).index_add_(0, flat, x.reshape(M * n, dsub))
        counts = torch.bincount(flat, minlength=M * ksub).float()
        empty = counts == 0
        new = sums / counts.clamp(min=1.0)[:, None]
        if bool(empty.any()):
            refill = torch.randint(0, n, (int(empty.sum()),), generator=g)
            which_m = torch.nonzero(empty)[:, 0] // ksub
            new[empty] = x[which_m, refill]
        cents = new.reshape(M, ksub, dsub)
        new_codes = _assign(x, cents, chunk)
        changed = bool((new_codes != codes).any())
        codes = new_codes
        if on_step is not None:
            on_step("k-means", it + 1, iters)
        if not changed:
            break
    if sampled:
        del x
        codes = _assign_all(table, cents, chunk, on_step)
    return codes.T.contiguous(), cents


def objective(table: Tensor, codes: Tensor, cents: Tensor) -> float:
    """The k-means objective: mean over rows of the squared distance to their centroids, summed over splits."""
    M, total = cents.shape[0], 0.0
    for s in range(0, table.shape[0], ASSIGN_ROWS):
        x = _splits(table[s:s + ASSIGN_ROWS], M)  # (M, c, dsub)
        c = codes[s:s + ASSIGN_ROWS].T.long()  # (M, c)
        near = torch.gather(cents, 1, c.unsqueeze(-1).expand(-1, -1, cents.shape[2]))
        total += float(((x - near) ** 2).sum(dtype=torch.float64))
    return total / max(1, table.shape[0])


def pq_embedding(table: Tensor, *, M: int, ksub: int, iters: int, seed: int,
                 extra: Tensor | None = None) -> JPQEmbedding:
    """A JPQEmbedding whose items 1..n are the PQ of ``table[1:]`` (row 0 is padding); ``extra`` rows
    (BERT4Rec's mask token) are kept as they are."""
    codes, cents = kmeans_pq(table[1:], M=M, ksub=ksub, iters=iters, seed=seed)
    full = torch.zeros(table.shape[0], M, dtype=codes_torch_dtype(ksub))
    full[1:] = codes.to(full.dtype)
    n_extra = 0 if extra is None else extra.shape[0]
    emb = JPQEmbedding(codes=full, ksub=ksub, d=table.shape[1], extra_tokens=n_extra)
    with torch.no_grad():
        emb.centroids.copy_(cents)
        if extra is not None:
            emb.extra.copy_(extra)
    return emb


class PQInputJPQ(JPQEmbedding):
    """Two PQ tables for a model trained with untied dense tables: this module's own codes and centroids are
    the output table's (they score items, so ranking's fast path applies); ``input_pq`` embeds the inputs."""

    def __init__(self, *, codes: Tensor, ksub: int, d: int, input_codes: Tensor, extra_tokens: int = 0):
        super().__init__(codes=codes, ksub=ksub, d=d)
        self.input_pq = JPQEmbedding(codes=input_codes, ksub=ksub, d=d, extra_tokens=extra_tokens)

    def forward(self, ids: Tensor) -> Tensor:
        return self.input_pq(ids)
