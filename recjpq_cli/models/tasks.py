"""Training tasks: which users a model trains on, the batch it learns from and where it predicts.

A task turns a batch of users into ``Prediction``s: sequence states ``h`` at the positions that predict an
item, the item each should predict, which positions count, and the negatives drawn for them. The loss
(``models/objective.py``) scores them; the task never sees the loss.

- ``NEXT_ITEM`` (SASRec, gSASRec, GRU4Rec): every position of a user's training window predicts the item after
  it (a causal backbone).
- ``MASKED`` (BERT4Rec, Cloze): a random ``mask_prob`` of the window's items, and always the last one, are
  replaced by the mask token; the backbone predicts them from both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from recjpq_cli import negatives
from recjpq_cli.data import sequences
from recjpq_cli.device import autocast, to_device

if TYPE_CHECKING:
    from recjpq_cli.config import TrainConfig
    from recjpq_cli.data.schema import Dataset
    from recjpq_cli.models.base import Backbone
    from recjpq_cli.models.sampling import Sampler


@dataclass
class Prediction:
    """What a batch predicts. ``h`` (B, P, d) float32, ``target`` (B, P) item ids, ``valid`` (B, P) bool;
    ``negatives`` (B, P, K) per position, or (B, K) shared by the positions of a sequence, or None (full
    softmax). ``rows``: the flat indices of the valid positions in (B * P), found on the host when the batch
    was made, so that a full softmax scores only those without a device-to-host synchronisation."""

    h: Tensor
    target: Tensor
    valid: Tensor
    negatives: Tensor | None = None
    rows: Tensor | None = None

    @property
    def shared_negatives(self) -> bool:
        return self.negatives is not None and self.negatives.dim() == self.h.dim() - 1


class Task:
    name: str
    keys: tuple[str, ...] = ()  # config keys the task reads beyond the common ones

    def trainable(self, ds: Dataset, n_train: np.ndarray) -> np.ndarray:
        """Internal ids of the users this task can train on."""
        raise NotImplementedError

    def batch(self, cfg: TrainConfig, ds: Dataset, users: np.ndarray, n_train: np.ndarray, step: int,
              device: torch.device, sampler: Sampler) -> dict[str, Tensor]:
        """One step's tensors on ``device``, negatives included (drawn from (seed, step, user))."""
        raise NotImplementedError

    def predict(self, model: Backbone, batch: dict[str, Tensor], device: torch.device) -> Prediction:
        raise NotImplementedError

    def global_positions(self, cfg: TrainConfig, users: np.ndarray, n_train: np.ndarray, step: int) -> float:
        """The predicted positions of a whole (all processes') batch of ``users`` at ``step``, known before the
        step; DDP divides the loss sum by it so that gradients equal one big batch's."""
        raise NotImplementedError

    def predicted_positions(self, cfg: TrainConfig) -> int:
        """An upper bound of the positions one batch predicts (the memory estimate's candidate scores)."""
        raise NotImplementedError


class NextItem(Task):
    name = "next-item"

    def trainable(self, ds: Dataset, n_train: np.ndarray) -> np.ndarray:
        return sequences.trainable_users(ds)

    def batch(self, cfg, ds, users, n_train, step, device, sampler):
        inp, tgt = sequences.train_batch(ds, users, cfg.max_len, n_train)  # (B, L) host
        out = {"inp": inp, "tgt": tgt}
        if cfg.negatives == 0:  # full softmax: the valid positions, found here on the host
            out["rows"] = np.flatnonzero((tgt != 0) & (inp != 0))
        out = {k: to_device(torch.from_numpy(v), device) for k, v in out.items()}
        negs = sampler.draw(step, users, cfg.max_len, device)
        return out | ({"negs": negs} if negs is not None else {})

    def predict(self, model, batch, device):
        inp, tgt = batch["inp"], batch["tgt"]
        with autocast(device):
            h = model.hidden(inp)
        valid = (tgt != 0) & (inp != 0)  # a real target after a real input item
        return Prediction(h=h.float(), target=tgt, valid=valid, negatives=batch.get("negs"), rows=batch.get("rows"))

    def global_positions(self, cfg, users, n_train, step):
        return max(1.0, float(np.minimum(n_train[users] - 1, cfg.max_len).sum()))

    def predicted_positions(self, cfg):
        return cfg.batch_size * cfg.max_len


class Masked(Task):
    """Masks are drawn on the host from (seed, step, user, position) (``negatives.uniform01``), so a resumed or
    distributed run masks what a plain run masks, and the masked positions are known before the step: each
    sequence's are packed to the left of a (B, P) layout (P the most of any row), read from the backbone's
    states with a gather (no boolean index, which would wait on the device). Negatives shared by a sequence
    are then scored against its P positions with one batched product."""

    name = "masked"
    keys = ("mask_prob",)

    def trainable(self, ds: Dataset, n_train: np.ndarray) -> np.ndarray:
        return np.flatnonzero(n_train >= 1)

    @staticmethod
    def masks(cfg: TrainConfig, users: np.ndarray, n_train: np.ndarray, step: int) -> np.ndarray:
        """(B, max_len) bool: which positions of the users' left-padded windows are masked at ``step``."""
        length = cfg.max_len
        real = np.arange(length)[None, :] >= (length - np.minimum(n_train[users], length))[:, None]
        mask = (negatives.uniform01(cfg.seed, step, users, length) < cfg.mask_prob) & real
        mask[:, -1] |= real[:, -1]  # always predict the last item too: the task at inference
        return mask

    def batch(self, cfg, ds, users, n_train, step, device, sampler):
        seq = sequences.masked_batch(ds, users, cfg.max_len, n_train)  # (B, L) host
        mask = self.masks(cfg, users, n_train, step)
        pos, filled = sequences.masked_slots(mask)  # (B, P) each
        out = {"seq": seq, "mask": mask, "pos": pos, "filled": filled}
        if cfg.negatives == 0:
            out["rows"] = np.flatnonzero(filled)
        out = {k: to_device(torch.from_numpy(v), device) for k, v in out.items()}
        negs = sampler.draw(step, users, cfg.max_len, device)  # (B, L, K) or (B, K); None: full softmax
        return out | ({"negs": negs} if negs is not None else {})

    def predict(self, model, batch, device):
        seq, mask, pos = batch["seq"], batch["mask"], batch["pos"]
        inp = torch.where(mask, torch.full_like(seq, model.items.n_items + 1), seq)  # the mask token
        with autocast(device):
            h = model.hidden(inp)  # (B, L, d)
        h = h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, P, d)
        negs = batch.get("negs")
        if negs is not None and negs.dim() == 3:  # per position: (B, L, K) -> (B, P, K)
            negs = negs.gather(1, pos.unsqueeze(-1).expand(-1, -1, negs.shape[-1]))
        return Prediction(h=h.float(), target=seq.gather(1, pos), valid=batch["filled"], negatives=negs,
                          rows=batch.get("rows"))

    def global_positions(self, cfg, users, n_train, step):
        return max(1.0, float(self.masks(cfg, users, n_train, step).sum()))

    def predicted_positions(self, cfg):
        """B x P, P the most masked positions of a sequence: the expected count, the always-masked last item
        and six standard deviations (binomial), at most max_len."""
        n, p = cfg.max_len, cfg.mask_prob
        return cfg.batch_size * min(n, math.ceil(n * p + 1 + 6 * math.sqrt(n * p * (1 - p))))


NEXT_ITEM = NextItem()
MASKED = Masked()
