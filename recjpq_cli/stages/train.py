"""``train``: fit a sequential recommender with RecJPQ or dense item embeddings.

The loop validates (NDCG@10 / Recall@10 over the whole catalogue on a fixed sample of users) after each
epoch and at every stop, writes ``last.pt`` then, and ``best.pt`` on improvement (the run folder's rules:
``recjpq_cli/runfolder.py``). Resume is exact: the data order comes from (seed, epoch), negatives from a
counter-based hash, the torch RNG state is saved, and signals stop the loop only between two steps.
"""

from __future__ import annotations

import math
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
from recjpq_cli import runfolder
from recjpq_cli.checkpoint import load_checkpoint, save_checkpoint
from recjpq_cli.config import TrainConfig, build_config, from_dict
from recjpq_cli.data import sequences
from recjpq_cli.data.io import atomic_file, dump_yaml, read_yaml
from recjpq_cli.data.schema import CHECKPOINT_FORMAT_VERSION, Dataset, load_dataset, read_dataset_meta
from recjpq_cli.dataset_record import DATASET_KEY, FINGERPRINT_KEY, record
from recjpq_cli.errors import ConfigError, InputError, OutputExistsError, RecJPQError, ResourceError
from recjpq_cli.memory import GIB, available_bytes, estimate
from recjpq_cli.metrics import ndcg_at_k, recall_at_k
from recjpq_cli.models import losses
from recjpq_cli.models.registry import build_model, count_parameters, model_args_from_config
from recjpq_cli.negatives import uniform_negatives
from recjpq_cli.ranking import target_ranks
from recjpq_cli.runfolder import BEST, CONFIG, LAST, RunLock, write_metrics

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
        for key in (DATASET_KEY, FINGERPRINT_KEY):  # where the dataset was: a record, not config
            saved.pop(key, None)
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
            may_change = {"patience", "log_every"}  # honoured on resume; every other key must repeat the run's value
            for k in sorted(given - may_change):
                if getattr(again, k) != getattr(cfg, k):
                    raise ConfigError(f"--resume: {k}={getattr(again, k)!r} differs from the run's "
                                      f"{k}={getattr(cfg, k)!r} (only budgets, device, patience and quiet may change)")
            cfg = replace(cfg, **{k: getattr(again, k) for k in given & may_change})
        if req.patience is not None:
            cfg = replace(cfg, patience=req.patience)
        ckpt = load_checkpoint(run / LAST)
        if ckpt["dataset_fingerprint"] != meta["fingerprint"]:
            raise InputError(f"{run / LAST}: the run was trained on another dataset than {req.dataset}")
        _check_config_matches(run, cfg, ckpt)
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


