"""GRU4Rec (Hidasi et al., ICLR 2016): a recurrent network over the item sequence, trained on next items.

As in RecBole's GRU4Rec and the RecJPQ authors' code: item embeddings -> dropout -> stacked GRU layers
(without biases) -> a dense layer back to d, whose state at each position scores the next item with the item
embedding (tied input and output, RecJPQ or dense). Default loss: sampled softmax over 256 negatives shared by
a sequence's positions (``loss: ce``), the setting the GRU4Rec authors found strongest (cross-entropy with many
negatives, Hidasi & Czapp, RecSys 2023).

Left padding costs nothing: with zero inputs and a zero state, a bias-free GRU cell keeps its state exactly
zero (r = z = 1/2, n = tanh(0) = 0), so the first real item starts from the zero state, as if unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from recjpq_cli.jpq.embedding import ItemEmbedding
from recjpq_cli.models.base import Backbone, ModelArgs, ModelSpec
from recjpq_cli.models.tasks import NEXT_ITEM


@dataclass(frozen=True, kw_only=True)
class GRU4RecArgs(ModelArgs):
    num_blocks: int  # stacked GRU layers

    def positive_sizes(self) -> tuple[str, ...]:
        return (*super().positive_sizes(), "num_blocks")


class GRU4Rec(Backbone):
    def __init__(self, *, items: ItemEmbedding, d: int, max_len: int, num_blocks: int, dropout: float):
        super().__init__()
        self.items, self.d, self.max_len = items, d, max_len
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, num_layers=num_blocks, bias=False, batch_first=True)
        self.dense = nn.Linear(d, d)

    @classmethod
    def from_args(cls, a: GRU4RecArgs, items: ItemEmbedding) -> GRU4Rec:
        return cls(items=items, d=a.d, max_len=a.max_len, num_blocks=a.num_blocks, dropout=a.dropout)

    def hidden(self, seq: Tensor) -> Tensor:
        """(B, T) left-padded ids -> (B, T, d) states; padding positions are zeros."""
        keep = (seq != 0).unsqueeze(-1)
        x = self.drop(self.items(seq)) * keep.to(self.gru.weight_ih_l0.dtype)
        out, _ = self.gru(x)
        return self.dense(out) * keep.to(out.dtype)

    def encode(self, history: Tensor) -> Tensor:
        """(B, T) left-padded histories -> (B, d): the state after the last item."""
        return self.hidden(history[:, -self.max_len:])[:, -1]


def _parameters(cfg) -> int:
    d = cfg.d
    return cfg.num_blocks * 6 * d * d + d * d + d  # GRU gates (3 input + 3 hidden matrices a layer), dense


def _activations(cfg) -> int:
    # per layer: input, gates r, z, n and the state, kept for backward; embeddings and dense output (fp32)
    return cfg.batch_size * cfg.max_len * cfg.d * (cfg.num_blocks * 6 + 3) * 4


SPEC = ModelSpec(
    name="gru4rec", summary="GRU4Rec: recurrent network, next-item sampled softmax with 256 shared negatives",
    args_type=GRU4RecArgs,
    args_from_config=lambda cfg, common: GRU4RecArgs(**common, num_blocks=cfg.num_blocks),
    build=GRU4Rec.from_args, task=NEXT_ITEM, keys=("num_blocks",),
    defaults={"loss": "ce", "negatives": 256, "negatives_per": "sequence", "num_blocks": 1, "dropout": 0.2},
    backbone_parameters=_parameters, activation_bytes=_activations,
)
