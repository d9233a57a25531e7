"""``train``: fit a sequential recommender with RecJPQ or dense item embeddings.

The loop validates (NDCG@10 / Recall@10 over the whole catalogue on a fixed sample of users) after each
epoch and at every stop, writes ``last.pt`` then, and ``best.pt`` on improvement. Resume is exact: the data
order comes from (seed, epoch), negatives from a counter-based hash, and the torch RNG state is saved.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recjpq_cli import distributed as dist
from recjpq_cli.checkpoint import load_checkpoint, save_checkpoint
from recjpq_cli.config import TrainConfig, build_config, from_dict
from recjpq_cli.data import sequences
from recjpq_cli.data.io import dump_yaml, read_yaml
from recjpq_cli.data.schema import CHECKPOINT_FORMAT_VERSION, Dataset, load_dataset, read_dataset_meta
from recjpq_cli.errors import ConfigError, InputError, OutputExistsError, ResourceError
from recjpq_cli.memory import GIB, available_bytes, estimate
from recjpq_cli.metrics import ndcg_at_k, recall_at_k
from recjpq_cli.models import losses
from recjpq_cli.models.registry import build_model, count_parameters, model_args_from_config
from recjpq_cli.negatives import uniform_negatives
from recjpq_cli.ranking import target_ranks

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
TARGET_METRIC = "NDCG@10"
VAL_BATCH = 256


@dataclass(frozen=True)
class TrainRequest:
    dataset: Path
    out: Path
    codes: Path | None = None
    embedding: str | None = None  # 'full' for the dense baseline; None: jpq when codes are given
    model: str | None = None
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    max_epochs: int | None = None
    max_steps: int | None = None
    time_limit: float | None = None
    patience: int | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


@dataclass
class TrainResult:
    run_dir: Path
    model: str
    embedding: str
    device: str
    epochs: int
    steps: int
    elapsed_s: float
    stop_reason: str
    best_metric: float
    last_metrics: dict[str, float]
    parameters: dict[str, int]
    world_size: int = 1
    last_loss: float = float("nan")
    step_s: float = float("nan")  # mean seconds per optimiser step in this invocation, validation excluded

    def facts(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "model": self.model, "embedding": self.embedding,
                "device": self.device, "epochs": self.epochs, "steps": self.steps, "elapsed_s": self.elapsed_s,
                "stop_reason": self.stop_reason, f"best_{TARGET_METRIC}": self.best_metric,
                "last_validation": self.last_metrics, "parameters": self.parameters,
                "world_size": self.world_size, "last_loss": self.last_loss, "step_s": self.step_s}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------- set-up
def _resolve(req: TrainRequest, meta: dict[str, Any]) -> tuple[TrainConfig, Path | None, dict | None, dict | None]:
    """The run's config, codes path, codes sidecar and (on resume) the last checkpoint."""
    run = req.out
    if req.resume:
        if not (run / CONFIG).is_file() or not (run / LAST).is_file():
            raise InputError(f"{run}: nothing to resume ({CONFIG} or {LAST} missing)")
        saved = read_yaml(run / CONFIG, "run config")
        codes_saved = saved.pop("codes", None)
        cfg = from_dict(saved, str(run / CONFIG))
        if req.model is not None and req.model != cfg.model:
            raise ConfigError(f"--resume: --model {req.model} differs from the run's model {cfg.model}")
        emb_req = req.embedding or ("jpq" if req.codes else None)
        if emb_req is not None and emb_req != cfg.embedding:
            raise ConfigError(f"--resume: embedding {emb_req} differs from the run's {cfg.embedding}")
        if req.codes is not None and codes_saved and Path(req.codes).resolve() != Path(codes_saved).resolve():
            raise ConfigError(f"--resume: --codes {req.codes} differs from the run's codes {codes_saved}")
        if req.config_file is not None or req.overrides:
            again = build_config(cfg.model, config_file=req.config_file, overrides=req.overrides)
            given = set(req.overrides) | (set(read_yaml(req.config_file)) if req.config_file else set())
            for k in sorted(given):
                if k in ("patience",):
                    continue
                if getattr(again, k) != getattr(cfg, k):
                    raise ConfigError(f"--resume: {k}={getattr(again, k)!r} differs from the run's "
                                      f"{k}={getattr(cfg, k)!r} (only budgets, device, patience and quiet may change)")
        if req.patience is not None:
            cfg = replace(cfg, patience=req.patience)
        ckpt = load_checkpoint(run / LAST)
        if ckpt["dataset_fingerprint"] != meta["fingerprint"]:
            raise InputError(f"{run / LAST}: the run was trained on another dataset than {req.dataset}")
        codes_path = Path(codes_saved) if codes_saved else None
        return cfg, codes_path, ckpt.get("codes_meta"), ckpt
    if run.exists() and not req.overwrite:
        raise OutputExistsError(f"{run}: run folder already exists (use --resume to continue it or --overwrite)")
    if not run.parent.exists():
        raise InputError(f"{run.parent}: folder for the run does not exist")
    embedding = req.embedding or ("jpq" if req.codes is not None else None)
    if embedding is None:
        raise ConfigError("give --codes CODES.npy for RecJPQ embeddings, or --embedding full for the dense baseline")
    if embedding == "jpq" and req.codes is None:
        raise ConfigError("--embedding jpq needs --codes CODES.npy (make one with `recjpq assign`)")
    if embedding == "full" and req.codes is not None:
        raise ConfigError("--codes cannot be combined with --embedding full")
    flags = {"embedding": embedding, "patience": req.patience}
    cfg = build_config(req.model or "sasrec", config_file=req.config_file, overrides=req.overrides, flags=flags)
    return cfg, req.codes, None, None


