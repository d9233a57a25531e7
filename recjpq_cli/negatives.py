"""Uniform negatives from a counter-based hash of (seed, step, user, position, j).

The draw of a user's negatives depends on nothing but those numbers: not on the batch it falls in, the
process that trains it, nor on any RNG state. So a resumed run and a DDP run draw exactly what a plain
run draws (issue: exact resume; DDP equivalence).
"""

from __future__ import annotations

import torch
from torch import Tensor

_M1 = -49064778989728563  # 0xff51afd7ed558ccd as int64
_M2 = -4265267296055464877  # 0xc4ceb9fe1a85ec53 as int64
_LOW62 = (1 << 62) - 1


def _srl(x: Tensor, n: int) -> Tensor:
    """Logical right shift of int64."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix(x: Tensor) -> Tensor:
    """murmur3's 64-bit finaliser (wrapping int64 arithmetic)."""
    x = x ^ _srl(x, 33)
    x = x * _M1
    x = x ^ _srl(x, 33)
    x = x * _M2
    return x ^ _srl(x, 33)


def uniform_negatives(seed: int, step: int, users: Tensor, length: int, k: int, n_items: int,
                      per_position: bool) -> Tensor:
    """Item ids in 1..n_items: (B, length, k) per position, or (B, k) shared by a sequence's positions."""
    dev = users.device
    base = _mix(torch.tensor([seed * 1_000_003 + step], dtype=torch.long, device=dev))
    u = _mix(users.long() * 0x9E3779B97F4A7C15 % (1 << 62) + base)  # (B,)
    if per_position:
        pos = torch.arange(length, device=dev).view(1, length, 1)
        j = torch.arange(k, device=dev).view(1, 1, k)
        x = u.view(-1, 1, 1) + pos * 0x632BE59BD9B4E019 + j * 0x2545F4914F6CDD1D
    else:
        j = torch.arange(k, device=dev).view(1, k)
        x = u.view(-1, 1) + j * 0x2545F4914F6CDD1D
    return (_mix(x) & _LOW62) % n_items + 1
