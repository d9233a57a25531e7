"""The one table of models, and building a model from its arguments (the dict a checkpoint carries).

Adding a model: a module with a backbone and a ``ModelSpec`` (``models/base.py``), one line in ``SPECS``, docs
and tests. Nothing else in the package names a model.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recjpq_cli.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from recjpq_cli.jpq.embedding import ItemEmbedding
    from recjpq_cli.models.base import ModelArgs, ModelSpec

# name -> "module:attribute" of its ModelSpec. The CLI reads the names without importing torch; a spec is
# imported the first time it is used.
TABLE: dict[str, str] = {
    "sasrec": "recjpq_cli.models.sasrec:SPEC",
    "gsasrec": "recjpq_cli.models.sasrec:GSASREC_SPEC",
    "bert4rec": "recjpq_cli.models.bert4rec:SPEC",
    "gru4rec": "recjpq_cli.models.gru4rec:SPEC",
}
MODELS = tuple(TABLE)
DEFAULT_MODEL = MODELS[0]


@cache
def spec(name: str) -> ModelSpec:
    module, attr = TABLE[name].split(":")
    return getattr(importlib.import_module(module), attr)


def specs() -> dict[str, ModelSpec]:
    return {name: spec(name) for name in MODELS}


def model_keys() -> tuple[str, ...]:
    """Config keys some model reads and another does not (refused with --set for a model that does not read
    them)."""
    return tuple(sorted({k for s in specs().values() for k in (*s.keys, *s.task.keys)}))


def model_args_from_config(cfg: Any, n_items: int, codes_shape: tuple[int, int] | None,
                           ksub: int | None) -> dict[str, Any]:
    """The plain-dict model arguments of a training run (``ModelArgs.to_dict`` of the model's type)."""
    common = {"model": cfg.model, "embedding": cfg.embedding, "n_items": n_items, "d": cfg.d,
              "max_len": cfg.max_len, "dropout": cfg.dropout, "M": codes_shape[1] if codes_shape else None,
              "ksub": ksub, "centroid_init": cfg.centroid_init, "tie_embeddings": cfg.tie_embeddings}
    return spec(cfg.model).args_from_config(cfg, common).to_dict()


def _bad(where: Path | str, key: str, v: Any) -> InputError:
    return InputError(f"{where}: model argument '{key}' must be a positive integer, got {v!r}")


def typed_args(args: Any, where: Path | str = "model arguments") -> ModelArgs:
    """The typed arguments of a checkpoint's or model file's dict, checked: a known model and embedding,
    positive sizes, and for JPQ a code length M dividing d and 2 <= ksub <= MAX_KSUB. Errors name ``where``."""
    from recjpq_cli.jpq.codebook import MAX_KSUB
    from recjpq_cli.models.base import EMBEDDINGS

    if not isinstance(args, dict):
        raise InputError(f"{where}: model arguments are not a mapping")
    if args.get("model") not in TABLE:
        raise InputError(f"{where}: unknown model {args.get('model')!r} (known: {', '.join(MODELS)})")
    if args.get("embedding") not in EMBEDDINGS:
        raise InputError(f"{where}: unknown embedding {args.get('embedding')!r} (known: {', '.join(EMBEDDINGS)})")
    t = spec(args["model"]).args_type
    keys = t.keys()
    unknown = sorted(set(args) - set(keys))
    if unknown:
        raise InputError(f"{where}: unknown model argument(s) {', '.join(unknown)} for {args['model']}")
    try:
        typed = t(**args)
    except TypeError as e:
        raise InputError(f"{where}: model arguments are incomplete ({e})") from None
    jpq = ("M", "ksub") if typed.embedding == "jpq" else ()
    for key in (*typed.positive_sizes(), *jpq):
        v = getattr(typed, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _bad(where, key, v)
    if jpq and (typed.d % typed.M or not 2 <= typed.ksub <= MAX_KSUB):
        raise InputError(f"{where}: model arguments d={typed.d}, M={typed.M}, ksub={typed.ksub} are "
                         f"impossible (M must divide d, 2 <= ksub <= {MAX_KSUB:,})")
    return typed


def check_model_args(args: Any, where: Path | str = "model arguments") -> None:
    typed_args(args, where)


def item_embedding(a: ModelArgs, codes: torch.Tensor | None = None) -> ItemEmbedding:
    """RecJPQ or dense item embeddings with the model's extra input tokens. For JPQ without ``codes`` a zero
    codes buffer of the right shape is made (load_state_dict then fills it from a checkpoint)."""
    import torch

    from recjpq_cli.jpq.codebook import codes_torch_dtype
    from recjpq_cli.jpq.embedding import FullEmbedding, JPQEmbedding

    extra = spec(a.model).extra_tokens
    if a.embedding == "jpq":
        if codes is None:
            codes = torch.zeros(a.n_items + 1, a.M, dtype=codes_torch_dtype(a.ksub))
        return JPQEmbedding(codes=codes, ksub=a.ksub, d=a.d, extra_tokens=extra, init_range=a.centroid_init)
    return FullEmbedding(n_items=a.n_items, d=a.d, tie=a.tie_embeddings, extra_tokens=extra)


def build_model(args: dict[str, Any] | ModelArgs, codes: torch.Tensor | None = None,
                items: ItemEmbedding | None = None) -> nn.Module:
    """A fresh model from its arguments (``items`` replaces the default item embedding)."""
    from recjpq_cli.models.base import ModelArgs

    a = args if isinstance(args, ModelArgs) else typed_args(args)
    return spec(a.model).build(a, items if items is not None else item_embedding(a, codes))


def extra_tokens(args: dict[str, Any]) -> int:
    return spec(args["model"]).extra_tokens


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: item embeddings vs backbone."""
    item = sum(p.numel() for p in model.items.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"item": item, "backbone": total - item, "total": total}
