"""The training configuration: one frozen dataclass, flat keys, defaults per model.

Precedence: command-line flag > ``--set key=value`` > ``--config`` file > model default (each model's spec,
``models/registry.py``) > the dataclass default. Values of ``--set`` are parsed as YAML (never evaluated).
Unknown keys, wrong types and keys of another model (``num_heads`` for GRU4Rec) are errors.

A saved config (``config.yaml``, a checkpoint's ``config``) holds the common keys and the model's own keys; a
key missing from it (a run written before the key existed) takes the model's default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from recjpq_cli.data.io import read_yaml
from recjpq_cli.errors import ConfigError
from recjpq_cli.models import objective
from recjpq_cli.models.base import EMBEDDINGS
from recjpq_cli.models.registry import DEFAULT_MODEL, MODELS, specs
from recjpq_cli.models.registry import model_keys as _all_model_keys

MODEL_KEYS = _all_model_keys()
SPECS = specs()

NEGATIVES_PER = ("position", "sequence")
NEGATIVE_SAMPLING = ("uniform", "popularity")


@dataclass(frozen=True)
class TrainConfig:
    model: str = DEFAULT_MODEL
    embedding: str = "jpq"  # jpq | full
    d: int = 512
    max_len: int = 200
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int | None = None  # None: equal to d
    dropout: float = 0.5
    batch_size: int = 128
    lr: float = 1e-3
    loss: str = "bce"  # bce | gbce | ce (models/objective.py)
    negatives: int = 1
    gbce_t: float = 0.0
    negatives_per: str = "position"
    negative_sampling: str = "uniform"  # uniform | popularity (proportional to training counts)
    logq_correction: bool | None = None  # sampled softmax: subtract log q; None: on for popularity sampling
    mask_prob: float = 0.2
    tie_embeddings: bool = False
    val_users: int = 1024
    patience: int = 20
    seed: int = 0
    pos_init_std: float = 0.05
    centroid_init: float = 0.05  # JPQ centroids start uniform in +-centroid_init (official code: 0.05)
    # Start from the codes' k-means centroids (svd-kmeans codes only), rescaled to the std of that uniform init.
    init_centroids: bool = True
    weight_decay: float = 0.0
    item_lr: float | None = None  # Adam lr of the item embedding (JPQ centroids / dense tables); None: lr
    grad_clip: float = 0.0  # 0: off
    steps_per_epoch: int = 0  # 0: one pass over the training users
    compile: bool = False  # torch.compile the training step (model + objective); off unless measured to win
    log_every: int = 10  # steps between progress updates: the loop's one device-to-host synchronisation
    # Added to every logit inside BCE/gBCE (never to ranking scores). None: -log(negatives), so the
    # negatives' summed gradient starts comparable to the positive's (prior-probability initialisation).
    logit_shift: float | None = None

    def resolved_logq(self) -> bool:
        """Whether sampled softmax corrects logits by the negatives' sampling log-probability."""
        return self.negative_sampling == "popularity" if self.logq_correction is None else self.logq_correction

    def resolved_ffn_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else self.d

    def resolved_logit_shift(self) -> float:
        if self.logit_shift is not None:
            return self.logit_shift
        return -math.log(self.negatives) if self.negatives > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The keys this model reads (the common ones and its own), as ``config.yaml`` stores them."""
        own = model_keys(self.model)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in MODEL_KEYS or k in own}


MODEL_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(s.defaults) for name, s in SPECS.items()}

_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
_KEYS = tuple(_FIELD_TYPES)


def model_keys(model: str) -> tuple[str, ...]:
    """The model-specific keys ``model`` reads."""
    s = SPECS[model]
    return (*s.keys, *s.task.keys)


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check and convert one value to its key's type."""
    t = _FIELD_TYPES[key]
    t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    bad = ConfigError(f"{source}: '{key}' must be {t.replace(' | None', ' or null')}, got {value!r}")
    if "None" in t and value is None:
        return None
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if t.startswith("float"):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise bad
        return value
    if t == "str":
        if not isinstance(value, str):
            raise bad
        return value
    raise AssertionError(f"unhandled type {t}")  # pragma: no cover


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict, values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set '{item}': value is not valid YAML") from None
    return out


def _check_keys(d: dict[str, Any], source: str, model: str | None = None) -> None:
    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
    if model is not None:
        foreign = sorted((set(d) & set(MODEL_KEYS)) - set(model_keys(model)))
        if foreign:
            own = ", ".join(model_keys(model)) or "none"
            raise ConfigError(f"{source}: {', '.join(foreign)} not used by model {model} (its own keys: {own})")


