"""Uniform or popularity negatives from a counter-based hash of (seed, step, user, position, j), and the
masked task's masks from the same hash (``uniform01``, on the host).

The draw of a user's negatives depends on nothing but those numbers: not on the batch it falls in, the
process that trains it, nor on any RNG state. So a resumed run and a DDP run draw exactly what a plain
run draws (issue: exact resume; DDP equivalence).
"""

from __future__ import annotations

import numpy as np
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


def _bits(seed: int, step: int, users: Tensor, length: int, k: int, per_position: bool) -> Tensor:
    """62 random bits per draw: (B, length, k) per position, or (B, k) shared by a sequence's positions."""
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
    return _mix(x) & _LOW62


def uniform_negatives(seed: int, step: int, users: Tensor, length: int, k: int, n_items: int,
                      per_position: bool) -> Tensor:
    """Item ids in 1..n_items: (B, length, k) per position, or (B, k) shared by a sequence's positions."""
    return _bits(seed, step, users, length, k, per_position) % n_items + 1


def popularity_table(train_counts: Tensor) -> tuple[Tensor, Tensor]:
    """(cumulative counts of items 1..n_items as float64, log q per id 0..n_items) from the training counts
    indexed by item id (index 0, padding, is ignored). ``log q`` is each id's probability of being drawn;
    items never seen in training are never drawn, and their log q is clamped to log(0.5 / total) so that a
    logQ correction stays finite."""
    counts = train_counts.double().clone()
    counts[0] = 0.0
    total = float(counts.sum())
    if total <= 0:
        raise ValueError("popularity sampling needs training interactions")
    log_q = torch.log((counts / total).clamp(min=0.5 / total))
    return torch.cumsum(counts[1:], 0), log_q.float()


def popularity_negatives(seed: int, step: int, users: Tensor, length: int, k: int, cum_counts: Tensor,
                         per_position: bool) -> Tensor:
    """Item ids in 1..n_items drawn with probability proportional to their training counts (the same
    (seed, step, user, position, j) hash as ``uniform_negatives``, turned into a uniform in [0, 1) with 53
    bits and inverted through the cumulative counts)."""
    bits = _bits(seed, step, users, length, k, per_position)
    u = (bits >> 9).double() * (1.0 / (1 << 53))  # [0, 1)
    x = u * cum_counts[-1]
    ids = torch.searchsorted(cum_counts, x, right=True) + 1
    return ids.clamp(max=cum_counts.numel())


_MASK_STREAM = 0x5851F42D4C957F2D  # keeps the masks' draws apart from the negatives' at the same (seed, step)


def _mix_np(x: np.ndarray) -> np.ndarray:
    """``_mix`` on uint64 numpy arrays (numpy's uint64 arithmetic wraps as int64's does in torch)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(_M1 & 0xFFFFFFFFFFFFFFFF)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(_M2 & 0xFFFFFFFFFFFFFFFF)
    return x ^ (x >> np.uint64(33))


def uniform01(seed: int, step: int, users: np.ndarray, length: int) -> np.ndarray:
    """(B, length) float64 uniforms in [0, 1) from (seed, step, user, position), drawn on the host with no RNG
    state (the masked task's masks): the same in a plain, a resumed and a distributed run."""
    with np.errstate(over="ignore"):
        base = _mix_np(np.array([(seed * 1_000_003 + step) ^ _MASK_STREAM], dtype=np.uint64))
        u = _mix_np(users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base)  # (B,)
        pos = np.arange(length, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019)
        bits = _mix_np(u[:, None] + pos[None, :]) >> np.uint64(11)  # 53 bits
    return bits.astype(np.float64) * (1.0 / (1 << 53))
