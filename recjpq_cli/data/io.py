"""The one place that writes artefacts: atomic files and directories, JSON/YAML facts, hashes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from recjpq_cli.errors import InputError, OutputExistsError


def check_output(path: Path, overwrite: bool, what: str = "output") -> None:
    """Refuse to replace an existing output unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: {what} already exists (use --overwrite to replace it)")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: folder for the {what} does not exist")


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    check_output(path, overwrite, "output folder")
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        trash = _tmp_sibling(path, ".old")
        os.replace(path, trash)
        os.replace(tmp, path)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it is renamed onto ``path``."""
    path = Path(path)
    tmp = _tmp_sibling(path, path.suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextmanager
def atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """Several files that appear together: all are renamed only when every one was written."""
    tmps = [_tmp_sibling(Path(p), Path(p).suffix) for p in paths]
    try:
        yield tmps
    except BaseException:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise
    for t, p in zip(tmps, paths, strict=True):
        os.replace(t, p)


def _clean(obj: Any) -> Any:
    """Make numpy scalars, paths and non-finite floats JSON/YAML friendly."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_json_path(path: str | Path | None) -> None:
    """Refuse a ``--json PATH`` that cannot be written, before any work is done."""
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: --json needs a file path, not a folder")
    if not p.parent.is_dir():
        raise InputError(f"{p.parent}: folder for the JSON output does not exist")


def write_json(path: str | Path | None, facts: dict[str, Any]) -> None:
    """``--json PATH`` output: ``-`` means stdout; otherwise written atomically."""
    if path is None:
        return
    text = json.dumps(_clean(facts), indent=2, sort_keys=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    p = Path(path)
    if not p.parent.exists():
        raise InputError(f"{p.parent}: folder for the JSON output does not exist")
    with atomic_file(p) as tmp:
        tmp.write_text(text)


def dump_yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(_clean(obj), sort_keys=False, default_flow_style=False)


def write_yaml(path: Path, obj: dict[str, Any]) -> None:
    Path(path).write_text(dump_yaml(obj))


def read_yaml(path: Path, what: str = "YAML file") -> dict[str, Any]:
    """Read a YAML mapping safely; a missing or malformed file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} must hold a mapping of keys to values")
    return data


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
