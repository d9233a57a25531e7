"""Build a model from plain arguments (the dict a checkpoint carries) or from a TrainConfig."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recjpq_cli.config import TrainConfig
from recjpq_cli.jpq.embedding import FullEmbedding, JPQEmbedding
from recjpq_cli.models.bert4rec import BERT4Rec
from recjpq_cli.models.sasrec import SASRec

CODES_TORCH_DTYPE = {"uint8": torch.uint8, "uint16": torch.int32}


def model_args_from_config(cfg: TrainConfig, n_items: int, codes_shape: tuple[int, int] | None,
                           ksub: int | None) -> dict[str, Any]:
    return {
        "model": cfg.model, "embedding": cfg.embedding, "n_items": n_items, "d": cfg.d, "max_len": cfg.max_len,
        "num_blocks": cfg.num_blocks, "num_heads": cfg.num_heads, "ffn_dim": cfg.resolved_ffn_dim(),
        "dropout": cfg.dropout, "pos_init_std": cfg.pos_init_std, "centroid_init": cfg.centroid_init,
        "tie_embeddings": cfg.tie_embeddings,
        "M": codes_shape[1] if codes_shape else None, "ksub": ksub,
        "activation": "gelu" if cfg.model == "bert4rec" else "relu",
    }


def build_model(args: dict[str, Any], codes: torch.Tensor | None = None) -> nn.Module:
    """A fresh model. For JPQ without ``codes`` a zero codes buffer of the right shape is made
    (load_state_dict then fills it from a checkpoint)."""
    extra = 1 if args["model"] == "bert4rec" else 0
    d, n = args["d"], args["n_items"]
    if args["embedding"] == "jpq":
        if codes is None:
            codes = torch.zeros(n + 1, args["M"], dtype=torch.uint8 if args["ksub"] <= 256 else torch.int32)
        items = JPQEmbedding(codes=codes, ksub=args["ksub"], d=d, extra_tokens=extra,
                             init_range=args.get("centroid_init", 0.05))
    else:
        items = FullEmbedding(n_items=n, d=d, tie=args.get("tie_embeddings", False), extra_tokens=extra)
    cls = BERT4Rec if args["model"] == "bert4rec" else SASRec
    return cls(items=items, d=d, max_len=args["max_len"], num_blocks=args["num_blocks"],
               num_heads=args["num_heads"], ffn_dim=args["ffn_dim"], dropout=args["dropout"],
               pos_init_std=args.get("pos_init_std", 0.05), activation=args.get("activation", "relu"))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: item embeddings vs backbone."""
    item = sum(p.numel() for p in model.items.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"item": item, "backbone": total - item, "total": total}
