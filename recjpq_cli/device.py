"""Where a stage runs: the device a ``--device`` option names, the autocast every forward pass uses, and
host-to-device copies that do not wait. Used by train, evaluate, recommend and serve alike."""

from __future__ import annotations

import contextlib

import torch

from recjpq_cli.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain float32 on the CPU. Training, validation, evaluate and recommend all
    encode under it, so they compute the same numbers on the same device."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without waiting: pinned memory and a non-blocking copy on CUDA."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
