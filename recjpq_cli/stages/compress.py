"""``compress``: a run's checkpoint to one self-describing model file, with a size report.

A RecJPQ run keeps its codes and centroids as they are (centroids optionally in fp16/bf16). A run trained
with full embeddings is compressed with ``from_dense``: post-hoc product quantisation (k-means per
sub-space) of its output item table, and of its input table too when the two were untied, into the same
kind of file, so training with JPQ can be compared with compressing afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from recjpq_cli.artifact import (
    CENTROID_DTYPES,
    CHECKPOINTS,
    CODES_DTYPES,
    check_state,
    model_size,
    write_artifact,
)
from recjpq_cli.data import kinds
from recjpq_cli.data.io import check_not_input, check_output
from recjpq_cli.data.schema import ITEMS, USERS, dataset_files, read_dataset_meta
from recjpq_cli.errors import ConfigError, InputError
from recjpq_cli.jpq.codebook import MAX_KSUB, codes_dtype_name, valid_ksub


@dataclass(frozen=True)
class CompressConfig:
    run: Path
    out: Path
    data: Path
    checkpoint: str = "best"
    centroid_dtype: str = "fp32"
    from_dense: bool = False
    code_length: int = 8
    centroids: int = 256
    kmeans_iters: int = 20
    seed: int = 0
    overwrite: bool = False


    def inputs(self) -> tuple[Path, ...]:
        data = dataset_files(self.data) if self.data is not None else []
        return (self.run, self.run / f"{self.checkpoint}.pt", *data)

    def outputs(self) -> tuple[Path, ...]:
        return (self.out,)


@dataclass
class CompressResult:
    run: Path
    out: Path
    checkpoint: Path
    method: str  # "jpq" (trained) | "post-hoc-pq" (from a dense run)
    centroid_dtype: str
    codes_dtype: str
    M: int
    ksub: int
    size: dict[str, Any]
    quantisation_error: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def facts(self) -> dict[str, Any]:
        return {"run": str(self.run), "out": str(self.out), "checkpoint": str(self.checkpoint),
                "method": self.method, "centroid_dtype": self.centroid_dtype, "codes_dtype": self.codes_dtype,
                "M": self.M, "ksub": self.ksub, **self.size,
                "quantisation_error": self.quantisation_error or None, "seconds": self.seconds}


def _id_maps(data: Path, meta: dict[str, Any]) -> tuple[pl.Series, pl.Series]:
    items = pl.read_parquet(data / ITEMS, columns=["item", "raw_item"]).sort("item")["raw_item"]
    users = pl.read_parquet(data / USERS, columns=["user", "raw_user"]).sort("user")["raw_user"]
    if len(items) != int(meta["n_items"]) or len(users) != int(meta["n_users"]):
        raise InputError(f"{data}: {ITEMS} or {USERS} does not match dataset.yaml; prepare the dataset again")
    return items, users


def _rel_error(table: torch.Tensor, approx: torch.Tensor) -> float:
    """Relative squared reconstruction error ||T - T'||^2 / ||T||^2 over items 1..n."""
    num = float(((table[1:] - approx[1:]) ** 2).sum())
    den = float((table[1:] ** 2).sum())
    return num / den if den else 0.0


