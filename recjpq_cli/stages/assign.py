"""``assign``: item codes from a dataset's training interactions, written as ``CODES.npy`` + ``CODES.yaml``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recjpq_cli.data import kinds
from recjpq_cli.data.codes import centroids_path, codes_dtype, save_codes, sidecar_path
from recjpq_cli.data.io import check_not_input, check_output
from recjpq_cli.data.schema import CODES_FORMAT_VERSION, dataset_files, load_dataset, read_dataset_meta
from recjpq_cli.errors import ConfigError
from recjpq_cli.jpq.assignment import (
    STRATEGIES,
    ProgressFn,
    TrainData,
    count_collisions,
    get_strategy,
    make_unique,
    occupancy,
)

MAX_KSUB = 65536


@dataclass(frozen=True)
class AssignConfig:
    dataset: Path
    out: Path
    strategy: str
    M: int = 8
    ksub: int = 256
    seed: int = 0
    epochs: int = 20
    dim: int = 512  # svd-kmeans: SVD components = the training d
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
    if not 2 <= cfg.ksub <= MAX_KSUB:
        raise ConfigError(f"centroids per split (ksub) must be in 2..{MAX_KSUB:,}, got {cfg.ksub}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.strategy == "svd-kmeans" and (cfg.dim < 1 or cfg.dim % cfg.M):
        raise ConfigError(f"svd-kmeans: --dim {cfg.dim} must be a positive multiple of the code length M={cfg.M} "
                          f"(it is the d you train with)")
    if Path(cfg.out).suffix != ".npy":
        raise ConfigError(f"{cfg.out}: the codes file must end in .npy (its sidecar is the same path with .yaml)")


def check_fits(cfg: AssignConfig, n_items: int) -> None:
    """Settings that this dataset cannot satisfy."""
    ds = Path(cfg.dataset)
    if cfg.ksub > n_items:
        raise ConfigError(f"{ds}: {cfg.ksub:,} centroids per split (-b) is more than the dataset's {n_items:,} items; "
                          f"use -b {n_items} or fewer")
    if cfg.unique and cfg.ksub ** cfg.M < n_items:
        raise ConfigError(f"{ds}: {n_items:,} items cannot have distinct codes: ksub^M = {cfg.ksub}^{cfg.M} = "
                          f"{cfg.ksub ** cfg.M:,}; raise -m or -b, or pass --no-unique")


def train_data(ds_dir: Path) -> tuple[TrainData, dict[str, Any]]:
    """The training interactions of a dataset (validation and test rows dropped) and its metadata."""
    ds = load_dataset(ds_dir)
    train = ds.split == 0
    data = TrainData(user=ds.user_index()[train], item=ds.item[train].astype(np.int64),
                     n_users=ds.n_users, n_items=ds.n_items)
    return data, ds.meta


def run(cfg: AssignConfig, on_epoch: ProgressFn | None = None) -> AssignResult:
    """Assign codes; every check runs before the heavy work, and nothing is written on failure."""
    t0 = time.perf_counter()
    check_config(cfg)
    meta = read_dataset_meta(cfg.dataset)
    n_items = int(meta["n_items"])
    check_fits(cfg, n_items)
    out, side = Path(cfg.out), sidecar_path(cfg.out)
    check_output(out, cfg.overwrite, "codes file", (kinds.NPY,))
    check_output(side, cfg.overwrite, "codes sidecar", (kinds.CODES_SIDECAR,))
    if cfg.strategy == "svd-kmeans":
        check_output(centroids_path(out), cfg.overwrite, "initial centroids file", (kinds.NPY,))
    for o in cfg.outputs():
        check_not_input(o, list(cfg.inputs()))

    strategy = get_strategy(cfg.strategy, epochs=cfg.epochs, dim=cfg.dim, on_epoch=on_epoch)
    if strategy.uses_interactions:
        data, meta = train_data(cfg.dataset)
    else:  # random codes need only the catalogue size
        none = np.empty(0, dtype=np.int64)
        data = TrainData(user=none, item=none, n_users=int(meta["n_users"]), n_items=n_items)
    result = strategy.assign(data, M=cfg.M, ksub=cfg.ksub, seed=cfg.seed)
    codes = result.codes  # (n_items, M)
    if cfg.unique:
        codes, before = make_unique(codes, cfg.ksub)  # every repeat moves: moved == collisions before
        after = count_collisions(codes) if before else 0
    else:
        before = after = count_collisions(codes)

    dtype = codes_dtype(cfg.ksub)
    table = np.zeros((n_items + 1, cfg.M), dtype=dtype)  # row 0: padding
    table[1:] = codes
    side_meta: dict[str, Any] = {
        "format_version": CODES_FORMAT_VERSION,
        "strategy": cfg.strategy, "M": cfg.M, "ksub": cfg.ksub, "seed": cfg.seed,
        "dataset_fingerprint": str(meta["fingerprint"]), "n_items": n_items, "dtype": dtype.name,
        "unique": cfg.unique, "collisions_before": before, "collisions_after": after,
        "occupancy": occupancy(codes, cfg.ksub),
        **result.facts,
    }
    if result.centroids is not None:
        side_meta["centroids_file"] = centroids_path(out).name
    side_meta["seconds"] = round(time.perf_counter() - t0, 3)
    save_codes(out, table, side_meta, centroids=result.centroids)
    return AssignResult(out=out, sidecar=side, meta=side_meta)
