"""Losses as pure functions of scores. Padding positions never contribute (``valid`` mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _mean_over_valid(per_pos: Tensor, valid: Tensor, denom: float | None) -> Tensor:
    """The sum over valid positions divided by their count (or ``denom``). Invalid ones are selected out, not
    multiplied by 0, so a non-finite value there (a padded slot) never reaches the loss value."""
    total = torch.where(valid, per_pos, torch.zeros((), dtype=per_pos.dtype, device=per_pos.device)).sum()
    return total / denom if denom is not None else total / valid.sum().clamp(min=1).to(per_pos.dtype)


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
    return _mean_over_valid(per_pos, valid, denom)


def gbce(pos: Tensor, neg: Tensor, valid: Tensor, *, n_items: int, t: float, denom: float | None = None) -> Tensor:
    """gBCE (Petrov & Macdonald, RecSys 2023); t = 0 is plain BCE with the same negatives."""
    beta = gbce_beta(neg.shape[-1], n_items, t)
    return bce_with_negatives(gbce_positive_logits(pos, beta), neg, valid, denom)


def softmax_ce(logits: Tensor, target: Tensor, valid: Tensor, denom: float | None = None) -> Tensor:
    """Cross-entropy over all scored ids: logits (N, C), target (N,), valid (N,) bool.

    The full softmax: the caller holds N x C logits (and autograd their softmax and gradient, about
    N x C x 4 B x 3 in all), which is what the memory estimate counts."""
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    return _mean_over_valid(loss, valid, denom)


def sampled_softmax_ce(pos: Tensor, neg: Tensor, valid: Tensor, *, pos_ids: Tensor | None = None,
                       neg_ids: Tensor | None = None, log_q: Tensor | None = None,
                       denom: float | None = None) -> Tensor:
    """Sampled softmax: cross-entropy of the positive among itself and K sampled negatives.

    pos (...,), neg (..., K), valid (...,) bool; ``pos_ids`` (...,) and ``neg_ids`` (..., K) or any shape that
    broadcasts to it (e.g. (B, 1, K) for negatives shared by a sequence's positions).
    - A negative whose id equals its row's positive is masked out (logit -inf), when ids are given: it is
      not a negative.
    - ``log_q`` (1-D, indexed by item id): the log-probability of an id being drawn as a negative. Every
      candidate's logit, the positive's included, is corrected by -log q (sampled softmax with the sampling
      distribution's correction: Bengio & Senecal 2008; Jean et al. 2015; Yi et al., RecSys 2019), so the
      sampled loss estimates the full softmax. A uniform q shifts every logit alike and changes nothing.
    Averaged over valid positions, or divided by ``denom`` (DDP: global count / world size). Float32.
    """
    pos, neg = pos.float(), neg.float()
    if log_q is not None:
        if pos_ids is None or neg_ids is None:
            raise ValueError("log_q needs pos_ids and neg_ids")
        pos = pos - log_q[pos_ids]
        neg = neg - log_q[neg_ids]
    if pos_ids is not None and neg_ids is not None:
        neg = neg.masked_fill(neg_ids == pos_ids.unsqueeze(-1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
    per_pos = torch.logsumexp(logits, dim=-1) - pos  # -log softmax of the positive; finite: pos is never masked
    return _mean_over_valid(per_pos, valid, denom)
