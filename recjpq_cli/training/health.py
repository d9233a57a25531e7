"""Step health: losses and the non-finite flag kept on the device, read once per progress update, and the
one error a diverged run stops with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recjpq_cli import distributed as dist
from recjpq_cli.errors import RecJPQError
from recjpq_cli.runfolder import LAST


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


def weights_finite(model: torch.nn.Module) -> bool:
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def diverged(cfg: Any, at: str, kept: int | None, run: Path) -> DivergedError:
    keep = (f"{run / LAST} keeps step {kept}, the last finite checkpoint" if kept is not None
            else "no checkpoint was kept")
    return DivergedError(f"training diverged: {at} (lr={cfg.lr:g}, item_lr={cfg.item_lr}, grad_clip={cfg.grad_clip:g}); "
                         f"lower lr or item_lr, or set grad_clip (e.g. --set grad_clip=1.0); {keep}")
