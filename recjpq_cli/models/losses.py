"""Losses as pure functions of scores. Padding positions never contribute (``valid`` mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gbce_positive_logits(pos: Tensor, beta: float) -> Tensor:
    """gBCE's transformed positive logit: log(1 / (sigmoid(s)^(-beta) - 1)), in float64 with clamping.

    sigmoid of the result equals sigmoid(s)^beta; beta = 1 returns s unchanged.
    """
    if beta == 1.0:
        return pos
    s = pos.double()
    # sigmoid(s)^(-beta) - 1 = exp(-beta * logsigmoid(s)) - 1 = expm1(-beta * logsigmoid(s))
    denom = torch.expm1(-beta * F.logsigmoid(s)).clamp(min=1e-10)
    return (-torch.log(denom)).to(pos.dtype)


def gbce_beta(num_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (n_items - 1)."""
    alpha = num_negatives / max(1, n_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def bce_with_negatives(pos: Tensor, neg: Tensor, valid: Tensor, denom: float | None = None) -> Tensor:
    """Binary cross-entropy: positive logit -> 1, each negative -> 0.

    pos (...,), neg (..., K), valid (...,) bool. Per position: -log s(pos) - sum_k log(1 - s(neg_k));
    averaged over valid positions (or divided by ``denom``, e.g. the global count under DDP).
    """
    per_pos = F.softplus(-pos) + F.softplus(neg).sum(-1)
    w = valid.to(per_pos.dtype)
    total = (per_pos * w).sum()
    return total / denom if denom is not None else total / w.sum().clamp(min=1.0)


def gbce(pos: Tensor, neg: Tensor, valid: Tensor, *, n_items: int, t: float, denom: float | None = None) -> Tensor:
    """gBCE (Petrov & Macdonald, RecSys 2023); t = 0 is plain BCE with the same negatives."""
    beta = gbce_beta(neg.shape[-1], n_items, t)
    return bce_with_negatives(gbce_positive_logits(pos, beta), neg, valid, denom)


def softmax_ce(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy over all scored ids: logits (N, C), target (N,), valid (N,) bool."""
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    w = valid.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp(min=1.0)