def _load_codes(cfg: TrainConfig, codes_path: Path | None, meta: dict[str, Any]) -> tuple[torch.Tensor | None, dict | None]:
    if cfg.embedding != "jpq":
        return None, None
    from recjpq_cli.data.codes import load_codes

    assert codes_path is not None
    codes, side = load_codes(Path(codes_path), meta)
    m = codes.shape[1]
    if cfg.d % m:
        raise ConfigError(f"d={cfg.d} is not divisible by the code length M={m} of {codes_path}")
    t = torch.from_numpy(codes.astype(np.int32) if codes.dtype == np.uint16 else codes)
    return t, side


def _load_init_centroids(cfg: TrainConfig, codes_path: Path | None, side: dict | None) -> torch.Tensor | None:
    """The svd-kmeans starting centroids, rescaled to the uniform init's std; None when there are none to use."""
    if side is None or codes_path is None or not cfg.init_centroids:
        return None
    from recjpq_cli.data.codes import load_init_centroids

    c = load_init_centroids(Path(codes_path), side)
    if c is None:
        return None
    d = c.shape[0] * c.shape[2]
    if d != cfg.d:
        raise ConfigError(f"{codes_path}: its initial centroids were made for d={d} (assign --dim), this run has "
                          f"d={cfg.d}; train with --set d={d}, assign again with --dim {cfg.d}, or pass "
                          f"--set init_centroids=false")
    t = torch.from_numpy(c)
    std = float(t.std())
    return t * (cfg.centroid_init / math.sqrt(3.0) / std) if std > 0 else t


def _check_memory(cfg: TrainConfig, meta: dict[str, Any], codes: torch.Tensor | None, ksub: int | None,
                  device: torch.device) -> None:
    est = estimate(cfg, int(meta["n_items"]), int(meta["n_interactions"]),
                   codes.shape[1] if codes is not None else None, ksub)
    free = available_bytes(str(device))
    if est.total > free:
        hint = ("train with RecJPQ codes (--codes) instead of --embedding full"
                if cfg.embedding == "full" else "lower batch_size, max_len or negatives with --set")
        raise ResourceError(f"this run needs about {est.describe()}, but only {free / GIB:.1f} GiB is free on "
                            f"{device}; {hint}")


