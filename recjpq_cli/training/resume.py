"""Resuming a run: its saved config (what may change, what must repeat), the checkpoint's state restored, and
the budget already spent."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from recjpq_cli.checkpoint import load_checkpoint
from recjpq_cli.config import TrainConfig, build_config, from_dict
from recjpq_cli.data.io import read_yaml
from recjpq_cli.dataset_record import DATASET_KEY, FINGERPRINT_KEY
from recjpq_cli.errors import ConfigError, InputError, first_line
from recjpq_cli.runfolder import CONFIG, LAST

MAY_CHANGE = ("patience", "log_every")  # honoured on resume; every other key must repeat the run's value


@dataclass
class State:
    """Where the loop stands: saved in every checkpoint, restored on resume."""

    epoch: int = 0
    step: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    elapsed_before: float = 0.0


def _saved_config(run: Path) -> tuple[TrainConfig, str | None]:
    saved = read_yaml(run / CONFIG, "run config")
    codes_saved = saved.pop("codes", None)
    for key in (DATASET_KEY, FINGERPRINT_KEY):  # where the dataset was: a record, not config
        saved.pop(key, None)
    return from_dict(saved, str(run / CONFIG)), codes_saved


def _check_request(req: Any, cfg: TrainConfig, codes_saved: str | None) -> None:
    if req.model is not None and req.model != cfg.model:
        raise ConfigError(f"--resume: --model {req.model} differs from the run's model {cfg.model}")
    emb_req = req.embedding or ("jpq" if req.codes else None)
    if emb_req is not None and emb_req != cfg.embedding:
        raise ConfigError(f"--resume: embedding {emb_req} differs from the run's {cfg.embedding}")
    if req.codes is not None and codes_saved and Path(req.codes).resolve() != Path(codes_saved).resolve():
        raise ConfigError(f"--resume: --codes {req.codes} differs from the run's codes {codes_saved}")


def _apply_changes(req: Any, cfg: TrainConfig) -> TrainConfig:
    """The keys a resume may change (MAY_CHANGE); any other key given must repeat the run's value."""
    if req.config_file is not None or req.overrides:
        again = build_config(cfg.model, config_file=req.config_file, overrides=req.overrides)
        given = set(req.overrides) | (set(read_yaml(req.config_file)) if req.config_file else set())
        for k in sorted(given - set(MAY_CHANGE)):
            if getattr(again, k) != getattr(cfg, k):
                raise ConfigError(f"--resume: {k}={getattr(again, k)!r} differs from the run's "
                                  f"{k}={getattr(cfg, k)!r} (only budgets, device, patience and quiet may change)")
        cfg = replace(cfg, **{k: getattr(again, k) for k in given & set(MAY_CHANGE)})
    if req.patience is not None:
        cfg = replace(cfg, patience=req.patience)
    return cfg


def resolve(req: Any, meta: dict[str, Any]) -> tuple[TrainConfig, Path | None, dict | None, dict]:
    """A resumed run's config, codes path, codes sidecar (as saved) and last checkpoint."""
    run = req.out
    if not (run / CONFIG).is_file() or not (run / LAST).is_file():
        raise InputError(f"{run}: nothing to resume ({CONFIG} or {LAST} missing)")
    cfg, codes_saved = _saved_config(run)
    _check_request(req, cfg, codes_saved)
    cfg = _apply_changes(req, cfg)
    ckpt = load_checkpoint(run / LAST)
    if ckpt["dataset_fingerprint"] != meta["fingerprint"]:
        raise InputError(f"{run / LAST}: the run was trained on another dataset than {req.dataset}")
    check_config_matches(run, cfg, ckpt)
    return cfg, Path(codes_saved) if codes_saved else None, ckpt.get("codes_meta"), ckpt


def check_config_matches(run: Path, cfg: TrainConfig, ckpt: dict[str, Any]) -> None:
    """``config.yaml`` must still say what ``last.pt`` was trained with (an edited file is refused)."""
    saved = {k: v for k, v in dict(ckpt["config"]).items() if k != "codes"}
    try:
        trained = from_dict(saved, f"{run / LAST} config")
    except ConfigError as e:
        raise InputError(f"{run / LAST}: its config does not load ({e})") from None
    for k, v in trained.to_dict().items():
        if k not in MAY_CHANGE and getattr(cfg, k) != v:
            raise InputError(f"{run / CONFIG}: {k}={getattr(cfg, k)!r}, but {LAST} was trained with {k}={v!r}; "
                             f"restore {CONFIG} (or start a new run)")


def restore(ckpt: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
            run: Path) -> State:
    """Weights, optimiser and RNG from ``last.pt``; a tensor that does not fit the run's config is one error."""
    try:
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise InputError(f"{run / LAST}: its tensors do not match the run's {CONFIG} ({first_line(e, 160)}); "
                         f"restore {CONFIG} or start a new run") from None
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())
    return State(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), best=float(ckpt["best_metric"]),
                 bad_epochs=int(ckpt.get("bad_epochs", 0)), elapsed_before=float(ckpt.get("elapsed_s", 0.0)))


def budget_spent(req: Any, ckpt: dict[str, Any] | None) -> str | None:
    """Why a resumed run has nothing left to do, or None."""
    if ckpt is None:
        return None
    step, epoch, elapsed = int(ckpt["step"]), int(ckpt["epoch"]), float(ckpt.get("elapsed_s", 0.0))
    if req.max_steps is not None and step >= req.max_steps:
        return f"it has run {step} of --max-steps {req.max_steps} steps"
    if req.max_epochs is not None and epoch >= req.max_epochs:
        return f"it has run {epoch} of --max-epochs {req.max_epochs} epochs"
    if req.time_limit is not None and elapsed >= req.time_limit:
        return f"it has trained {elapsed:.0f} s of --time-limit {req.time_limit:g}"
    return None
