"""The model interface: what every model module declares, so that nothing outside ``recjpq_cli/models/``
knows a model by name.

A model module holds a backbone (an ``nn.Module`` with ``items``, ``hidden`` and ``encode``) and one
``ModelSpec``: its name, the typed dataclass of its arguments, how to build it, the training task it learns
from (``models/tasks.py``), the extra input tokens it needs, its config keys and their defaults, and its terms
of the memory estimate. ``models/registry.py`` lists the specs; that list is the only place a model is named.

The loss is not part of a model: it is a pure function chosen by the ``loss`` config key
(``models/objective.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from recjpq_cli.config import TrainConfig
    from recjpq_cli.jpq.embedding import ItemEmbedding
    from recjpq_cli.models.tasks import Task

EMBEDDINGS = ("jpq", "full")


@dataclass(frozen=True, kw_only=True)
class ModelArgs:
    """What builds a model, stored in checkpoints and model files as a plain dict (``to_dict``) so that they
    load with ``weights_only``. Each model extends it with the arguments of its backbone."""

    model: str
    embedding: str  # jpq | full
    n_items: int
    d: int
    max_len: int
    dropout: float
    M: int | None = None  # JPQ: code length
    ksub: int | None = None  # JPQ: centroids per split
    centroid_init: float = 0.05
    tie_embeddings: bool = False
    input_pq: bool = False  # compress --from-dense: separate input codes (artifact.py)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def positive_sizes(self) -> tuple[str, ...]:
        """The arguments that must be positive integers."""
        return ("n_items", "d", "max_len")


class Backbone(nn.Module):
    """A sequence model over item embeddings: ``hidden`` for training, ``encode`` for ranking."""

    items: ItemEmbedding
    max_len: int

    def hidden(self, seq: Tensor) -> Tensor:  # (B, T) left-padded ids -> (B, T, d); padding rows zeros
        raise NotImplementedError

    def encode(self, history: Tensor) -> Tensor:  # (B, T) left-padded histories -> (B, d)
        raise NotImplementedError


@dataclass(frozen=True)
class ModelSpec:
    """One model, as the registry lists it."""

    name: str
    summary: str  # one line for --help and docs
    args_type: type[ModelArgs]
    args_from_config: Callable[[TrainConfig, dict[str, Any]], ModelArgs]  # (cfg, common args) -> typed args
    build: Callable[[Any, ItemEmbedding], Backbone]  # (typed args, item embedding) -> backbone
    task: Task
    keys: tuple[str, ...]  # model-specific config keys it reads (beyond the common training keys)
    defaults: dict[str, Any] = field(default_factory=dict)  # config defaults, over TrainConfig's
    extra_tokens: int = 0  # input-only ids after the items (BERT4Rec's mask token)
    backbone_parameters: Callable[[TrainConfig], int] = lambda cfg: 0
    activation_bytes: Callable[[TrainConfig], int] = lambda cfg: 0  # kept for backward, per batch