def quantise_dense(model: torch.nn.Module, args: dict[str, Any], *, M: int, ksub: int, iters: int,
                   seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Replace a dense model's item tables by their product quantisation, in place; the new model args."""
    from recjpq_cli.jpq.pq import PQInputJPQ, pq_embedding

    items = model.items
    n, d = args["n_items"], args["d"]
    if d % M:
        raise ConfigError(f"--code-length {M} does not divide the run's d={d}")
    tied = items.output is None
    extra = items.input.weight[n + 1:].detach().clone() if items.input.weight.shape[0] > n + 1 else None
    out_table = items.reconstruct().detach().float()  # (n + 1, d) output table
    err: dict[str, float] = {}
    if tied:
        new = pq_embedding(out_table, M=M, ksub=ksub, iters=iters, seed=seed, extra=extra)
        err["item_table"] = _rel_error(out_table, new.reconstruct().detach())
    else:
        in_table = items.input.weight[: n + 1].detach().float()
        out_pq = pq_embedding(out_table, M=M, ksub=ksub, iters=iters, seed=seed)
        in_pq = pq_embedding(in_table, M=M, ksub=ksub, iters=iters, seed=seed + 1, extra=extra)
        new = PQInputJPQ(codes=out_pq.codes, ksub=ksub, d=d, input_codes=in_pq.codes,
                         extra_tokens=0 if extra is None else extra.shape[0])
        with torch.no_grad():
            new.centroids.copy_(out_pq.centroids)
            new.input_pq.centroids.copy_(in_pq.centroids)
            if extra is not None:
                new.input_pq.extra.copy_(extra)
        err["output_table"] = _rel_error(out_table, out_pq.reconstruct().detach())
        err["input_table"] = _rel_error(in_table, in_pq.reconstruct().detach())
    model.items = new
    new_args = dict(args, embedding="jpq", M=M, ksub=ksub, input_pq=not tied)
    return new_args, err


def run(cfg: CompressConfig) -> CompressResult:
    from recjpq_cli.checkpoint import load_checkpoint, model_from_checkpoint

    t0 = time.perf_counter()
    if cfg.centroid_dtype not in CENTROID_DTYPES:
        raise ConfigError(f"--centroid-dtype must be one of {', '.join(CENTROID_DTYPES)}")
    if cfg.checkpoint not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint must be best or last, got {cfg.checkpoint!r}")
    if not cfg.run.exists():
        raise InputError(f"{cfg.run}: run folder not found")
    if not cfg.run.is_dir():
        raise InputError(f"{cfg.run}: not a run folder (compress reads RUN_DIR/{cfg.checkpoint}.pt)")
    if cfg.out.is_dir():
        raise InputError(f"{cfg.out}: is a folder; --out takes the model file to write")
    check_not_input(cfg.out, list(cfg.inputs()))
    check_output(cfg.out, cfg.overwrite, "model file", (kinds.MODEL,))
    ckpt_path = cfg.run / f"{cfg.checkpoint}.pt"
    if not ckpt_path.is_file():
        raise InputError(f"{cfg.run}: {ckpt_path.name} not found (a run folder written by `recjpq train`)")
    meta = read_dataset_meta(cfg.data)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["dataset_fingerprint"] != meta["fingerprint"]:
        raise InputError(f"{cfg.run} was trained on another dataset (fingerprint {str(ckpt['dataset_fingerprint'])[:12]}…) "
                         f"than {cfg.data} (fingerprint {str(meta['fingerprint'])[:12]}…); use the dataset it was trained on")
    raw_items, raw_users = _id_maps(cfg.data, meta)
    check_state(ckpt["state_dict"], ckpt["model_args"], ckpt_path)
    args = dict(ckpt["model_args"])
    model = model_from_checkpoint(ckpt, ckpt_path)
    err: dict[str, float] = {}
    if ckpt["embedding"] == "jpq":
        if cfg.from_dense:
            raise ConfigError(f"{cfg.run}: already trained with RecJPQ embeddings; --from-dense is for runs "
                              f"trained with --embedding full")
        method = "jpq"
    else:
        if not cfg.from_dense:
            raise ConfigError(f"{cfg.run}: trained with full embeddings; add --from-dense to product-quantise "
                              f"its item tables")
        if not valid_ksub(cfg.centroids):
            raise ConfigError(f"--centroids must be between 2 and {MAX_KSUB}, got {cfg.centroids}")
        if cfg.code_length < 1:
            raise ConfigError(f"--code-length must be at least 1, got {cfg.code_length}")
        args, err = quantise_dense(model, args, M=cfg.code_length, ksub=cfg.centroids, iters=cfg.kmeans_iters,
                                   seed=cfg.seed)
        method = "post-hoc-pq"
    source = {"run": str(cfg.run), "checkpoint": ckpt_path.name, "epoch": ckpt.get("epoch"),
              "step": ckpt.get("step"), "best_metric": ckpt.get("best_metric"), "method": method}
    if method == "post-hoc-pq":
        source["kmeans"] = {"M": cfg.code_length, "ksub": cfg.centroids, "iters": cfg.kmeans_iters, "seed": cfg.seed}
    id_bytes = write_artifact(cfg.out, model, args, fingerprint=str(meta["fingerprint"]), raw_items=raw_items,
                              raw_users=raw_users, centroid_dtype=cfg.centroid_dtype, source=source,
                              codes_meta=ckpt.get("codes_meta"), dataset=str(cfg.data.resolve()))
    ksub = int(args["ksub"])
    codes_name = codes_dtype_name(ksub)
    size = model_size(model, args["n_items"], args["d"], codes_itemsize=CODES_DTYPES[codes_name].itemsize,
                      centroid_itemsize=CENTROID_DTYPES[cfg.centroid_dtype].itemsize, id_map_bytes=id_bytes,
                      file_bytes=cfg.out.stat().st_size, checkpoint_bytes=ckpt_path.stat().st_size)
    return CompressResult(run=cfg.run, out=cfg.out, checkpoint=ckpt_path, method=method,
                          centroid_dtype=cfg.centroid_dtype, codes_dtype=codes_name, M=int(args["M"]), ksub=ksub,
                          size=size, quantisation_error=err, seconds=time.perf_counter() - t0)
