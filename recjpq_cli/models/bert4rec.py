"""BERT4Rec (Sun et al. 2019): a bidirectional transformer trained by masked-item prediction."""

from __future__ import annotations

import torch
from torch import Tensor

from recjpq_cli.models.base import ModelSpec
from recjpq_cli.models.blocks import transformer_activations, transformer_parameters
from recjpq_cli.models.sasrec import TRANSFORMER_KEYS, SASRec, TransformerArgs, transformer_args
from recjpq_cli.models.tasks import MASKED


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


SPEC = ModelSpec(
    name="bert4rec", summary="BERT4Rec: bidirectional transformer, masked items, full softmax",
    args_type=TransformerArgs, args_from_config=lambda cfg, common: transformer_args(cfg, common, "gelu"),
    build=BERT4Rec.from_args, task=MASKED, keys=TRANSFORMER_KEYS + MASKED.keys, extra_tokens=1,
    defaults={"loss": "ce", "num_blocks": 3, "num_heads": 2, "ffn_dim": 128, "dropout": 0.2, "batch_size": 64,
              "lr": 1e-4, "negatives": 0},
    backbone_parameters=transformer_parameters, activation_bytes=transformer_activations,
)
