"""Where a run's dataset is: the record ``train`` writes, and the ``--data`` default it gives.

``train`` writes the dataset folder's absolute path beside its fingerprint in ``config.yaml`` and in every
checkpoint; ``compress`` copies them into the model file (docs/formats.md). ``compress``, ``evaluate`` and
``recommend`` take that folder when ``--data`` is not given, after checking that it is still there and still
holds the dataset the run was trained on; the stage then checks the fingerprint as for an explicit ``--data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recjpq_cli.data.io import read_yaml
from recjpq_cli.data.schema import DATASET_YAML
from recjpq_cli.errors import InputError, first_line

DATASET_KEY = "dataset"  # the dataset folder's absolute path
FINGERPRINT_KEY = "dataset_fingerprint"
RUN_CONFIG = "config.yaml"


def record(ds_dir: Path, fingerprint: str | None = None) -> dict[str, str]:
    """``{dataset: absolute path, dataset_fingerprint: fingerprint}`` of a dataset folder, as the run files
    hold them (the fingerprint is read from its ``dataset.yaml`` when not given)."""
    if fingerprint is None:
        fingerprint = str(read_yaml(Path(ds_dir) / DATASET_YAML, "dataset description")["fingerprint"])
    return {DATASET_KEY: str(Path(ds_dir).resolve()), FINGERPRINT_KEY: str(fingerprint)}


def _from_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:  # memory-mapped: only the small entries are read
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the checked reader names what is wrong with the file
        from recjpq_cli.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
    return ckpt if isinstance(ckpt, dict) else {}


def _from_model_file(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type, and OS errors
        first = first_line(e)
        raise InputError(f"{path}: corrupt or truncated model file ({first})") from None


def recorded(source: Path, checkpoint: str = "best") -> dict[str, Any]:
    """What a run folder, a checkpoint file or a model file records of its dataset (may be empty)."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such run folder or model file")
    if source.is_dir():  # the checkpoint is the authority (a resume may have found the dataset elsewhere)
        ckpt = source / f"{checkpoint}.pt"
        rec = _from_checkpoint(ckpt) if ckpt.is_file() else {}
        if DATASET_KEY not in rec and (source / RUN_CONFIG).is_file():
            rec = read_yaml(source / RUN_CONFIG, "run config")
        return rec
    with open(source, "rb") as f:
        is_torch_zip = f.read(4) == b"PK\x03\x04"
    return _from_checkpoint(source) if is_torch_zip else _from_model_file(source)


def default_data(data: Path | None, source: Path | None, checkpoint: str = "best") -> Path:
    """``--data`` when given; otherwise the dataset folder that ``source`` records, checked to be still there
    and unchanged. Every error names ``--data``, the way out."""
    if data is not None:
        return data
    if source is None:
        raise InputError("--data: no run or model to take the dataset folder from; pass --data DATASET_DIR")
    rec = recorded(source, checkpoint)
    path, fingerprint = rec.get(DATASET_KEY), rec.get(FINGERPRINT_KEY)
    if not path:
        raise InputError(f"{source}: records no dataset folder (written before runs recorded theirs); "
                         f"pass --data DATASET_DIR")
    folder = Path(str(path))
    if not (folder / DATASET_YAML).is_file():
        raise InputError(f"{source}: its dataset folder {folder} is not there any more (moved or deleted); "
                         f"pass --data with the folder's new place")
    now = str(read_yaml(folder / DATASET_YAML, "dataset description").get("fingerprint"))
    if fingerprint and now != str(fingerprint):
        raise InputError(f"{source}: its dataset folder {folder} has changed since training (fingerprint "
                         f"{now[:12]}… instead of {str(fingerprint)[:12]}…); pass --data with the dataset it was "
                         f"trained on")
    return folder
