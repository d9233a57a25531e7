"""Transformer blocks shared by SASRec and BERT4Rec (pre-LayerNorm, torch SDPA attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    def __init__(self, d: int, num_heads: int, dropout: float):
        super().__init__()
        if d % num_heads:
            raise ValueError(f"d={d} is not divisible by num_heads={num_heads}")
        self.h, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape  # (B, T, d); mask (B, 1, T, T) bool, True = may attend
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, d: int, ffn_dim: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, ffn_dim), nn.Linear(ffn_dim, d)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, d: int, num_heads: int, ffn_dim: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, num_heads, dropout)
        self.ffn = FeedForward(d, ffn_dim, dropout, activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.ffn(self.ln2(x)))


def attention_mask(seq: Tensor, causal: bool) -> Tensor:
    """(B, T) ids -> (B, 1, T, T) bool: attend to non-padding keys (and the past when causal).

    Every query may attend to itself, so rows of padding positions are never empty.
    """
    t = seq.shape[1]
    keys = (seq != 0)[:, None, None, :]  # (B, 1, 1, T)
    eye = torch.eye(t, dtype=torch.bool, device=seq.device)
    m = keys | eye
    if causal:
        m = m & torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
    return m


def transformer_parameters(cfg) -> int:
    """Backbone parameters of a transformer of ``num_blocks`` blocks (positions, blocks, final norm)."""
    d, ffn, nb = cfg.d, cfg.resolved_ffn_dim(), cfg.num_blocks
    return cfg.max_len * d + nb * (4 * d * d + 4 * d + 2 * d * ffn + ffn + d + 4 * d) + 2 * d


def transformer_activations(cfg) -> int:
    """Bytes a transformer keeps for backward per batch: per block qkv, attention probabilities,
    projections, ffn and layer norms (fp32)."""
    d, L, B, nb, ffn = cfg.d, cfg.max_len, cfg.batch_size, cfg.num_blocks, cfg.resolved_ffn_dim()
    return B * L * (nb * (12 * d + 2 * ffn) + 4 * d) * 4 + B * cfg.num_heads * L * L * nb * 3 * 4