def _check_config_matches(run: Path, cfg: TrainConfig, ckpt: dict[str, Any]) -> None:
    """``config.yaml`` must still say what ``last.pt`` was trained with (an edited file is refused)."""
    saved = {k: v for k, v in dict(ckpt["config"]).items() if k != "codes"}
    try:
        trained = from_dict(saved, f"{run / LAST} config")
    except ConfigError as e:
        raise InputError(f"{run / LAST}: its config does not load ({e})") from None
    for k, v in trained.to_dict().items():
        if k not in ("patience", "log_every") and getattr(cfg, k) != v:
            raise InputError(f"{run / CONFIG}: {k}={getattr(cfg, k)!r}, but {LAST} was trained with {k}={v!r}; "
                             f"restore {CONFIG} (or start a new run)")


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
def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch -> device without waiting: pinned memory and a non-blocking copy on CUDA."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def make_batch(cfg: TrainConfig, ds: Dataset, users: np.ndarray, n_train: np.ndarray, step: int,
               n_items: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of one training batch (numpy windows -> device), negatives or masks included."""
    if cfg.model == "bert4rec":
        seq = _to_device(sequences.masked_batch(ds, users, cfg.max_len, n_train), device)
        real = seq != 0
        mask = (torch.rand(seq.shape, device=device) < cfg.mask_prob) & real
        mask[:, -1] |= real[:, -1]  # always predict the last item too: the task at inference
        return {"seq": seq, "mask": mask}
    inp, tgt = sequences.train_batch(ds, users, cfg.max_len, n_train)
    u = _to_device(torch.from_numpy(users), device)
    negs = uniform_negatives(cfg.seed, step, u, cfg.max_len, cfg.negatives, n_items,
                             per_position=cfg.negatives_per == "position")
    return {"inp": _to_device(inp, device), "tgt": _to_device(tgt, device), "negs": negs}


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


# ------------------------------------------------------------------------------------- stops and health
class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's time limit, ``kill``, ``timeout``) ask the loop to stop at
    the next step boundary, so that the saved weights, optimiser and RNG state are those the next step would
    start from and ``--resume`` continues exactly. A second signal stops at once, saving nothing more.

    Only in a single process, from the main thread (torchrun's agent manages its workers' signals itself).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class DivergedError(RecJPQError):
    """The loss or the weights stopped being finite."""


class StepStats:
    """Per-step losses and the non-finite flag, kept on the device and read once per progress update.

    ``log_every`` steps cost one device-to-host synchronisation (and, under torchrun, one all-reduce) in all.
    """

    def __init__(self, device: torch.device, world: int):
        self.device, self.world = device, world
        self.window = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, steps, last loss, bad steps
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.epoch_sum, self.epoch_n = 0.0, 0
        self.last_loss = float("nan")
        self.pending = 0  # steps since the last read

    def add(self, loss: torch.Tensor, step: int) -> None:
        lv = loss.detach().double().reshape(())
        bad = ~torch.isfinite(lv)
        self.window[0] += torch.where(bad, torch.zeros_like(lv), lv)
        self.window[1] += 1.0
        self.window[2] = lv
        self.window[3] += bad.double()
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad)
        self.pending += 1

    def read(self) -> tuple[float, int, int | None]:
        """(mean loss of the window, its steps, the first non-finite step or None); clears the window."""
        w = dist.all_reduce_sum(self.window.clone(), self.device).to(self.device)
        # the one synchronisation: window and first non-finite step in one transfer (ints exact in float64)
        sum_, n, last, bad, first = torch.cat([w, self.first_bad.double().reshape(1)]).tolist()
        n, first = int(round(n / self.world)), int(first)
        self.window.zero_()
        self.pending = 0
        if bad > 0:
            return float("nan"), n, first if first >= 0 else -1
        self.last_loss = last / self.world
        self.epoch_sum += sum_ / self.world
        self.epoch_n += n
        return sum_ / self.world / max(1, n), n, None

    def take_epoch_loss(self) -> float:
        mean = self.epoch_sum / self.epoch_n if self.epoch_n else float("nan")
        self.epoch_sum, self.epoch_n = 0.0, 0
        return mean


def _weights_finite(model: torch.nn.Module) -> bool:
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _diverged(cfg: TrainConfig, at: str, kept: int | None, run: Path) -> DivergedError:
    keep = (f"{run / LAST} keeps step {kept}, the last finite checkpoint" if kept is not None
            else "no checkpoint was kept")
    return DivergedError(f"training diverged: {at} (lr={cfg.lr:g}, item_lr={cfg.item_lr}, grad_clip={cfg.grad_clip:g}); "
                         f"lower lr or item_lr, or set grad_clip (e.g. --set grad_clip=1.0); {keep}")


# ------------------------------------------------------------------------------------------- saving
class Saver:
    """Writes a validation's results in the order that keeps the run folder consistent after a kill:
    ``last.pt``, then ``best.pt`` (both atomic), then ``metrics.jsonl`` (rewritten atomically)."""

    def __init__(self, run: Path, rows: list[dict[str, Any]], is_main: bool):
        self.run, self.rows, self.is_main = run, rows, is_main
        self.saved_step: int | None = None

    def save(self, ckpt: dict[str, Any], row: dict[str, Any], improved: bool) -> None:
        if not self.is_main:
            return
        last, best = self.run / LAST, self.run / BEST
        save_checkpoint(last, ckpt | {"metrics_row": row})
        if improved or not best.exists():
            with atomic_file(best) as tmp:  # data.io turns a failed write into one error naming ``best``
                shutil.copyfile(last, tmp)
        self.rows = [r for r in self.rows if r.get("step") != row["step"]] + [row]
        write_metrics(self.run, self.rows)
        self.saved_step = int(row["step"])


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    elapsed_before: float = 0.0


def _restore(ckpt: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
             run: Path) -> _State:
    """Weights, optimiser and RNG from ``last.pt``; a tensor that does not fit the run's config is one error."""
    try:
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"{run / LAST}: its tensors do not match the run's {CONFIG} ({first}); "
                         f"restore {CONFIG} or start a new run") from None
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())
    return _State(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), best=float(ckpt["best_metric"]),
                  bad_epochs=int(ckpt.get("bad_epochs", 0)), elapsed_before=float(ckpt.get("elapsed_s", 0.0)))


