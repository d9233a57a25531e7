"""The codes contract: ``CODES.npy`` (item codes) and its ``CODES.yaml`` sidecar (see docs/formats.md).

``CODES.npy`` holds ``(n_items + 1, M)`` sub-ids, row 0 the padding item (all zeros, never scored), uint8
when ``ksub <= 256`` else uint16. The sidecar says how the codes were made and for which dataset; every
consumer reads both through :func:`load_codes`, which checks them against each other and the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recjpq_cli.data.io import atomic_files, dump_yaml, read_yaml
from recjpq_cli.data.schema import CODES_FORMAT_VERSION, DATASET_YAML
from recjpq_cli.errors import InputError

SIDECAR_KEYS = ("format_version", "strategy", "M", "ksub", "seed", "dataset_fingerprint", "n_items", "dtype",
                "collisions_before", "collisions_after", "seconds", "occupancy")


def sidecar_path(path: Path) -> Path:
    """``CODES.yaml`` next to ``CODES.npy``: the same path with the suffix replaced."""
    return Path(path).with_suffix(".yaml")


def codes_dtype(ksub: int) -> np.dtype:
    """uint8 when every sub-id fits in a byte (ksub <= 256), else uint16 (ksub <= 65,536)."""
    return np.dtype(np.uint8) if ksub <= 256 else np.dtype(np.uint16)


def save_codes(path: Path, codes: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ``CODES.npy`` and its sidecar together, atomically (both appear or neither)."""
    path = Path(path)
    with atomic_files([path, sidecar_path(path)]) as (tmp_npy, tmp_yaml):
        with open(tmp_npy, "wb") as f:  # a file object: np.save must not append its own suffix
            np.save(f, np.ascontiguousarray(codes), allow_pickle=False)
        tmp_yaml.write_text(dump_yaml(meta))


def _int(side: dict[str, Any], key: str, where: Path, lo: int) -> int:
    v = side.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise InputError(f"{where}: '{key}' must be an integer >= {lo}, got {v!r}")
    return v


def load_codes(path: Path, dataset_meta: dict | None = None, *,
               dataset_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """Read and check ``CODES.npy`` and its sidecar; returns (codes, sidecar).

    Checks: both files exist, the sidecar's format version and keys, the array's dtype, shape
    ``(n_items + 1, M)``, zero padding row and values below ``ksub``; with ``dataset_meta`` (a dataset's
    ``dataset.yaml``), that the codes were assigned for that dataset. ``dataset_dir`` only names the
    dataset in the error message.
    """
    path = Path(path)
    side_path = sidecar_path(path)
    if not path.is_file():
        raise InputError(f"{path}: codes file not found (make one with `recjpq assign`)")
    if not side_path.is_file():
        raise InputError(f"{path}: its sidecar {side_path.name} is missing; codes without it cannot be checked "
                         f"(assign them again with `recjpq assign`)")
    side = read_yaml(side_path, "codes description")
    if side.get("format_version") != CODES_FORMAT_VERSION:
        raise InputError(f"{side_path}: unsupported format_version {side.get('format_version')!r} "
                         f"(this recjpq reads {CODES_FORMAT_VERSION})")
    missing = [k for k in SIDECAR_KEYS if k not in side]
    if missing:
        raise InputError(f"{side_path}: key(s) {', '.join(missing)} missing")
    M, ksub, n_items = _int(side, "M", side_path, 1), _int(side, "ksub", side_path, 2), _int(side, "n_items", side_path, 1)
    if side["dtype"] not in ("uint8", "uint16") or np.dtype(side["dtype"]) != codes_dtype(ksub):
        raise InputError(f"{side_path}: dtype {side['dtype']!r} does not suit ksub={ksub} "
                         f"(expected {codes_dtype(ksub).name})")
    try:
        codes = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({type(e).__name__})") from None
    if codes.dtype != np.dtype(side["dtype"]):
        raise InputError(f"{path}: dtype {codes.dtype} but {side_path.name} says {side['dtype']}")
    if codes.shape != (n_items + 1, M):
        raise InputError(f"{path}: shape {codes.shape} but {side_path.name} says (n_items + 1, M) = "
                         f"({n_items + 1}, {M})")
    if codes[0].any():
        raise InputError(f"{path}: row 0 (the padding item) must be all zeros")
    if codes.size and int(codes.max()) >= ksub:
        raise InputError(f"{path}: sub-id {int(codes.max())} is not below ksub={ksub}")
    if dataset_meta is not None:
        ds_name = f"{Path(dataset_dir) / DATASET_YAML}" if dataset_dir is not None else f"the dataset's {DATASET_YAML}"
        fp, ds_fp = str(side["dataset_fingerprint"]), str(dataset_meta.get("fingerprint"))
        ds_items = dataset_meta.get("n_items")
        if fp != ds_fp or n_items != ds_items:
            raise InputError(f"{path}: these codes belong to another dataset: {side_path.name} has fingerprint "
                             f"{fp[:12]}… and {n_items} items, {ds_name} has fingerprint {ds_fp[:12]}… and "
                             f"{ds_items} items (assign codes for this dataset with `recjpq assign`)")
    return codes, side
