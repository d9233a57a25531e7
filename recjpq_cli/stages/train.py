"""``train``: fit a sequential recommender with RecJPQ or dense item embeddings.

This module is the training loop; its units live in ``recjpq_cli/training/`` (set-up, resume, stop
signals, step health, saving, validation) and a model's objective in ``recjpq_cli/models/`` (a task and a
loss behind one interface), so nothing here knows a model by name. The loop validates (NDCG@10 / Recall@10 over the whole catalogue on a fixed sample of users) after each
epoch and at every stop, writes ``last.pt`` then, and ``best.pt`` on improvement (the run folder's rules:
``recjpq_cli/runfolder.py``). Resume is exact: the data order comes from (seed, epoch), negatives from a
counter-based hash, the torch RNG state is saved, and signals stop the loop only between two steps.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recjpq_cli import distributed as dist
from recjpq_cli import runfolder
from recjpq_cli.config import TrainConfig
from recjpq_cli.data import sequences
from recjpq_cli.data.io import dump_yaml
from recjpq_cli.data.schema import CHECKPOINT_FORMAT_VERSION, Dataset, load_dataset, read_dataset_meta
from recjpq_cli.dataset_record import record
from recjpq_cli.device import resolve_device
from recjpq_cli.errors import InputError, RecJPQError
from recjpq_cli.models import sampling
from recjpq_cli.models.objective import LossModule
from recjpq_cli.models.registry import build_model, count_parameters, model_args_from_config, spec
from recjpq_cli.models.sampling import Sampler
from recjpq_cli.runfolder import LAST, RunLock
from recjpq_cli.training import resume, setup
from recjpq_cli.training.health import StepStats, diverged, weights_finite
from recjpq_cli.training.saver import Saver
from recjpq_cli.training.signals import StopSignals
from recjpq_cli.training.validation import TARGET_METRIC, Validator

__all__ = ["LossModule", "TrainRequest", "TrainResult", "Validator", "resolve_device", "run"]


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
    message: str = ""  # said instead of the summary when there was nothing to do

    @classmethod
    def nothing_to_do(cls, req: TrainRequest, cfg: TrainConfig, ckpt: dict[str, Any], message: str) -> TrainResult:
        """A resumed run whose budget is already spent: nothing is trained or written."""
        return cls(run_dir=req.out, model=cfg.model, embedding=cfg.embedding, device=req.device,
                   epochs=int(ckpt["epoch"]), steps=int(ckpt["step"]), elapsed_s=float(ckpt.get("elapsed_s", 0.0)),
                   stop_reason="nothing_to_do", best_metric=float(ckpt["best_metric"]),
                   last_metrics=dict(ckpt.get("metrics") or {}), parameters={}, message=message)

    def facts(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "model": self.model, "embedding": self.embedding,
                "device": self.device, "epochs": self.epochs, "steps": self.steps, "elapsed_s": self.elapsed_s,
                "stop_reason": self.stop_reason, f"best_{TARGET_METRIC}": self.best_metric,
                "last_validation": self.last_metrics, "parameters": self.parameters,
                "world_size": self.world_size, "last_loss": self.last_loss, "step_s": self.step_s}


@dataclass
class _Run:
    """Everything one run's loop works with, built by ``_set_up``."""

    req: TrainRequest
    cfg: TrainConfig
    ctx: Any  # distributed.Context
    device: torch.device
    ds: Dataset
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    step_module: torch.nn.Module
    validator: Validator
    args: dict[str, Any]
    codes_path: Path | None
    codes_meta: dict | None
    saver: Saver
    st: resume.State
    n_train: np.ndarray
    trainable: np.ndarray
    steps_per_epoch: int
    t_start: float
    sampler: Sampler
    hint: str | None = None
    created_here: bool = False


def run(req: TrainRequest, progress_cb: Any = None) -> TrainResult:
    """Train as ``req`` says. Holds the run folder's lock from the first check to the end."""
    locks: list[RunLock] = []
    try:
        return _run(req, progress_cb, locks)
    finally:
        for held in locks:
            held.release()


