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
from recjpq_cli.errors import ConfigError, InputError
from recjpq_cli.jpq.codebook import codes_dtype_name

SIDECAR_KEYS = ("format_version", "strategy", "M", "ksub", "seed", "dataset_fingerprint", "n_items", "dtype",
                "collisions_before", "collisions_after", "seconds", "occupancy")


# The paper's centroid budget per split: ksub x d = 256 x 512. Without -b, assign picks ksub = this / d.
KSUB_TIMES_D = 131072


def default_ksub(dim: int, n_items: int) -> int:
    """ksub for codes made for ``dim``: ``KSUB_TIMES_D // dim``, at most half the items, at least 2."""
    return max(2, min(KSUB_TIMES_D // max(1, dim), n_items // 2))


def assign_command(dataset: Path | str, codes: Path | str, side: dict[str, Any], d: int, *, keep_ksub: bool) -> str:
    """The `recjpq assign` command that remakes ``codes`` with the sidecar's settings for training dimension d
    (with ``keep_ksub``, an explicit -b is kept; otherwise ksub follows d)."""
    parts = ["recjpq assign", str(dataset), "--strategy", str(side.get("strategy", "svd-kmeans")), "--dim", str(d),
             "-m", str(side.get("M", 8))]
    if keep_ksub and side.get("ksub_auto") is False:
        parts += ["-b", str(side.get("ksub"))]
    return " ".join(parts + ["--seed", str(side.get("seed", 0)), "--out", str(codes), "--overwrite"])


def check_codes_for_d(side: dict[str, Any], codes: Path, dataset: Path, d: int, *, use_centroids: bool) -> str | None:
    """Codes against the d a run trains with: a ConfigError with the exact `assign` command when their starting
    centroids were made for another d; otherwise a one-line hint when ksub x d is below KSUB_TIMES_D (and
    more centroids would fit), else None."""
    made_for = side.get("d")
    if use_centroids and side.get("centroids_file") and isinstance(made_for, int) and made_for != d:
        raise ConfigError(f"{codes}: these codes and their starting centroids were made for d={made_for}, this run "
                          f"has d={d}; assign them for d={d}: `{assign_command(dataset, codes, side, d, keep_ksub=True)}` "
                          f"(or train with --set d={made_for})")
    ksub, n_items = int(side["ksub"]), int(side["n_items"])
    better = default_ksub(d, n_items)
    if ksub * d >= KSUB_TIMES_D or better <= ksub:
        return None
    return (f"note: {codes} has ksub={ksub:,} centroids per split; at d={d} that is {ksub * d:,} < {KSUB_TIMES_D:,} "
            f"(the paper's 256 x 512) and learns worse; `{assign_command(dataset, codes, side, d, keep_ksub=False)}` gives ksub "
            f"{better:,}")


def sidecar_path(path: Path) -> Path:
    """``CODES.yaml`` next to ``CODES.npy``: the same path with the suffix replaced."""
    return Path(path).with_suffix(".yaml")


def centroids_path(path: Path) -> Path:
    """``CODES.centroids.npy`` next to ``CODES.npy``: the starting centroids of an ``svd-kmeans`` assignment."""
    return Path(path).with_suffix(".centroids.npy")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save must not append its own suffix
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_codes(path: Path, codes: np.ndarray, meta: dict[str, Any], centroids: np.ndarray | None = None) -> None:
    """Write ``CODES.npy``, its sidecar and (svd-kmeans) ``CODES.centroids.npy`` together, atomically."""
    path = Path(path)
    paths = [path, sidecar_path(path)] + ([centroids_path(path)] if centroids is not None else [])
    with atomic_files(paths) as tmps:
        _save_npy(tmps[0], codes)
        tmps[1].write_text(dump_yaml(meta))
        if centroids is not None:
            _save_npy(tmps[2], centroids.astype(np.float32))


def load_init_centroids(path: Path, side: dict[str, Any]) -> np.ndarray | None:
    """The starting centroids ``(M, ksub, dsub)`` float32 named by the sidecar's ``centroids_file``, or None.

    Checks: the file exists next to the codes, is a float32 ``.npy`` of shape ``(M, ksub, dsub)`` matching
    the sidecar, and holds only finite values. Each failure is an InputError naming the file.
    """
    name = side.get("centroids_file")
    if name is None:
        return None
    where = sidecar_path(path)
    if not isinstance(name, str) or Path(name).name != name:
        raise InputError(f"{where}: 'centroids_file' must be a file name next to the codes, got {name!r}")
    cpath = Path(path).parent / name
    if not cpath.is_file():
        raise InputError(f"{cpath}: initial centroids file not found (named by {where.name}; assign the codes again)")
    try:
        c = np.load(cpath, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{cpath}: not a readable .npy file ({type(e).__name__})") from None
    M, ksub = side["M"], side["ksub"]
    if c.dtype != np.float32 or c.ndim != 3 or c.shape[:2] != (M, ksub) or c.shape[2] < 1:
        raise InputError(f"{cpath}: expected float32 centroids of shape ({M}, {ksub}, d/M), "
                         f"got {c.dtype} {tuple(c.shape)}")
    if not np.isfinite(c).all():
        raise InputError(f"{cpath}: holds non-finite values")
    return c


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
    if side["dtype"] != codes_dtype_name(ksub):
        raise InputError(f"{side_path}: dtype {side['dtype']!r} does not suit ksub={ksub} "
                         f"(expected {codes_dtype_name(ksub)})")
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