# ------------------------------------------------------------------------------------------- validation
class Validator:
    """NDCG@10 / Recall@10 over the whole catalogue, on a fixed, seeded sample of validation users."""

    def __init__(self, ds: Dataset, cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1):
        users, pos = sequences.eval_targets(ds, "val")
        rng = np.random.default_rng(cfg.seed)
        if len(users) > cfg.val_users:
            pick = np.sort(rng.choice(len(users), cfg.val_users, replace=False))
            users, pos = users[pick], pos[pick]
        self.users, self.pos = users[rank::world], pos[rank::world]
        self.ds, self.cfg, self.device = ds, cfg, device

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        was = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        for s in range(0, len(self.users), VAL_BATCH):
            u, p = self.users[s:s + VAL_BATCH], self.pos[s:s + VAL_BATCH]
            hist = sequences.histories(self.ds, u, p, self.cfg.max_len).to(self.device)
            rows, items = sequences.seen_items(self.ds, u, p)
            with _autocast(self.device):
                h = model.encode(hist)
            h = h.float()
            tgt = torch.from_numpy(self.ds.item[p].astype(np.int64)).to(self.device)
            ranks = target_ranks(model.items, h, tgt, rows.to(self.device), items.to(self.device)).cpu()
            sums += torch.stack([ndcg_at_k(ranks, 10).sum(), recall_at_k(ranks, 10).sum(),
                                 torch.tensor(float(len(u)), dtype=torch.float64)])
        sums = dist.all_reduce_sum(sums, self.device)
        model.train(was)
        n = max(1.0, float(sums[2]))
        return {"NDCG@10": float(sums[0]) / n, "Recall@10": float(sums[1]) / n}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ------------------------------------------------------------------------------------------------ loss
