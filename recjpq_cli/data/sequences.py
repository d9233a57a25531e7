"""Vectorised batches for torch from a prepared Dataset: training windows, histories, seen items."""

from __future__ import annotations

import numpy as np
import torch

from recjpq_cli.data.schema import SPLITS, Dataset


def windows(item: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """(B, length) int64: the last ``length`` items of item[starts:ends] per row, left-padded with 0."""
    idx = ends[:, None] - length + np.arange(length)[None, :]  # (B, length)
    valid = idx >= starts[:, None]
    out = item[np.where(valid, idx, 0)].astype(np.int64)
    out[~valid] = 0
    return out


def train_lengths(ds: Dataset) -> np.ndarray:
    """Training items per user (training items come first in each user's sequence)."""
    return ds.lengths("train")


def trainable_users(ds: Dataset) -> np.ndarray:
    """Users with at least two training items (one input, one target)."""
    return np.flatnonzero(train_lengths(ds) >= 2)


def train_batch(ds: Dataset, users: np.ndarray, max_len: int, n_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets, (B, max_len) int64 each, from the users' training items."""
    starts = ds.offsets[users]
    ends = starts + n_train[users]
    w = windows(ds.item, starts, ends, max_len + 1)
    return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])


def masked_batch(ds: Dataset, users: np.ndarray, max_len: int, n_train: np.ndarray) -> np.ndarray:
    """The last ``max_len`` training items per user, (B, max_len) int64, for masked-item training."""
    starts = ds.offsets[users]
    return windows(ds.item, starts, starts + n_train[users], max_len)


def masked_slots(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The masked positions of each row, packed to the left: (positions (B, P), filled (B, P) bool), P the
    most masked positions of any row (at least 1). Each row lists its masked positions in ascending order,
    then unmasked ones as filler (``filled`` False), so ``filled`` rows read in order are ``mask`` read in
    order."""
    counts = mask.sum(1)
    p = max(1, int(counts.max(initial=0)))
    pos = np.argsort(~mask, axis=1, kind="stable")[:, :p]
    return pos.astype(np.int64), np.arange(p)[None, :] < counts[:, None]


def eval_targets(ds: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, target positions) of the users who have an item in ``split`` ('val' or 'test')."""
    if split not in SPLITS[1:]:
        raise ValueError(split)
    return ds.targets(split)


def histories(ds: Dataset, users: np.ndarray, target_pos: np.ndarray, max_len: int) -> torch.Tensor:
    """(B, max_len) left-padded histories: everything before the target in each user's sequence."""
    return torch.from_numpy(windows(ds.item, ds.offsets[users], target_pos, max_len))


def seen_items(ds: Dataset, users: np.ndarray, target_pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole history of each row as (row, item) pairs, for filtering seen items out of a ranking."""
    starts = ds.offsets[users]
    lens = target_pos - starts
    rows = np.repeat(np.arange(len(users)), lens)
    first = np.repeat(np.cumsum(lens) - lens, lens)
    idx = np.repeat(starts, lens) + (np.arange(lens.sum()) - first)
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(ds.item[idx].astype(np.int64))
