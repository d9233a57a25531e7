"""The training configuration: one frozen dataclass, flat keys, defaults per model.

Precedence: command-line flag > ``--set key=value`` > ``--config`` file > model default.
Values of ``--set`` are parsed as YAML (never evaluated). Unknown keys and wrong types are errors.
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

MODELS = ("sasrec", "gsasrec", "bert4rec")
NEGATIVES_PER = ("position", "sequence")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "sasrec"
    embedding: str = "jpq"  # jpq | full
    d: int = 512
    max_len: int = 200
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int | None = None  # None: equal to d
    dropout: float = 0.5
    batch_size: int = 128
    lr: float = 1e-3
    negatives: int = 1
    gbce_t: float = 0.0
    negatives_per: str = "position"
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
    log_every: int = 10  # steps between progress updates: the loop's one device-to-host synchronisation
    # Added to every logit inside BCE/gBCE (never to ranking scores). None: -log(negatives), so the
    # negatives' summed gradient starts comparable to the positive's (prior-probability initialisation).
    logit_shift: float | None = None

    def resolved_ffn_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else self.d

    def resolved_logit_shift(self) -> float:
        if self.logit_shift is not None:
            return self.logit_shift
        return -math.log(self.negatives) if self.negatives > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sasrec": {},
    "gsasrec": {"negatives": 256, "gbce_t": 0.75},
    "bert4rec": {"num_blocks": 3, "num_heads": 2, "ffn_dim": 128, "dropout": 0.2, "batch_size": 64,
                 "lr": 1e-4, "negatives": 0},
}

_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
_KEYS = tuple(_FIELD_TYPES)


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
    if t == "bool":
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


def _check_keys(d: dict[str, Any], source: str) -> None:
    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")


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
        _check_keys(layer, source)
        for k, v in layer.items():
            if k == "model" and v != model:
                raise ConfigError(f"{source}: model '{v}' contradicts --model {model}")
            values[k] = _coerce(k, v, source)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.embedding in ("jpq", "full"), f"embedding must be jpq or full, got '{cfg.embedding}'"),
        (cfg.d >= 1, "d must be >= 1"),
        (cfg.max_len >= 2, "max_len must be >= 2"),
        (cfg.num_blocks >= 1, "num_blocks must be >= 1"),
        (cfg.num_heads >= 1 and cfg.d % cfg.num_heads == 0, f"d={cfg.d} must be divisible by num_heads={cfg.num_heads}"),
        (cfg.resolved_ffn_dim() >= 1, "ffn_dim must be >= 1"),
        (0.0 <= cfg.dropout < 1.0, "dropout must be in [0, 1)"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.lr > 0, "lr must be > 0"),
        (cfg.negatives >= (0 if cfg.model == "bert4rec" else 1), "negatives must be >= 1"),
        (0.0 <= cfg.gbce_t <= 1.0, "gbce_t must be in [0, 1]"),
        (cfg.negatives_per in NEGATIVES_PER, f"negatives_per must be one of {', '.join(NEGATIVES_PER)}"),
        (0.0 < cfg.mask_prob < 1.0, "mask_prob must be in (0, 1)"),
        (cfg.val_users >= 1, "val_users must be >= 1"),
        (cfg.patience >= 1, "patience must be >= 1"),
        (cfg.weight_decay >= 0, "weight_decay must be >= 0"),
        (cfg.item_lr is None or cfg.item_lr > 0, "item_lr must be > 0 (or null: lr)"),
        (cfg.grad_clip >= 0, "grad_clip must be >= 0"),
        (cfg.steps_per_epoch >= 0, "steps_per_epoch must be >= 0"),
        (cfg.log_every >= 1, "log_every must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def from_dict(d: dict[str, Any], source: str) -> TrainConfig:
    """A saved (resolved) config, checked."""
    _check_keys(d, source)
    cfg = TrainConfig(**{k: _coerce(k, v, source) for k, v in d.items()})
    validate(cfg)
    return cfg
