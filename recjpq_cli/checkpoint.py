"""Checkpoints of a run: plain dicts of tensors and primitives, loaded with weights_only=True.

Keys: format_version, model, embedding, model_args, config, state_dict, optimizer, rng, epoch, step,
best_metric, dataset_fingerprint, codes_meta, world_size (see docs/formats.md).
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recjpq_cli.data.io import atomic_file
from recjpq_cli.data.schema import CHECKPOINT_FORMAT_VERSION
from recjpq_cli.errors import InputError, first_line

REQUIRED_KEYS = ("format_version", "model", "embedding", "model_args", "config", "state_dict", "epoch", "step",
                 "dataset_fingerprint")


# Tests only: seconds to wait between writing a checkpoint's temporary file and renaming it into place, so a
# test can kill the process in that window (the moment a crash is most likely to break a run folder).
SLOW_SAVE_ENV = "RECJPQ_TEST_SLOW_CHECKPOINT"


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Write atomically; a write that fails (full disk, read-only folder) is an InputError naming the file."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            torch.save(ckpt, tmp)
            delay = float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)
            if delay > 0:
                time.sleep(delay)
    except RuntimeError as e:  # torch reports a failed write as RuntimeError (data.io converts OSErrors)
        first = first_line(e, 160)
        raise InputError(f"{path}: cannot write the checkpoint ({first}); free space or fix permissions, "
                         "then --resume") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; a corrupt, truncated or foreign file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about legacy (pickle) files; the error below says it all
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:  # a file object: torch.load picks its reader by content, not by suffix
                ckpt = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: not a recjpq checkpoint: it holds Python objects beyond tensors and plain "
                         "values, which are never loaded (nothing is unpickled)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            KeyError, AttributeError, TypeError, IndexError) as e:
        first = first_line(e)
        raise InputError(f"{path}: corrupt or truncated checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise InputError(f"{path}: not a recjpq checkpoint (keys missing)")
    if ckpt["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise InputError(f"{path}: unsupported checkpoint format_version {ckpt['format_version']!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> nn.Module:
    from recjpq_cli.models.registry import build_model

    model = build_model(ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as e:
        first = first_line(e)
        raise InputError(f"{path}: weights do not match the model arguments ({first})") from None
    model.eval()
    return model
