"""SASRec (Kang & McAuley 2018): a causal transformer over the item sequence, trained on next items.

gSASRec (Petrov & Macdonald 2023) is the same network and task with the preset ``loss: gbce``, 256 negatives
and ``gbce_t: 0.75``: a second spec over the same module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from recjpq_cli.jpq.embedding import ItemEmbedding
from recjpq_cli.models.base import Backbone, ModelArgs, ModelSpec
from recjpq_cli.models.blocks import Block, attention_mask, transformer_activations, transformer_parameters
from recjpq_cli.models.tasks import NEXT_ITEM

TRANSFORMER_KEYS = ("num_blocks", "num_heads", "ffn_dim", "pos_init_std")


@dataclass(frozen=True, kw_only=True)
class TransformerArgs(ModelArgs):
    num_blocks: int
    num_heads: int
    ffn_dim: int
    pos_init_std: float = 0.05
    activation: str = "relu"  # relu | gelu

    def positive_sizes(self) -> tuple[str, ...]:
        return (*super().positive_sizes(), "num_blocks", "num_heads", "ffn_dim")


def transformer_args(cfg, common: dict, activation: str = "relu") -> TransformerArgs:
    return TransformerArgs(**common, num_blocks=cfg.num_blocks, num_heads=cfg.num_heads,
                           ffn_dim=cfg.resolved_ffn_dim(), pos_init_std=cfg.pos_init_std, activation=activation)


class SASRec(Backbone):
    causal = True

    def __init__(self, *, items: ItemEmbedding, d: int, max_len: int, num_blocks: int, num_heads: int,
                 ffn_dim: int, dropout: float, pos_init_std: float = 0.05, activation: str = "relu"):
        super().__init__()
        self.items, self.d, self.max_len = items, d, max_len
        self.pos = nn.Parameter(torch.randn(max_len, d) * pos_init_std)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, num_heads, ffn_dim, dropout, activation) for _ in range(num_blocks))
        self.ln = nn.LayerNorm(d)

    @classmethod
    def from_args(cls, a: TransformerArgs, items: ItemEmbedding) -> SASRec:
        return cls(items=items, d=a.d, max_len=a.max_len, num_blocks=a.num_blocks, num_heads=a.num_heads,
                   ffn_dim=a.ffn_dim, dropout=a.dropout, pos_init_std=a.pos_init_std, activation=a.activation)

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


def _spec(name: str, summary: str, defaults: dict) -> ModelSpec:
    return ModelSpec(name=name, summary=summary, args_type=TransformerArgs, args_from_config=transformer_args,
                     build=SASRec.from_args, task=NEXT_ITEM, keys=TRANSFORMER_KEYS, defaults=defaults,
                     backbone_parameters=transformer_parameters, activation_bytes=transformer_activations)


SPEC = _spec("sasrec", "SASRec: causal transformer, next-item BCE with one negative", {"loss": "bce"})
GSASREC_SPEC = _spec("gsasrec", "gSASRec: SASRec with gBCE and 256 negatives",
                     {"loss": "gbce", "negatives": 256, "gbce_t": 0.75})
