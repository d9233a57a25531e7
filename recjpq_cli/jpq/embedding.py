"""Item embeddings with one interface: RecJPQ (codes + shared centroids) and the dense baseline.

Both embed inputs with ``forward(ids)`` and score outputs with ``score`` / ``score_all`` /
``prepare`` + ``score_range`` (the chunked path used by ranking). PQ names follow faiss:
``M`` splits, ``ksub`` centroids per split, ``dsub = d // M``, centroids shaped ``(M, ksub, dsub)``.

Ids: 0 is padding (embeds to zeros, never scored), 1..n_items are items, and ids above n_items are
extra input-only tokens (BERT4Rec's mask token), each with a learned vector of its own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEFAULT_CHUNK = 65_536
# At most this many candidates per position are embedded directly; more go through the sub-item table.
DIRECT_CANDIDATES = 4
# Dense scoring of many candidates embeds this many at a time: (..., chunk, d), never (..., C, d).
DENSE_CANDIDATE_CHUNK = 8


class ItemEmbedding(nn.Module):
    """Shared interface of item embedders."""

    n_items: int
    d: int

    def prepare(self, h: Tensor) -> Tensor:  # (B, d) -> whatever score_range needs
        raise NotImplementedError

    def score_range(self, prepared: Tensor, start: int, end: int) -> Tensor:  # -> (B, end - start)
        raise NotImplementedError

    def score(self, h: Tensor, ids: Tensor) -> Tensor:  # h (..., d), ids (..., C) -> (..., C)
        raise NotImplementedError

    def reconstruct(self) -> Tensor:  # (n_items + 1, d) output table; small catalogues and tests only
        raise NotImplementedError

    def score_all(self, h: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
        """Scores of every id 0..n_items for each row of h: (B, d) -> (B, n_items + 1).

        Column 0 (padding) is 0, so the result equals ``h @ reconstruct().T``.
        """
        prep = self.prepare(h)
        n = self.n_items + 1
        out = torch.cat([self.score_range(prep, s, min(s + chunk, n)) for s in range(0, n, chunk)], dim=1)
        out[:, 0] = 0.0
        return out

    def score_shared(self, h: Tensor, ids: Tensor) -> Tensor:
        """Candidates shared by all positions of a sequence: h (B, L, d), ids (B, K) -> (B, L, K)."""
        e = self.output_embed(ids)  # (B, K, d)
        return torch.bmm(h, e.transpose(1, 2))

    def output_embed(self, ids: Tensor) -> Tensor:
        raise NotImplementedError


def _pad_mask(ids: Tensor, emb: Tensor) -> Tensor:
    return emb * (ids != 0).unsqueeze(-1).to(emb.dtype)


class JPQEmbedding(ItemEmbedding):
    """RecJPQ: item i = concat_k centroids[k, codes[i, k]]; the centroids are the only item parameters."""

    def __init__(self, *, codes: Tensor, ksub: int, d: int, extra_tokens: int = 0, init_range: float = 0.05):
        super().__init__()
        n_rows, m = codes.shape
        if d % m:
            raise ValueError(f"d={d} is not divisible by M={m}")
        self.n_items, self.M, self.ksub, self.d, self.dsub = n_rows - 1, m, ksub, d, d // m
        self.register_buffer("codes", codes.contiguous(), persistent=True)  # (n_items + 1, M), uint8/int16
        self.register_buffer("split_offsets", torch.arange(m, dtype=torch.long) * ksub, persistent=False)
        self.centroids = nn.Parameter(torch.empty(m, ksub, self.dsub).uniform_(-init_range, init_range))
        self.extra = nn.Parameter(torch.empty(extra_tokens, d).normal_(0.0, 0.02)) if extra_tokens else None

    def _flat_codes(self, ids: Tensor) -> Tensor:
        """(...,) item ids -> (..., M) indices into the flat (M * ksub) centroid table."""
        return self.codes[ids].long() + self.split_offsets

    def output_embed(self, ids: Tensor) -> Tensor:
        flat = self.centroids.reshape(self.M * self.ksub, self.dsub)
        # one gather (..., M, dsub); F.embedding's CPU backward accumulates in a fixed order (deterministic)
        emb = torch.nn.functional.embedding(self._flat_codes(ids), flat)
        return _pad_mask(ids, emb.reshape(*ids.shape, self.d))

    def forward(self, ids: Tensor) -> Tensor:
        if self.extra is None:
            return self.output_embed(ids)
        is_extra = ids > self.n_items
        item_ids = torch.where(is_extra, torch.zeros_like(ids), ids)
        emb = self.output_embed(item_ids)
        # F.embedding, not an index: its CPU backward sums the mask token's many gradients in a fixed order
        extra = torch.nn.functional.embedding((ids - self.n_items - 1).clamp(min=0, max=self.extra.shape[0] - 1),
                                              self.extra)
        return torch.where(is_extra.unsqueeze(-1), extra, emb)

    def sub_scores(self, h: Tensor) -> Tensor:
        """The sub-item score table: h (..., d) -> (..., M, ksub)."""
        hs = h.reshape(*h.shape[:-1], self.M, self.dsub)
        return torch.einsum("...md,mkd->...mk", hs, self.centroids.to(h.dtype))

    def prepare(self, h: Tensor) -> Tensor:
        return self.sub_scores(h).reshape(h.shape[0], self.M * self.ksub)  # (B, M * ksub)

    def score_range(self, prepared: Tensor, start: int, end: int) -> Tensor:
        idx = self.codes[start:end].long() + self.split_offsets  # (C, M)
        out = prepared.index_select(1, idx[:, 0])
        for k in range(1, self.M):  # M look-ups per item, accumulated in place
            out += prepared.index_select(1, idx[:, k])
        return out  # (B, C)

    def score(self, h: Tensor, ids: Tensor) -> Tensor:
        """h (..., d), ids (..., C) -> (..., C) without materialising (..., C, d) for large C."""
        c = ids.shape[-1]
        if c <= DIRECT_CANDIDATES:
            return (self.output_embed(ids) * h.unsqueeze(-2)).sum(-1)
        s = self.sub_scores(h)  # (..., M, ksub)
        codes = self.codes[ids].long()  # (..., C, M)
        out = torch.zeros(ids.shape, dtype=s.dtype, device=s.device)
        for k in range(self.M):  # per split: gather C sub-scores, (..., C)
            out = out + torch.gather(s[..., k, :], -1, codes[..., k])
        return out

    def reconstruct(self) -> Tensor:
        return self.output_embed(torch.arange(self.n_items + 1, device=self.codes.device))


class FullEmbedding(ItemEmbedding):
    """The dense baseline: untied input and output tables of (n_items + 1, d), or one tied table."""

    def __init__(self, *, n_items: int, d: int, tie: bool = False, extra_tokens: int = 0, init_std: float | None = None):
        super().__init__()
        self.n_items, self.d, self.tie = n_items, d, tie
        std = init_std if init_std is not None else 1.0 / math.sqrt(d)
        self.input = nn.Embedding(n_items + 1 + extra_tokens, d, padding_idx=0)
        nn.init.normal_(self.input.weight, 0.0, std)
        with torch.no_grad():
            self.input.weight[0].zero_()
        self.output = None if tie else nn.Embedding(n_items + 1, d, padding_idx=0)
        if self.output is not None:
            nn.init.normal_(self.output.weight, 0.0, std)
            with torch.no_grad():
                self.output.weight[0].zero_()

    def _out_weight(self) -> Tensor:
        return self.input.weight if self.output is None else self.output.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.input(ids)

    def output_embed(self, ids: Tensor) -> Tensor:
        return _pad_mask(ids, torch.nn.functional.embedding(ids, self._out_weight()))

    def prepare(self, h: Tensor) -> Tensor:
        return h

    def score_range(self, prepared: Tensor, start: int, end: int) -> Tensor:
        return prepared @ self._out_weight()[start:end].to(prepared.dtype).T

    def score(self, h: Tensor, ids: Tensor) -> Tensor:
        c = ids.shape[-1]
        if c <= DIRECT_CANDIDATES:
            return (self.output_embed(ids) * h.unsqueeze(-2)).sum(-1)
        # Chunk the candidates so (..., chunk, d) stays small.
        outs = []
        step = DENSE_CANDIDATE_CHUNK
        for s in range(0, c, step):
            e = self.output_embed(ids[..., s:s + step])
            outs.append((e * h.unsqueeze(-2)).sum(-1))
        return torch.cat(outs, dim=-1)

    def reconstruct(self) -> Tensor:
        return self._out_weight()[: self.n_items + 1]