def _budget_spent(req: TrainRequest, ckpt: dict[str, Any] | None) -> str | None:
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


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    item_params = list(model.items.parameters())
    ids = {id(p) for p in item_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids]},
              {"params": item_params, "lr": cfg.item_lr if cfg.item_lr is not None else cfg.lr}]
    # On CUDA the fused kernel (same update maths, one launch); on the CPU torch's default loop, whose
    # results every earlier run and test was measured with.
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


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
    cfg, codes_path, codes_meta, ckpt = _resolve(req, meta)
    spent = _budget_spent(req, ckpt)
    if spent is not None:
        return TrainResult.nothing_to_do(req, cfg, ckpt, f"{req.out}: nothing to do, {spent}")
    if ctx.is_main and req.resume:
        locks.append(runfolder.lock(req.out))
        runfolder.remove_temporaries(req.out)
    elif ctx.is_main and req.out.exists():
        runfolder.refuse_if_busy(req.out)
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
    args = model_args_from_config(cfg, ds.n_items, tuple(codes.shape) if codes is not None else None, ksub)
    model = build_model(args, codes).to(device)
    if init_centroids is not None:
        with torch.no_grad():
            model.items.centroids.copy_(init_centroids)
    opt = _optimizer(model, cfg)
    n_train = sequences.train_lengths(ds)
    trainable = sequences.trainable_users(ds) if cfg.model != "bert4rec" else np.flatnonzero(n_train >= 1)
    if len(trainable) == 0:
        raise InputError(f"{req.dataset}: no user has enough training interactions to train on")
    world = ctx.world_size
    per_step = cfg.batch_size * world
    steps_per_epoch = cfg.steps_per_epoch or (len(trainable) // per_step if world > 1 else math.ceil(len(trainable) / per_step))
    steps_per_epoch = max(1, steps_per_epoch)
    st = _restore(ckpt, model, opt, device, req.out) if ckpt is not None else _State()

    step_module = dist.wrap(LossModule(model, cfg, device), ctx)
    validator = Validator(ds, cfg, device, ctx.rank, world)
    created_here = False
    if ctx.is_main and not req.resume:
        conf = cfg.to_dict() | {"codes": str(Path(codes_path).resolve()) if codes_path else None} | record(req.dataset)
        locks.append(runfolder.create(req.out, req.overwrite, dump_yaml(conf)))
        created_here = True
    if ctx.is_main and world > 1 and not req.quiet:
        from recjpq_cli.console import console

        console().print(f"distributed: {world} processes ({ctx.device.type}); batch_size {cfg.batch_size} per process, "
                        f"effective batch {world * cfg.batch_size}; learning rate not scaled; --max-steps counts "
                        f"optimiser steps; {steps_per_epoch} steps an epoch", highlight=False, soft_wrap=True)
    dist.barrier(ctx)
    if hint and ctx.is_main and not req.quiet:  # after every check: a failed run prints only its Error line
        from recjpq_cli.console import console

        console().print(hint, soft_wrap=True, highlight=False)

    rows = runfolder.reconcile_metrics(req.out, st.step, ckpt.get("metrics_row")) if ckpt is not None else []
    loop = _Loop(req, cfg, ctx, device, ds, model, opt, step_module, validator, args, codes_path, codes_meta,
                 Saver(req.out, rows, ctx.is_main), st, n_train, trainable, steps_per_epoch, t_start,
                 saved_step=st.step if ckpt is not None else None)
    try:
        result = loop.train(progress_cb)
    except RecJPQError:
        if created_here and not (req.out / LAST).exists():  # nothing finite or resumable to keep
            shutil.rmtree(req.out, ignore_errors=True)
        raise
    # The DDP wrapper's reducer holds the process group: drop it first, so that gloo's worker threads are
    # joined now, not during interpreter exit (where they could abort the process after a finished run).
    del step_module, loop
    dist.shutdown(ctx)
    return result


class _Loop:
    """One training run's loop: epochs of steps, validation at each epoch end and at every stop."""

    def __init__(self, req, cfg, ctx, device, ds, model, opt, step_module, validator, args, codes_path, codes_meta,
                 saver, st, n_train, trainable, steps_per_epoch, t_start, saved_step):
        self.req, self.cfg, self.ctx, self.device, self.ds = req, cfg, ctx, device, ds
        self.model, self.opt, self.step_module, self.validator = model, opt, step_module, validator
        self.args, self.codes_path, self.codes_meta, self.saver, self.st = args, codes_path, codes_meta, saver, st
        self.n_train, self.trainable, self.spe, self.t_start = n_train, trainable, steps_per_epoch, t_start
        self.saver.saved_step = saved_step
        self.stats = StepStats(device, ctx.world_size)
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
            "config": cfg.to_dict() | {"codes": str(Path(self.codes_path).resolve()) if self.codes_path else None},
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
            raise _diverged(self.cfg, at, self.saver.saved_step, self.req.out)
        if n and self.progress:
            self.progress.advance(self.st.step, mean, n * self.cfg.batch_size * self.ctx.world_size, steps=n)

    def validate_and_save(self, epoch_end: bool) -> dict[str, float]:
        self.check_health()
        if not _weights_finite(self.model):
            raise _diverged(self.cfg, f"a weight was not finite after step {self.st.step}", self.saver.saved_step,
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
        if world > 1 and cfg.model != "bert4rec":
            denom = max(1.0, float(np.minimum(self.n_train[batch] - 1, cfg.max_len).sum())) / world
        if world > 1:
            batch = batch[self.ctx.rank::world]
        return batch, denom

    def _one_step(self, batch: np.ndarray, denom: float | None) -> None:
        cfg, st = self.cfg, self.st
        t_step = time.perf_counter()
        loss = self.step_module(denom=denom, **make_batch(cfg, self.ds, batch, self.n_train, st.step,
                                                         self.ds.n_items, self.device))
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