def _run(req: TrainRequest, progress_cb: Any, locks: list[RunLock]) -> TrainResult:
    t_start = time.perf_counter()
    ctx = dist.init(req.device)  # single process unless launched by torchrun
    meta = read_dataset_meta(req.dataset)
    cfg, codes_path, codes_meta, ckpt = resume.resolve(req, meta) if req.resume else setup.resolve_new(req)
    spent = resume.budget_spent(req, ckpt)
    if spent is not None:
        return TrainResult.nothing_to_do(req, cfg, ckpt, f"{req.out}: nothing to do, {spent}")
    if ctx.is_main and req.resume:
        locks.append(runfolder.lock(req.out))
        runfolder.remove_temporaries(req.out)
    elif ctx.is_main and req.out.exists():
        runfolder.refuse_if_busy(req.out)
    r = _set_up(req, ctx, meta, cfg, codes_path, codes_meta, ckpt, t_start)
    if ctx.is_main and not req.resume:
        conf = cfg.to_dict() | {"codes": _codes_str(codes_path)} | record(req.dataset)
        locks.append(runfolder.create(req.out, req.overwrite, dump_yaml(conf)))
        r.created_here = True
    _announce(r)
    loop = _Loop(r)
    try:
        result = loop.train(progress_cb)
    except RecJPQError:
        if r.created_here and not (req.out / LAST).exists():  # nothing finite or resumable to keep
            shutil.rmtree(req.out, ignore_errors=True)
        raise
    # The DDP wrapper's reducer holds the process group: drop it first, so that gloo's worker threads are
    # joined now, not during interpreter exit (where they could abort the process after a finished run).
    del r, loop
    dist.shutdown(ctx)
    return result


def _codes_str(codes_path: Path | None) -> str | None:
    return str(Path(codes_path).resolve()) if codes_path else None


def _build(cfg: TrainConfig, n_items: int, codes: torch.Tensor | None, ksub: int | None,
           init_centroids: torch.Tensor | None, device: torch.device) -> tuple[dict[str, Any], torch.nn.Module]:
    torch.manual_seed(cfg.seed)
    args = model_args_from_config(cfg, n_items, tuple(codes.shape) if codes is not None else None, ksub)
    model = build_model(args, codes).to(device)
    if init_centroids is not None:
        with torch.no_grad():
            model.items.centroids.copy_(init_centroids)
    return args, model