def make_batch(cfg: TrainConfig, ds: Dataset, users: np.ndarray, n_train: np.ndarray, step: int,
               n_items: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of one training batch (numpy windows -> device), negatives or masks included."""
    if cfg.model == "bert4rec":
        seq = sequences.masked_batch(ds, users, cfg.max_len, n_train).to(device)
        real = seq != 0
        mask = (torch.rand(seq.shape, device=device) < cfg.mask_prob) & real
        mask[:, -1] |= real[:, -1]  # always predict the last item too: the task at inference
        return {"seq": seq, "mask": mask}
    inp, tgt = sequences.train_batch(ds, users, cfg.max_len, n_train)
    u = torch.from_numpy(users).to(device)
    negs = uniform_negatives(cfg.seed, step, u, cfg.max_len, cfg.negatives, n_items,
                             per_position=cfg.negatives_per == "position")
    return {"inp": inp.to(device), "tgt": tgt.to(device), "negs": negs}


class LossModule(torch.nn.Module):
    """The model plus its training loss in ``forward``, so DDP sees (and synchronises) the whole step."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
        super().__init__()
        self.model, self.cfg, self.device = model, cfg, device

    def forward(self, denom: float | None = None, **batch: torch.Tensor) -> torch.Tensor:
        """The batch loss; ``denom`` (the valid positions of the whole global batch / world size) makes
        DDP's gradient average equal the gradient of one process with the whole batch."""
        model, cfg = self.model, self.cfg
        items = model.items
        if cfg.model == "bert4rec":
            seq, mask = batch["seq"], batch["mask"]
            inp = torch.where(mask, torch.full_like(seq, items.n_items + 1), seq)
            with _autocast(self.device):
                h = model.hidden(inp)
            logits = items.score_all(h[mask].float())  # (N, n_items + 1)
            logits[:, 0] = float("-inf")
            target = seq[mask]
            return losses.softmax_ce(logits, target, torch.ones_like(target, dtype=torch.bool))
        inp, tgt, negs = batch["inp"], batch["tgt"], batch["negs"]
        with _autocast(self.device):
            h = model.hidden(inp)
        h = h.float()
        pos = items.score(h, tgt.unsqueeze(-1))[..., 0]
        neg = items.score(h, negs) if negs.dim() == 3 else items.score_shared(h, negs)
        valid = (tgt != 0) & (inp != 0)  # a real target after a real input item
        shift = cfg.resolved_logit_shift()
        if shift:
            pos, neg = pos + shift, neg + shift
        return losses.gbce(pos, neg, valid, n_items=items.n_items, t=cfg.gbce_t, denom=denom)


# ----------------------------------------------------------------------------------------------- the loop
def run(req: TrainRequest, progress_cb: Any = None) -> TrainResult:
    t_start = time.perf_counter()
    ctx = dist.init(req.device)  # single process unless launched by torchrun
    meta = read_dataset_meta(req.dataset)
    cfg, codes_path, codes_meta, ckpt = _resolve(req, meta)
    device = ctx.device if ctx.world_size > 1 else resolve_device(req.device)
    codes, side = _load_codes(cfg, codes_path, meta)
    codes_meta = side if side is not None else codes_meta
    ksub = int(codes_meta["ksub"]) if codes_meta else None
    hint = None
    if side is not None and ckpt is None:  # codes for another d: an Error with the assign command, or a hint
        from recjpq_cli.data.codes import check_codes_for_d

        hint = check_codes_for_d(side, Path(codes_path), req.dataset, cfg.d, use_centroids=cfg.init_centroids)
    init_centroids = _load_init_centroids(cfg, codes_path, side) if ckpt is None else None
    _check_memory(cfg, meta, codes, ksub, device)
    ds = load_dataset(req.dataset)

    torch.manual_seed(cfg.seed)
    n_items = ds.n_items
    args = model_args_from_config(cfg, n_items, tuple(codes.shape) if codes is not None else None, ksub)
    model = build_model(args, codes).to(device)
    if init_centroids is not None:
        with torch.no_grad():
            model.items.centroids.copy_(init_centroids)
    item_params = list(model.items.parameters())
    ids = {id(p) for p in item_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids]},
              {"params": item_params, "lr": cfg.item_lr if cfg.item_lr is not None else cfg.lr}]
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = sequences.train_lengths(ds)
    trainable = sequences.trainable_users(ds) if cfg.model != "bert4rec" else np.flatnonzero(n_train >= 1)
    if len(trainable) == 0:
        raise InputError(f"{req.dataset}: no user has enough training interactions to train on")
    world, rank = ctx.world_size, ctx.rank
    per_step = cfg.batch_size * world
    steps_per_epoch = cfg.steps_per_epoch or (len(trainable) // per_step if world > 1 else math.ceil(len(trainable) / per_step))
    steps_per_epoch = max(1, steps_per_epoch)

    epoch, step, best, elapsed_before, bad_epochs = 0, 0, -1.0, 0.0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt["best_metric"])
        elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        bad_epochs = int(ckpt.get("bad_epochs", 0))
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())

    step_module = dist.wrap(LossModule(model, cfg, device), ctx)
    validator = Validator(ds, cfg, device, rank, world)
    run_dir = req.out
    if ctx.is_main:
        _prepare_run_dir(req, cfg, codes_path)
        if world > 1 and not req.quiet:
            from recjpq_cli.console import console

            console().print(f"distributed: {world} processes ({ctx.device.type}); batch_size {cfg.batch_size} per process, "
                            f"effective batch {world * cfg.batch_size}; learning rate not scaled; --max-steps counts "
                            f"optimiser steps; {steps_per_epoch} steps an epoch", highlight=False)
    dist.barrier(ctx)
    if hint and ctx.is_main and not req.quiet:  # after every check: a failed run prints only its Error line
        from recjpq_cli.console import console

        console().print(hint, soft_wrap=True, highlight=False)

    def checkpoint(path: Path, metrics_now: dict[str, float]) -> None:
        if not ctx.is_main:
            return
        rng: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(path, {
            "format_version": CHECKPOINT_FORMAT_VERSION, "model": cfg.model, "embedding": cfg.embedding,
            "model_args": args, "config": cfg.to_dict() | {"codes": str(codes_path) if codes_path else None},
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "rng": rng, "epoch": epoch, "step": step, "best_metric": best,
            "bad_epochs": bad_epochs, "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
            "dataset_fingerprint": ds.fingerprint, "codes_meta": codes_meta, "world_size": world,
            "metrics": metrics_now, "last_loss": last_loss,
        })

    def validate_and_save(train_loss: float, epoch_end: bool) -> dict[str, float]:
        nonlocal best, bad_epochs
        m = validator(model)
        elapsed = elapsed_before + (time.perf_counter() - t_start)
        improved = m[TARGET_METRIC] > best
        if improved:
            best = m[TARGET_METRIC]
            bad_epochs = 0
        elif epoch_end:
            bad_epochs += 1
        if ctx.is_main:
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": step, "elapsed_s": round(elapsed, 3),
                                    "train_loss": train_loss if math.isfinite(train_loss) else None,
                                    **m}) + "\n")
            checkpoint(run_dir / LAST, m)
            if improved or not (run_dir / BEST).exists():
                shutil.copyfile(run_dir / LAST, run_dir / BEST)
        return m

    max_steps = req.max_steps
    model.train()
    stop_reason, last_metrics, loss_sum, loss_n, last_loss = "max_epochs", {}, 0.0, 0, float("nan")
    step_seconds, steps_here = 0.0, 0  # time in optimiser steps only (no validation), this invocation
    in_epoch = step - epoch * steps_per_epoch if ckpt is not None else 0
    progress = progress_cb(steps_per_epoch, max_steps, req.time_limit) if (progress_cb and ctx.is_main) else None
    restore_sigterm = _sigterm_as_interrupt() if world == 1 else (lambda: None)
    try:
        while True:
            if req.max_epochs is not None and epoch >= req.max_epochs:
                stop_reason = "max_epochs"
                break
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(trainable)
            if progress:
                progress.start_epoch(epoch, in_epoch)
            stopped = False
            for i in range(in_epoch, steps_per_epoch):
                if max_steps is not None and step >= max_steps:
                    stop_reason, stopped = "max_steps", True
                    break
                if req.time_limit is not None and elapsed_before + time.perf_counter() - t_start >= req.time_limit:
                    stop_reason, stopped = "time_limit", True
                    break
                lo = (i * per_step) % len(perm)
                batch = perm[lo:lo + per_step]
                if len(batch) < per_step and cfg.steps_per_epoch:
                    batch = np.concatenate([batch, perm[: per_step - len(batch)]])
                denom = None
                if world > 1 and cfg.model != "bert4rec":
                    denom = max(1.0, float(np.minimum(n_train[batch] - 1, cfg.max_len).sum())) / world
                    batch = batch[rank::world]
                elif world > 1:
                    batch = batch[rank::world]
                t_step = time.perf_counter()
                loss = step_module(denom=denom, **make_batch(cfg, ds, batch, n_train, step, n_items, device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                lv = float(dist.all_reduce_sum(loss.detach().reshape(1), device)[0]) / world
                step_seconds += time.perf_counter() - t_step
                steps_here += 1
                loss_sum += lv
                last_loss = lv
                loss_n += 1
                if progress:
                    progress.advance(step, lv, len(batch) * world)
            if stopped:
                break
            epoch += 1
            in_epoch = 0
            last_metrics = validate_and_save(loss_sum / max(1, loss_n), epoch_end=True)
            loss_sum, loss_n = 0.0, 0
            if progress:
                progress.end_epoch(epoch, last_metrics, best)
            if bad_epochs >= cfg.patience:
                stop_reason = "early_stop"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        restore_sigterm()
    if loss_n or not last_metrics:  # steps since the last validation, or none yet: validate at the stop
        last_metrics = validate_and_save(loss_sum / loss_n if loss_n else float("nan"), epoch_end=False)
    if progress:
        progress.close()
    dist.barrier(ctx)
    elapsed = elapsed_before + time.perf_counter() - t_start
    result = TrainResult(run_dir=run_dir, model=cfg.model, embedding=cfg.embedding, device=str(device),
                         epochs=epoch, steps=step, elapsed_s=elapsed, stop_reason=stop_reason,
                         best_metric=best, last_metrics=last_metrics, parameters=count_parameters(model),
                         world_size=world, last_loss=last_loss,
                         step_s=step_seconds / steps_here if steps_here else float("nan"))
    # The DDP wrapper's reducer holds the process group: drop it first, so that gloo's worker threads are
    # joined now, not during interpreter exit (where they could abort the process after a finished run).
    del step_module
    dist.shutdown(ctx)
    return result


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's time limit, `kill`, `timeout`) stops training like Ctrl-C: validate, save, exit 130.

    Only in a single process, from the main thread (torchrun's agent manages its workers' signals itself).
    Returns a function that puts the previous handler back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _prepare_run_dir(req: TrainRequest, cfg: TrainConfig, codes_path: Path | None) -> None:
    """Create (or, with --overwrite, replace) the run folder once every check has passed."""
    run = req.out
    if req.resume:
        return
    if run.exists():
        if not (run / CONFIG).is_file() and any(run.iterdir()):
            raise OutputExistsError(f"{run}: exists and is not a recjpq run folder; refusing to overwrite it")
        shutil.rmtree(run)
    tmp = run.with_name(f".{run.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    conf = cfg.to_dict() | {"codes": str(Path(codes_path).resolve()) if codes_path else None}
    (tmp / CONFIG).write_text(dump_yaml(conf))
    os.replace(tmp, run)
