"""The memory estimate that lets ``train`` refuse a run that cannot fit, before allocating it."""

from __future__ import annotations

from dataclasses import dataclass

from recjpq_cli.config import TrainConfig

GIB = 1024**3


def available_bytes(device: str) -> int:
    """Free memory: MemAvailable from /proc/meminfo (CPU), or the GPU's free memory."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass
class Estimate:
    parameters: int
    weights_bytes: int  # parameters x 4 (weights, gradients, two Adam moments)
    buffers_bytes: int  # codes
    activations_bytes: int
    scores_bytes: int
    data_bytes: int

    @property
    def total(self) -> int:
        return self.weights_bytes + self.buffers_bytes + self.activations_bytes + self.scores_bytes + self.data_bytes

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights, gradients and Adam state {self.weights_bytes / GIB:.1f} GiB, "
                f"activations {self.activations_bytes / GIB:.1f} GiB, candidate scores {self.scores_bytes / GIB:.1f} GiB)")


def estimate(cfg: TrainConfig, n_items: int, n_interactions: int, M: int | None, ksub: int | None) -> Estimate:
    """An upper-side estimate of a training run's peak memory in bytes (fp32): the model's terms from its
    spec (backbone parameters, activations, extra tokens), the loss's from ``objective.scores_bytes``."""
    from recjpq_cli.jpq.codebook import BYTE_KSUB
    from recjpq_cli.models import objective
    from recjpq_cli.models.registry import spec

    s = spec(cfg.model)
    d, extra = cfg.d, s.extra_tokens
    if cfg.embedding == "jpq":
        item_params = (ksub or 256) * d + extra * d
        buffers = (n_items + 1) * (M or 8) * (1 if (ksub or 256) <= BYTE_KSUB else 4)
    else:
        tables = 1 if cfg.tie_embeddings else 2
        item_params = tables * (n_items + 1) * d + extra * d
        buffers = 0
    params = s.backbone_parameters(cfg) + item_params
    scores = objective.scores_bytes(cfg, s, n_items, M, ksub)
    data = n_interactions * 16
    return Estimate(parameters=params, weights_bytes=params * 4 * 4, buffers_bytes=buffers,
                    activations_bytes=s.activation_bytes(cfg), scores_bytes=scores, data_bytes=data)
