"""What a path holds, decided by its content (magic bytes, headers, marker files), never by its name.

Used where a command must know what it was given (a model file or a torch checkpoint) and before
``--overwrite`` replaces anything (only an artefact of the kind the command writes). Reads at most a file's
header: cheap for any size.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

DATASET = "a dataset folder"
RUN = "a run folder"
FOLDER = "a folder"
TORCH = "a torch checkpoint"
PICKLE = "a pickle file"
MODEL = "a recjpq model file"
SAFETENSORS = "a safetensors file"
NPY = "a .npy array"
CODES_SIDECAR = "a codes sidecar"
RECOMMENDATIONS = "a recommendations file"
PER_USER = "a per-user file"
PARQUET = "a Parquet file"
SYNTH_LOG = "a synthetic interaction log"
EMPTY = "an empty file"
OTHER = "a file of another kind"
MISSING = "nothing"

TORCH_ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
PARQUET_MAGIC = b"PAR1"
MODEL_FORMAT = "recjpq-model"  # the ``format`` metadata of a model file (artifact.FORMAT)
RECOMMENDATION_COLUMNS = ("user", "rank", "item", "score")
PER_USER_COLUMNS = ("user", "target", "rank", "long_tail")
SYNTH_COLUMNS = ("user_id", "item_id", "timestamp")  # what `recjpq synth` writes (csv, tsv or Parquet)
SIDECAR_MARKERS = ("format_version", "strategy", "M", "ksub", "dataset_fingerprint")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_MAX_YAML = 1024 * 1024


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file ({} when it has none), or None when it is not one."""
    head = _head(path, 8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if not 2 <= n <= min(_MAX_HEADER, path.stat().st_size - 8):
        return None
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    if not raw.startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _is_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ starts with PROTO (0x80) and the protocol number (torch's legacy format too)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _parquet_kind(path: Path) -> str:
    import polars as pl

    try:
        names = tuple(pl.read_parquet_schema(path))
    except Exception:  # noqa: BLE001 - a broken Parquet file is still "a Parquet file"
        return PARQUET
    if names == RECOMMENDATION_COLUMNS:
        return RECOMMENDATIONS
    if names[:len(PER_USER_COLUMNS)] == PER_USER_COLUMNS:
        return PER_USER
    if names == SYNTH_COLUMNS:
        return SYNTH_LOG
    return PARQUET


def _yaml_kind(path: Path) -> str:
    import yaml

    if path.stat().st_size > _MAX_YAML:
        return OTHER
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return OTHER
    return CODES_SIDECAR if isinstance(data, dict) and all(k in data for k in SIDECAR_MARKERS) else OTHER


def file_kind(path: Path) -> str:
    """One of this module's kinds for a file (the path must be a file)."""
    path = Path(path)
    head = _head(path, 8)
    if not head:
        return EMPTY
    if head.startswith(TORCH_ZIP_MAGIC):
        return TORCH
    if _is_pickle(head):
        return PICKLE
    if head.startswith(NPY_MAGIC):
        return NPY
    if head.startswith(PARQUET_MAGIC):
        return _parquet_kind(path)
    meta = safetensors_metadata(path)
    if meta is not None:
        return MODEL if meta.get("format") == MODEL_FORMAT else SAFETENSORS
    first = _head(path, 64).split(b"\n", 1)[0].rstrip(b"\r")
    if first in (",".join(SYNTH_COLUMNS).encode(), "\t".join(SYNTH_COLUMNS).encode()):
        return SYNTH_LOG
    return _yaml_kind(path)


def kind_of(path: Path) -> str:
    """What ``path`` holds: a folder kind (by its marker file), a file kind (by content), or MISSING."""
    from recjpq_cli.data.schema import DATASET_YAML
    from recjpq_cli.runfolder import CONFIG

    path = Path(path)
    if not path.exists():
        return MISSING
    if path.is_dir():
        if (path / DATASET_YAML).is_file():
            return DATASET
        if (path / CONFIG).is_file():
            return RUN
        return FOLDER
    try:
        return file_kind(path)
    except OSError:
        return OTHER
