"""Multi-process training through torch's own engine: DistributedDataParallel launched by torchrun.

A plain ``recjpq train`` is a single process. Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT set), each process joins a process group (gloo on CPU, nccl on CUDA),
trains on its shard of each batch, and only rank 0 writes.
"""

from __future__ import annotations

import gc
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from recjpq_cli.errors import ConfigError, first_line

RENDEZVOUS_TIMEOUT_S = int(os.environ.get("RECJPQ_DIST_TIMEOUT", "60"))
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_pref: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun; a half-set environment is an error."""
    present = [k for k in _ENV if k in os.environ]
    if not present or (present == ["WORLD_SIZE"] and os.environ["WORLD_SIZE"] == "1"):
        return DistContext()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"distributed environment is half set: {', '.join(present)} set but "
                          f"{', '.join(missing)} missing; launch with torchrun or unset them")
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is out of range for WORLD_SIZE={world}")
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    try:
        tdist.init_process_group(backend, rank=rank, world_size=world,
                                 timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    except (RuntimeError, ValueError, OSError) as e:  # DistNetworkError / DistStoreError are RuntimeErrors
        first = first_line(e)
        raise ConfigError(f"cannot join the process group at {os.environ['MASTER_ADDR']}:"
                          f"{os.environ['MASTER_PORT']} ({first})") from None
    return DistContext(world_size=world, rank=rank, local_rank=local, device=device, initialized=True)


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP around the loss module when distributed; the codes buffer is constant, so never broadcast."""
    if not ctx.initialized:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    with warnings.catch_warnings():  # broadcast_buffers=False is exactly what we mean (no sync at all)
        warnings.simplefilter("ignore", FutureWarning)
        return DDP(module, device_ids=ids, broadcast_buffers=False)


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not (tdist.is_available() and tdist.is_initialized()):
        return t
    x = t.to(device)
    tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x.cpu()


def barrier(ctx: DistContext) -> None:
    if ctx.initialized:
        tdist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group while the interpreter is fully alive (call after dropping any DDP wrapper,
    and only on the success path: every rank must reach it).

    The barrier first: a rank that finished its last collective early would otherwise close its gloo
    connections while a peer is still exchanging, and the peer's gloo thread aborts the process
    ("terminate called without an active exception")."""
    if ctx.initialized and tdist.is_initialized():
        tdist.barrier()
        gc.collect()  # a DDP reducer kept alive by a reference cycle would otherwise outlive the group
        tdist.destroy_process_group()
