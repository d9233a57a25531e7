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
    """An upper-side estimate of a training run's peak memory in bytes (fp32)."""
    d, L, B, nb = cfg.d, cfg.max_len, cfg.batch_size, cfg.num_blocks
    ffn = cfg.resolved_ffn_dim()
    extra = 1 if cfg.model == "bert4rec" else 0
    backbone = L * d + nb * (4 * d * d + 4 * d + 2 * d * ffn + ffn + d + 4 * d) + 2 * d
    if cfg.embedding == "jpq":
        item_params = (ksub or 256) * d + extra * d
        buffers = (n_items + 1) * (M or 8) * (1 if (ksub or 256) <= 256 else 4)
    else:
        tables = 1 if cfg.tie_embeddings else 2
        item_params = tables * (n_items + 1) * d + extra * d
        buffers = 0
    params = backbone + item_params
    # Per block: qkv, attention probabilities, projections, ffn and layer norms, kept for backward.
    act = B * L * (nb * (12 * d + 2 * ffn) + 4 * d) * 4 + B * cfg.num_heads * L * L * nb * 3 * 4
    if cfg.model == "bert4rec":
        masked = max(1, int(B * L * cfg.mask_prob * 1.5))
        scores = masked * (n_items + 2) * 4 * 3  # logits, softmax, gradient
    else:
        k = cfg.negatives
        per = L if cfg.negatives_per == "position" else 1
        scores = B * L * (k + 1) * 4 * 3
        if cfg.embedding == "jpq" and k > 4 and M and ksub:
            scores += B * L * M * ksub * 4 * 3  # sub-item score tables and their gradient
            scores += B * per * k * M * 8  # gathered codes
        elif k > 4:
            scores += B * L * 8 * d * 4 * 2  # dense candidates embedded 8 at a time
    data = n_interactions * 16
    return Estimate(parameters=params, weights_bytes=params * 4 * 4, buffers_bytes=buffers,
                    activations_bytes=act, scores_bytes=scores, data_bytes=data)
