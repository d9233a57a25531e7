"""``assign``: item codes from a dataset's training interactions, written as ``CODES.npy`` + ``CODES.yaml``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recjpq_cli.data import kinds
from recjpq_cli.data.codes import centroids_path, default_ksub, save_codes, sidecar_path
from recjpq_cli.data.io import check_not_input, check_output
from recjpq_cli.data.schema import CODES_FORMAT_VERSION, dataset_files, load_dataset, read_dataset_meta
from recjpq_cli.errors import ConfigError, ResourceError
from recjpq_cli.jpq.assignment import count_collisions, get_strategy, make_unique, occupancy
from recjpq_cli.jpq.codebook import MAX_KSUB, codes_numpy_dtype, valid_ksub
from recjpq_cli.jpq.types import DEFAULT_STRATEGY, STRATEGIES, ProgressFn, StepFn, TrainData
from recjpq_cli.memory import GIB, available_bytes

# The interpreter, torch and scipy before any data: added to every estimate.
BASE_BYTES = GIB // 2


@dataclass(frozen=True)
class AssignConfig:
    dataset: Path
    out: Path
    strategy: str = DEFAULT_STRATEGY
    M: int = 8
    ksub: int | None = None  # None: default_ksub(dim, n_items), ksub x dim = 131,072
    seed: int = 0
    epochs: int = 20
    dim: int = 512  # the d the codes are for (svd-kmeans: its SVD components)
    unique: bool = True
    overwrite: bool = False

    def inputs(self) -> tuple[Path, ...]:
        return (self.dataset, *dataset_files(self.dataset))

    def outputs(self) -> tuple[Path, ...]:
        svd_kmeans = (centroids_path(self.out),) if self.strategy == "svd-kmeans" else ()
        return (self.out, sidecar_path(self.out), *svd_kmeans)


@dataclass
class AssignResult:
    out: Path
    sidecar: Path
    meta: dict[str, Any] = field(default_factory=dict)  # what CODES.yaml holds

    @property
    def seconds(self) -> float:
        return float(self.meta["seconds"])

    def facts(self) -> dict[str, Any]:
        return {"out": str(self.out), "sidecar": str(self.sidecar), **self.meta}


def check_config(cfg: AssignConfig) -> None:
    """Settings that are wrong whatever the dataset."""
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {cfg.strategy!r} (valid: {', '.join(STRATEGIES)})")
    if cfg.M < 1:
        raise ConfigError(f"code length M must be at least 1, got {cfg.M}")
    if cfg.ksub is not None and not valid_ksub(cfg.ksub):
        raise ConfigError(f"centroids per split (ksub) must be in 2..{MAX_KSUB:,}, got {cfg.ksub}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.dim < 1 or cfg.dim % cfg.M:
        raise ConfigError(f"--dim {cfg.dim} must be a positive multiple of the code length M={cfg.M} (-m): it is the "
                          f"d you will train with; pass --dim {max(cfg.M, cfg.dim // cfg.M * cfg.M)} or another -m")
    if Path(cfg.out).suffix != ".npy":
        raise ConfigError(f"{cfg.out}: the codes file must end in .npy (its sidecar is the same path with .yaml)")


@dataclass(frozen=True)
class AssignPlan:
    """What a run will do, known before the heavy work: the resolved ksub and the memory estimate."""

    ksub: int
    ksub_auto: bool  # True: chosen from --dim (no -b)
    memory_bytes: int
    free_bytes: int

    def describe(self) -> str:
        how = " (from --dim)" if self.ksub_auto else ""
        return (f"ksub {self.ksub:,}{how}; memory estimate {self.memory_bytes / GIB:.1f} GiB of "
                f"{self.free_bytes / GIB:.1f} GiB available")


def estimate_bytes(cfg: AssignConfig, ksub: int, n_users: int, n_items: int, n_interactions: int) -> int:
    """An upper-side estimate of the run's peak memory: data, the strategy's arrays, the codes."""
    from recjpq_cli.jpq.pq import KMEANS_BLOCK_FLOATS, MAX_POINTS_PER_CENTROID

    data = 48 * n_interactions  # dataset columns, training arrays, count-matrix sort
    codes = 3 * 8 * n_items * cfg.M  # int64 codes, their transpose, the --unique copy
    if cfg.strategy == "svd-kmeans":
        from recjpq_cli.jpq.lowrank import memory_bytes

        sample = 2 * 4 * min(n_items, MAX_POINTS_PER_CENTROID * ksub) * cfg.dim
        work = memory_bytes(cfg.dim, n_users, n_items, n_interactions) + sample + 8 * KMEANS_BLOCK_FLOATS
    elif cfg.strategy in ("svd", "bpr"):
        work = 8 * 8 * (n_users + n_items) * cfg.M  # factors, their Adagrad state, the ARPACK work space
    else:
        work = 0
    return BASE_BYTES + data + codes + work


def check_fits(cfg: AssignConfig, meta: dict[str, Any]) -> AssignPlan:
    """Settings that this dataset cannot satisfy, and the run's memory against what is free."""
    ds = Path(cfg.dataset)
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    ksub = cfg.ksub if cfg.ksub is not None else default_ksub(cfg.dim, n_items)
    if ksub > n_items:
        raise ConfigError(f"{ds}: {ksub:,} centroids per split (-b) is more than the dataset's {n_items:,} items; "
                          f"use -b {n_items} or fewer")
    if cfg.unique and ksub ** cfg.M < n_items:
        raise ConfigError(f"{ds}: {n_items:,} items cannot have distinct codes: ksub^M = {ksub}^{cfg.M} = "
                          f"{ksub ** cfg.M:,}; raise -m or -b, or pass --no-unique")
    if cfg.strategy == "svd-kmeans" and cfg.dim > min(n_users, n_items):
        raise ConfigError(f"{ds}: --dim {cfg.dim} SVD components need at least {cfg.dim} users and items; the dataset "
                          f"has {n_users:,} users and {n_items:,} items (use a smaller --dim)")
    need = estimate_bytes(cfg, ksub, n_users, n_items, int(meta.get("n_interactions", 0)))
    free = available_bytes("cpu")
    if need > free:
        lower = "--dim" if cfg.strategy == "svd-kmeans" else "-m"
        raise ResourceError(f"{ds}: assign --strategy {cfg.strategy} needs about {need / GIB:.1f} GiB, but only "
                            f"{free / GIB:.1f} GiB is free; lower {lower} (now {cfg.dim if lower == '--dim' else cfg.M})")
    return AssignPlan(ksub=ksub, ksub_auto=cfg.ksub is None, memory_bytes=need, free_bytes=free)