def build_config(model: str, *, config_file: Path | None = None, overrides: dict[str, Any] | None = None,
                 flags: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve the configuration with the documented precedence, checking keys, types and ranges."""
    if model not in MODELS:
        raise ConfigError(f"unknown model '{model}'; valid models: {', '.join(MODELS)}")
    values: dict[str, Any] = {"model": model} | MODEL_DEFAULTS[model]
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), read_yaml(Path(config_file), "config file")))
    if overrides:
        layers.append(("--set", overrides))
    if flags:
        layers.append(("option", {k: v for k, v in flags.items() if v is not None}))
    for source, layer in layers:
        _check_keys(layer, source, model)
        for k, v in layer.items():
            if k == "model" and v != model:
                raise ConfigError(f"{source}: model '{v}' contradicts --model {model}")
            values[k] = _coerce(k, v, source)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.model in MODELS, f"model must be one of {', '.join(MODELS)}, got '{cfg.model}'"),
        (cfg.embedding in EMBEDDINGS, f"embedding must be one of {', '.join(EMBEDDINGS)}, got '{cfg.embedding}'"),
        (cfg.d >= 1, "d must be >= 1"),
        (cfg.max_len >= 2, "max_len must be >= 2"),
        (cfg.num_blocks >= 1, "num_blocks must be >= 1"),
        (cfg.num_heads >= 1 and cfg.d % cfg.num_heads == 0, f"d={cfg.d} must be divisible by num_heads={cfg.num_heads}"),
        (cfg.resolved_ffn_dim() >= 1, "ffn_dim must be >= 1"),
        (0.0 <= cfg.dropout < 1.0, "dropout must be in [0, 1)"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.lr > 0, "lr must be > 0"),
        (cfg.negatives >= 0, "negatives must be >= 0 (0: full softmax with loss=ce)"),
        (0.0 <= cfg.gbce_t <= 1.0, "gbce_t must be in [0, 1]"),
        (cfg.negatives_per in NEGATIVES_PER, f"negatives_per must be one of {', '.join(NEGATIVES_PER)}, "
                                             f"got {cfg.negatives_per!r}"),
        (cfg.negative_sampling in NEGATIVE_SAMPLING, f"negative_sampling must be one of "
                                                     f"{', '.join(NEGATIVE_SAMPLING)}, got {cfg.negative_sampling!r}"),
        (0.0 < cfg.mask_prob < 1.0, "mask_prob must be in (0, 1)"),
        (cfg.val_users >= 1, "val_users must be >= 1"),
        (cfg.patience >= 1, "patience must be >= 1"),
        (cfg.seed >= 0, "seed must be >= 0"),
        (cfg.weight_decay >= 0, "weight_decay must be >= 0"),
        (cfg.item_lr is None or cfg.item_lr > 0, "item_lr must be > 0 (or null: lr)"),
        (cfg.grad_clip >= 0, "grad_clip must be >= 0"),
        (cfg.steps_per_epoch >= 0, "steps_per_epoch must be >= 0"),
        (cfg.log_every >= 1, "log_every must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    problem = objective.check(cfg)
    if problem:
        raise ConfigError(problem)


def _saved_defaults(model: str, saved: dict[str, Any]) -> dict[str, Any]:
    """Defaults for keys a saved config lacks: the model's, except that a run written before ``loss`` existed
    trained its next-item negatives with gBCE when ``gbce_t`` was set (BCE is gBCE with t = 0)."""
    out = dict(MODEL_DEFAULTS[model])
    if "loss" not in saved and saved.get("negatives", out.get("negatives", 1)):
        out["loss"] = "gbce" if float(saved.get("gbce_t", out.get("gbce_t", 0.0))) > 0 else out.get("loss", "bce")
    return out


def from_dict(d: dict[str, Any], source: str) -> TrainConfig:
    """A saved (resolved) config, checked; keys it lacks take the model's defaults."""
    _check_keys(d, source)
    model = d.get("model", DEFAULT_MODEL)
    if model not in MODELS:
        raise ConfigError(f"{source}: unknown model '{model}'; valid models: {', '.join(MODELS)}")
    values = {k: v for k, v in _saved_defaults(model, d).items() if k not in d} | dict(d)
    cfg = TrainConfig(**{k: _coerce(k, v, source) for k, v in values.items()})
    validate(cfg)
    return cfg