def _steps_per_epoch(cfg: TrainConfig, trainable: int, world: int) -> int:
    per_step = cfg.batch_size * world
    n = cfg.steps_per_epoch or (trainable // per_step if world > 1 else math.ceil(trainable / per_step))
    return max(1, n)


def _set_up(req: TrainRequest, ctx: Any, meta: dict[str, Any], cfg: TrainConfig, codes_path: Path | None,
            codes_meta: dict | None, ckpt: dict | None, t_start: float) -> _Run:
    """Codes, memory check, data, model, optimiser and the restored state: every check before any write."""
    device = ctx.device if ctx.world_size > 1 else resolve_device(req.device)
    codes, side = setup.load_codes(cfg, codes_path, meta)
    codes_meta = side if side is not None else codes_meta
    ksub = int(codes_meta["ksub"]) if codes_meta else None
    hint = None
    if side is not None and ckpt is None:  # codes for another d: an Error with the assign command, or a hint
        from recjpq_cli.data.codes import check_codes_for_d

        hint = check_codes_for_d(side, Path(codes_path), req.dataset, cfg.d, use_centroids=cfg.init_centroids)
    init_centroids = setup.load_init_centroids(cfg, codes_path, side) if ckpt is None else None
    setup.check_negatives(cfg, meta, req.dataset)
    setup.check_memory(cfg, meta, codes, ksub, device)
    ds = load_dataset(req.dataset)
    args, model = _build(cfg, ds.n_items, codes, ksub, init_centroids, device)
    opt = setup.optimizer(model, cfg)
    n_train = sequences.train_lengths(ds)
    trainable = spec(cfg.model).task.trainable(ds, n_train)
    if len(trainable) == 0:
        raise InputError(f"{req.dataset}: no user has enough training interactions to train on")
    st = resume.restore(ckpt, model, opt, device, req.out) if ckpt is not None else resume.State()
    rows = runfolder.reconcile_metrics(req.out, st.step, ckpt.get("metrics_row")) if ckpt is not None else []
    saver = Saver(req.out, rows, ctx.is_main)
    saver.saved_step = st.step if ckpt is not None else None
    negs = sampling.sampler(cfg, ds, device)
    step_module = dist.wrap(LossModule(model, cfg, device, negs.log_q), ctx)
    if cfg.compile:  # after the DDP wrap, as torch recommends; the weights stay those of ``model``
        step_module = torch.compile(step_module)
    return _Run(req=req, cfg=cfg, ctx=ctx, device=device, ds=ds, model=model, opt=opt, sampler=negs,
                step_module=step_module,
                validator=Validator(ds, cfg, device, ctx.rank, ctx.world_size), args=args, codes_path=codes_path,
                codes_meta=codes_meta, saver=saver, st=st, n_train=n_train, trainable=trainable,
                steps_per_epoch=_steps_per_epoch(cfg, len(trainable), ctx.world_size), t_start=t_start,
                hint=hint)


def _announce(r: _Run) -> None:
    """What a person should know before the first step (after every check: a failed run prints only its
    Error line)."""
    ctx, cfg = r.ctx, r.cfg
    if ctx.is_main and ctx.world_size > 1 and not r.req.quiet:
        from recjpq_cli.console import console

        console().print(f"distributed: {ctx.world_size} processes ({ctx.device.type}); batch_size {cfg.batch_size} "
                        f"per process, effective batch {ctx.world_size * cfg.batch_size}; learning rate not scaled; "
                        f"--max-steps counts optimiser steps; {r.steps_per_epoch} steps an epoch",
                        highlight=False, soft_wrap=True)
    dist.barrier(ctx)
    if r.hint and ctx.is_main and not r.req.quiet:
        from recjpq_cli.console import console

        console().print(r.hint, soft_wrap=True, highlight=False)


class _Loop:
    """One training run's loop: epochs of steps, validation at each epoch end and at every stop."""

    def __init__(self, r: _Run):
        self.req, self.cfg, self.ctx, self.device, self.ds = r.req, r.cfg, r.ctx, r.device, r.ds
        self.model, self.opt, self.step_module, self.validator = r.model, r.opt, r.step_module, r.validator
        self.args, self.codes_path, self.codes_meta, self.saver, self.st = r.args, r.codes_path, r.codes_meta, r.saver, r.st
        self.n_train, self.trainable, self.spe, self.t_start = r.n_train, r.trainable, r.steps_per_epoch, r.t_start
        self.task, self.sampler = spec(r.cfg.model).task, r.sampler
        self.stats = StepStats(r.device, r.ctx.world_size)
        self.step_seconds, self.steps_here = 0.0, 0
        self.progress = None

    def elapsed(self) -> float:
        return self.st.elapsed_before + (time.perf_counter() - self.t_start)

    # --- checkpoints and validation
    def _checkpoint(self, metrics_now: dict[str, float]) -> dict[str, Any]:
        cfg, st, device = self.cfg, self.st, self.device
        rng: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION, "model": cfg.model, "embedding": cfg.embedding,
            "model_args": self.args,
            "config": cfg.to_dict() | {"codes": _codes_str(self.codes_path)},
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "rng": rng, "epoch": st.epoch, "step": st.step,
            "best_metric": st.best, "bad_epochs": st.bad_epochs, "elapsed_s": self.elapsed(),
            **record(self.ds.path, self.ds.fingerprint), "codes_meta": self.codes_meta,
            "world_size": self.ctx.world_size, "metrics": metrics_now, "last_loss": self.stats.last_loss,
        }

    def check_health(self) -> None:
        """Read the device-side loss window (one synchronisation); a non-finite loss or weight stops the run."""
        mean, n, first_bad = self.stats.read()
        if first_bad is not None:
            at = f"the loss was not finite at step {first_bad + 1}" if first_bad >= 0 else "the loss was not finite"
            raise diverged(self.cfg, at, self.saver.saved_step, self.req.out)
        if n and self.progress:
            self.progress.advance(self.st.step, mean, n * self.cfg.batch_size * self.ctx.world_size, steps=n)

    def validate_and_save(self, epoch_end: bool) -> dict[str, float]:
        self.check_health()
        if not weights_finite(self.model):
            raise diverged(self.cfg, f"a weight was not finite after step {self.st.step}", self.saver.saved_step,
                            self.req.out)
        st = self.st
        m = self.validator(self.model)
        improved = m[TARGET_METRIC] > st.best
        if improved:
            st.best, st.bad_epochs = m[TARGET_METRIC], 0
        elif epoch_end:
            st.bad_epochs += 1
        loss = self.stats.take_epoch_loss()
        row = {"epoch": st.epoch, "step": st.step, "elapsed_s": round(self.elapsed(), 3),
               "train_loss": loss if math.isfinite(loss) else None, **m}
        self.saver.save(self._checkpoint(m), row, improved)
        return m

    # --- steps
    def _batch_users(self, perm: np.ndarray, i: int) -> tuple[np.ndarray, float | None]:
        cfg, world, per_step = self.cfg, self.ctx.world_size, self.cfg.batch_size * self.ctx.world_size
        lo = (i * per_step) % len(perm)
        batch = perm[lo:lo + per_step]
        if len(batch) < per_step and cfg.steps_per_epoch:
            batch = np.concatenate([batch, perm[: per_step - len(batch)]])
        denom = None
        if world > 1:
            denom = self.task.global_positions(cfg, batch, self.n_train, self.st.step) / world
        if world > 1:
            batch = batch[self.ctx.rank::world]
        return batch, denom

    def _one_step(self, batch: np.ndarray, denom: float | None) -> None:
        cfg, st = self.cfg, self.st
        t_step = time.perf_counter()
        loss = self.step_module(denom=denom, **self.task.batch(cfg, self.ds, batch, self.n_train, st.step,
                                                               self.device, self.sampler))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.stats.add(loss, st.step)
        st.step += 1
        self.step_seconds += time.perf_counter() - t_step
        self.steps_here += 1
        if self.stats.pending >= self.cfg.log_every:
            self.check_health()

    def _stop_before_step(self, signals: StopSignals) -> str | None:
        req = self.req
        if signals.requested:
            return "interrupted"
        if req.max_steps is not None and self.st.step >= req.max_steps:
            return "max_steps"
        if req.time_limit is not None and self.elapsed() >= req.time_limit:
            return "time_limit"
        return None

    def _epoch(self, signals: StopSignals, in_epoch: int) -> str | None:
        """Steps to the end of the epoch; the stop reason when the run stops inside it."""
        perm = np.random.default_rng([self.cfg.seed, self.st.epoch]).permutation(self.trainable)
        if self.progress:
            self.progress.start_epoch(self.st.epoch, in_epoch)
        for i in range(in_epoch, self.spe):
            reason = self._stop_before_step(signals)
            if reason:
                return reason
            self._one_step(*self._batch_users(perm, i))
        return None

    def train(self, progress_cb: Any) -> TrainResult:
        req, cfg, st, ctx = self.req, self.cfg, self.st, self.ctx
        self.model.train()
        stop_reason, last_metrics = "max_epochs", {}
        in_epoch = st.step - st.epoch * self.spe if self.saver.saved_step is not None else 0
        self.progress = progress_cb(self.spe, req.max_steps, req.time_limit) if (progress_cb and ctx.is_main) else None
        steps_at_last_validation = st.step
        with StopSignals(enabled=ctx.world_size == 1) as signals:
            try:
                while True:
                    if req.max_epochs is not None and st.epoch >= req.max_epochs:
                        stop_reason = "max_epochs"
                        break
                    reason = self._epoch(signals, in_epoch)
                    if reason:
                        stop_reason = reason
                        break
                    st.epoch += 1
                    in_epoch = 0
                    last_metrics = self.validate_and_save(epoch_end=True)
                    steps_at_last_validation = st.step
                    if self.progress:
                        self.progress.end_epoch(st.epoch, last_metrics, st.best)
                    if st.bad_epochs >= cfg.patience:
                        stop_reason = "early_stop"
                        break
            except KeyboardInterrupt:
                if signals.enabled:  # a second signal: stop at once, keep what was saved
                    raise
                stop_reason = "interrupted"  # under torchrun: stop here, as a single process would
            try:
                if st.step > steps_at_last_validation or not last_metrics:  # validate at the stop
                    last_metrics = self.validate_and_save(epoch_end=False)
            finally:
                if self.progress:
                    self.progress.close()
        dist.barrier(ctx)
        return TrainResult(run_dir=req.out, model=cfg.model, embedding=cfg.embedding, device=str(self.device),
                           epochs=st.epoch, steps=st.step, elapsed_s=self.elapsed(), stop_reason=stop_reason,
                           best_metric=st.best, last_metrics=last_metrics, parameters=count_parameters(self.model),
                           world_size=ctx.world_size, last_loss=self.stats.last_loss,
                           step_s=self.step_seconds / self.steps_here if self.steps_here else float("nan"))
