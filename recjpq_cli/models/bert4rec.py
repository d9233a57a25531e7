"""BERT4Rec (Sun et al. 2019): a bidirectional transformer trained by masked-item prediction."""

from __future__ import annotations

import torch
from torch import Tensor

from recjpq_cli.models.sasrec import SASRec


class BERT4Rec(SASRec):
    causal = False

    @property
    def mask_token(self) -> int:
        return self.items.n_items + 1

    def encode(self, history: Tensor) -> Tensor:
        """Append the mask token after the history and read its state."""
        h = history[:, -(self.max_len - 1):]
        mask = torch.full((h.shape[0], 1), self.mask_token, dtype=h.dtype, device=h.device)
        return self.hidden(torch.cat([h, mask], dim=1))[:, -1]
