"""A model's training objective: its task's predictions scored by the loss the ``loss`` key names.

The losses themselves are pure functions of scores (``models/losses.py``); this module scores the
predictions they need (positive and negative item scores, or the whole catalogue for a full softmax) through
the item embedding, so RecJPQ's many negatives come from the sub-item score table, never from an item table.

- ``bce``: binary cross-entropy, positive -> 1, each negative -> 0 (SASRec's loss; needs ``negatives >= 1``);
- ``gbce``: gSASRec's generalised BCE with calibration ``gbce_t`` (needs ``negatives >= 1``);
- ``ce``: softmax cross-entropy; over the whole catalogue when ``negatives: 0``, else sampled softmax over the
  positive and the drawn negatives (a negative equal to the positive is masked out of its row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from recjpq_cli.models import losses

if TYPE_CHECKING:
    from recjpq_cli.config import TrainConfig
    from recjpq_cli.jpq.embedding import ItemEmbedding
    from recjpq_cli.models.base import ModelSpec
    from recjpq_cli.models.tasks import Prediction

LOSSES = ("bce", "gbce", "ce")
NEEDS_NEGATIVES = ("bce", "gbce")


def full_softmax(items: ItemEmbedding, pred: Prediction, denom: float | None) -> Tensor:
    """Softmax CE over every item: (positions, n_items + 1) logits, padding column at -inf. Only the valid
    positions are scored: ``pred.rows`` (found on the host) when the task gives them, else a boolean index."""
    h, target, valid = pred.h, pred.target, pred.valid
    if pred.rows is not None:
        h = h.reshape(-1, h.shape[-1]).index_select(0, pred.rows)
        target = target.reshape(-1).index_select(0, pred.rows)
        valid = torch.ones_like(target, dtype=torch.bool)
    elif h.dim() > 2:
        h, target = h[valid], target[valid]
        valid = torch.ones_like(target, dtype=torch.bool)
    logits = items.score_all(h)
    logits[:, 0] = float("-inf")
    return losses.softmax_ce(logits, target, valid, denom=denom)


def candidate_scores(items: ItemEmbedding, pred: Prediction) -> tuple[Tensor, Tensor]:
    """(positive scores (...,), negative scores (..., K))."""
    h = pred.h
    pos = items.score(h, pred.target.unsqueeze(-1))[..., 0]
    neg = items.score_shared(h, pred.negatives) if pred.shared_negatives else items.score(h, pred.negatives)
    return pos, neg


def loss(cfg: TrainConfig, items: ItemEmbedding, pred: Prediction, denom: float | None = None,
         log_q: Tensor | None = None) -> Tensor:
    """The batch loss of ``pred`` under ``cfg.loss``; ``denom`` replaces the valid-position count (DDP);
    ``log_q`` (per item id) is sampled softmax's logQ correction."""
    if pred.negatives is None:
        return full_softmax(items, pred, denom)
    pos, neg = candidate_scores(items, pred)
    if cfg.loss == "ce":
        negs = pred.negatives.unsqueeze(-2) if pred.shared_negatives else pred.negatives
        return losses.sampled_softmax_ce(pos, neg, pred.valid, pos_ids=pred.target, neg_ids=negs, log_q=log_q,
                                         denom=denom)
    shift = cfg.resolved_logit_shift()
    if shift:
        pos, neg = pos + shift, neg + shift
    t = cfg.gbce_t if cfg.loss == "gbce" else 0.0
    return losses.gbce(pos, neg, pred.valid, n_items=items.n_items, t=t, denom=denom)


def check(cfg: TrainConfig) -> str | None:
    """Why this loss cannot train with these settings, or None."""
    if cfg.loss not in LOSSES:
        return f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}"
    if cfg.loss in NEEDS_NEGATIVES and cfg.negatives < 1:
        return f"loss={cfg.loss} needs negatives >= 1 (it scores the positive against sampled negatives)"
    return None


def scores_bytes(cfg: TrainConfig, spec: ModelSpec, n_items: int, M: int | None, ksub: int | None) -> int:
    """The memory estimate's term for candidate scores: logits, their softmax and gradient (fp32)."""
    positions = spec.task.predicted_positions(cfg)
    k = cfg.negatives
    if k == 0:
        return positions * (n_items + 2) * 4 * 3
    shared = cfg.negatives_per == "sequence"
    out = positions * (k + 1) * 4 * 3
    if cfg.embedding == "jpq" and k > 4 and M and ksub:
        out += positions * M * ksub * 4 * 3  # sub-item score tables and their gradient
        out += (cfg.batch_size if shared else positions) * k * M * 8  # gathered codes
    elif k > 4:
        out += positions * 8 * cfg.d * 4 * 2  # dense candidates embedded 8 at a time
    return out


class LossModule(torch.nn.Module):
    """The model plus its objective in ``forward`` (task predictions, then the loss), so DDP sees and
    synchronises the whole step."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device, log_q: Tensor | None = None):
        from recjpq_cli.models.registry import spec

        super().__init__()
        self.model, self.cfg, self.device, self.log_q = model, cfg, device, log_q
        self.task = spec(cfg.model).task

    def forward(self, denom: float | None = None, **batch: Tensor) -> Tensor:
        """The batch loss; ``denom`` (the valid positions of the whole global batch / world size) makes
        DDP's gradient average equal the gradient of one process with the whole batch."""
        pred = self.task.predict(self.model, batch, self.device)
        return loss(self.cfg, self.model.items, pred, denom, self.log_q)
