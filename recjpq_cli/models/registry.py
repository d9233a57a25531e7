"""Build a model from plain arguments (the dict a checkpoint carries) or from a TrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from recjpq_cli.config import MODELS, TrainConfig
from recjpq_cli.errors import InputError
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


EMBEDDINGS = ("jpq", "full")
_POSITIVE = ("n_items", "d", "max_len", "num_blocks", "num_heads", "ffn_dim")


def check_model_args(args: Any, where: Path | str = "model arguments") -> None:
    """The model arguments a checkpoint or model file carries: a known model (config.MODELS) and embedding,
    positive sizes, and for JPQ a code length M dividing d and 2 <= ksub <= 65,536. Errors name ``where``."""
    if not isinstance(args, dict):
        raise InputError(f"{where}: model arguments are not a mapping")
    if args.get("model") not in MODELS:
        raise InputError(f"{where}: unknown model {args.get('model')!r} (known: {', '.join(MODELS)})")
    if args.get("embedding") not in EMBEDDINGS:
        raise InputError(f"{where}: unknown embedding {args.get('embedding')!r} (known: {', '.join(EMBEDDINGS)})")
    jpq = ("M", "ksub") if args["embedding"] == "jpq" else ()
    for key in _POSITIVE + jpq:
        v = args.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{where}: model argument '{key}' must be a positive integer, got {v!r}")
    if jpq and (args["d"] % args["M"] or not 2 <= args["ksub"] <= 65_536):
        raise InputError(f"{where}: model arguments d={args['d']}, M={args['M']}, ksub={args['ksub']} are "
                         f"impossible (M must divide d, 2 <= ksub <= 65,536)")


def build_model(args: dict[str, Any], codes: torch.Tensor | None = None) -> nn.Module:
    """A fresh model. For JPQ without ``codes`` a zero codes buffer of the right shape is made
    (load_state_dict then fills it from a checkpoint)."""
    check_model_args(args)
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