def train_data(ds_dir: Path) -> tuple[TrainData, dict[str, Any]]:
    """The training interactions of a dataset (validation and test rows dropped) and its metadata."""
    ds = load_dataset(ds_dir)
    train = ds.split == 0
    data = TrainData(user=ds.user_index()[train], item=ds.item[train].astype(np.int64),
                     n_users=ds.n_users, n_items=ds.n_items)
    return data, ds.meta


def run(cfg: AssignConfig, on_epoch: ProgressFn | None = None, on_step: StepFn | None = None,
        on_plan: Any = None) -> AssignResult:
    """Assign codes; every check runs before the heavy work (``on_plan`` hears the plan then), and nothing
    is written on failure."""
    t0 = time.perf_counter()
    check_config(cfg)
    meta = read_dataset_meta(cfg.dataset)
    n_items = int(meta["n_items"])
    plan = check_fits(cfg, meta)
    ksub = plan.ksub
    out, side = Path(cfg.out), sidecar_path(cfg.out)
    check_output(out, cfg.overwrite, "codes file", (kinds.NPY,))
    check_output(side, cfg.overwrite, "codes sidecar", (kinds.CODES_SIDECAR,))
    if cfg.strategy == "svd-kmeans":
        check_output(centroids_path(out), cfg.overwrite, "initial centroids file", (kinds.NPY,))
    for o in cfg.outputs():
        check_not_input(o, list(cfg.inputs()))

    strategy = get_strategy(cfg.strategy, epochs=cfg.epochs, dim=cfg.dim, on_epoch=on_epoch, on_step=on_step)
    if strategy.uses_interactions:
        data, meta = train_data(cfg.dataset)
        if data.user.size == 0:
            raise ConfigError(f"{cfg.dataset}: no training interactions, so --strategy {cfg.strategy} has nothing to "
                              f"place items by (an empty count matrix has no SVD component); use --strategy random")
    else:  # random codes need only the catalogue size
        none = np.empty(0, dtype=np.int64)
        data = TrainData(user=none, item=none, n_users=int(meta["n_users"]), n_items=n_items)
    if on_plan is not None:
        on_plan(plan)
    result = strategy.assign(data, M=cfg.M, ksub=ksub, seed=cfg.seed)
    del data
    codes = result.codes  # (n_items, M)
    if cfg.unique:
        codes, before = make_unique(codes, ksub)  # every repeat moves: moved == collisions before
        after = count_collisions(codes) if before else 0
    else:
        before = after = count_collisions(codes)

    dtype = codes_numpy_dtype(ksub)
    table = np.zeros((n_items + 1, cfg.M), dtype=dtype)  # row 0: padding
    table[1:] = codes
    del codes
    side_meta: dict[str, Any] = {
        "format_version": CODES_FORMAT_VERSION,
        "strategy": cfg.strategy, "M": cfg.M, "ksub": ksub, "seed": cfg.seed,
        "dataset_fingerprint": str(meta["fingerprint"]), "n_items": n_items, "dtype": dtype.name,
        "unique": cfg.unique, "collisions_before": before, "collisions_after": after,
        "occupancy": occupancy(table[1:], ksub),
        "d": cfg.dim, "ksub_auto": plan.ksub_auto, "memory_estimate_bytes": plan.memory_bytes,
        **result.facts,
    }
    if result.centroids is not None:
        side_meta["centroids_file"] = centroids_path(out).name
    side_meta["seconds"] = round(time.perf_counter() - t0, 3)
    save_codes(out, table, side_meta, centroids=result.centroids)
    return AssignResult(out=out, sidecar=side, meta=side_meta)
