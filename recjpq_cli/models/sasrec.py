"""SASRec (Kang & McAuley 2018): a causal transformer over the item sequence.

gSASRec is the same network trained with many negatives and gBCE (see losses.py, stages/train.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recjpq_cli.jpq.embedding import ItemEmbedding
from recjpq_cli.models.blocks import Block, attention_mask


class SASRec(nn.Module):
    causal = True

    def __init__(self, *, items: ItemEmbedding, d: int, max_len: int, num_blocks: int, num_heads: int,
                 ffn_dim: int, dropout: float, pos_init_std: float = 0.05, activation: str = "relu"):
        super().__init__()
        self.items, self.d, self.max_len = items, d, max_len
        self.pos = nn.Parameter(torch.randn(max_len, d) * pos_init_std)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, num_heads, ffn_dim, dropout, activation) for _ in range(num_blocks))
        self.ln = nn.LayerNorm(d)

    def hidden(self, seq: Tensor) -> Tensor:
        """(B, T) left-padded ids -> (B, T, d) sequence states; padding positions are zeros."""
        t = seq.shape[1]
        x = self.items(seq) * math.sqrt(self.d) + self.pos[-t:]  # (B, T, d)
        keep = (seq != 0).unsqueeze(-1).to(x.dtype)
        x = self.drop(x) * keep
        mask = attention_mask(seq, causal=self.causal)
        for blk in self.blocks:
            x = blk(x, mask) * keep
        return self.ln(x) * keep

    def encode(self, history: Tensor) -> Tensor:
        """(B, T) left-padded histories -> (B, d): the state that predicts the next item."""
        return self.hidden(history[:, -self.max_len:])[:, -1]
