"""The one place that writes artefacts: atomic files and directories, JSON/YAML facts, hashes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from recjpq_cli.errors import InputError, OutputExistsError, RecJPQError, WriteError, first_line

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_OS_ERROR = re.compile(r"os error (\d+)")


def os_errno(e: BaseException) -> int | None:
    """The errno of an OS error, also when a library wraps it in its own exception (polars, safetensors
    write ``... (os error 28)``); None for any other failure."""
    if isinstance(e, OSError):
        return e.errno if e.errno is not None else 0
    m = _OS_ERROR.search(str(e))
    return int(m.group(1)) if m else None


def write_error(path: Path, errno: int) -> WriteError:
    """The one message for an output that could not be written: the path and the OS's reason."""
    reason = os.strerror(errno) if errno else "operating system error"
    hints = {28: "; free some space or choose another --out", 30: "; choose a writable --out",
             13: "; choose a writable --out", 21: "; a folder is in the way, choose another --out"}
    return WriteError(f"{path}: cannot write ({reason}){hints.get(errno, '')}")


def check_output(path: Path, overwrite: bool, what: str = "output", kinds: tuple[str, ...] = ()) -> None:
    """Refuse to replace an existing output unless ``overwrite``; with ``kinds`` (see data/kinds.py),
    ``--overwrite`` replaces only an artefact of one of those kinds, decided by its content."""
    from recjpq_cli.data import kinds as K

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: {what} already exists (use --overwrite to replace it)")
    if path.exists() and kinds:
        actual = K.kind_of(path)
        if actual not in kinds:
            raise OutputExistsError(f"{path}: is {actual}, not {kinds[0]}; --overwrite replaces only "
                                    f"{kinds[0].split(' ', 1)[1]}s, choose another --out")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: folder for the {what} does not exist")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: is not a folder, so it cannot hold the {what}")
    from recjpq_cli.runfolder import refuse_if_busy

    refuse_if_busy(path)  # never write into a run folder that a training process holds


def check_not_input(out: Path, inputs: list[Path | None], what: str = "--out") -> None:
    """An output may not be one of the command's own inputs (nor hold one, for a folder output)."""
    o = Path(out).resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).resolve()
        if o == s or o in s.parents:
            raise InputError(f"{out}: {what} names this command's own input {src}; choose another {what}")


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise write_error(path, e.errno or 0) from None
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def _written(path: Path, tmps: list[Path]) -> Iterator[None]:
    """On any failure remove the temporaries; an OS error (read-only, full, busy, a folder in the way)
    becomes one WriteError naming ``path``."""
    try:
        yield
    except BaseException as e:
        for t in tmps:
            _remove(t)
        n = os_errno(e) if isinstance(e, Exception) and not isinstance(e, RecJPQError) else None
        if n is None:
            raise
        raise write_error(path, n) from None


def check_not_cwd(path: Path) -> None:
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise InputError(f"{path}: is the current folder (or holds it), which cannot be replaced; "
                         f"give --out a new folder name")


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False, kinds: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on failure it is removed."""
    path = Path(path).resolve()
    check_output(path, overwrite, "output folder", kinds)
    check_not_cwd(path)
    tmp = _tmp_sibling(path)
    trash = None
    with _written(path, [tmp]):
        tmp.mkdir()
        yield tmp
        if path.exists():
            trash = _tmp_sibling(path, ".old")
            os.replace(path, trash)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(trash, path)  # put the old output back
                raise
        else:
            os.replace(tmp, path)
    if trash is not None:
        _remove(trash)


def _publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_UMASK)  # like any other output (some writers create 0600 files)
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it is renamed onto ``path``."""
    path = Path(path)
    tmp = _tmp_sibling(path, path.suffix)
    with _written(path, [tmp]):
        yield tmp
        _publish(tmp, path)


@contextmanager
def atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """Several files that appear together: all are renamed only when every one was written."""
    paths = [Path(p) for p in paths]
    tmps: list[Path] = []
    for p in paths:
        try:
            tmps.append(_tmp_sibling(p, p.suffix))
        except WriteError:
            for t in tmps:
                _remove(t)
            raise
    with _written(paths[0], tmps):
        yield tmps
        for t, p in zip(tmps, paths, strict=True):
            try:
                _publish(t, p)
            except OSError as e:
                raise write_error(p, e.errno or 0) from None


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


def check_json_path(path: str | Path | None, outputs: tuple[Path | None, ...] = (),
                    inputs: tuple[Path | None, ...] = ()) -> None:
    """Refuse a ``--json PATH`` that cannot be written, or that names one of the command's other outputs
    (``--out``, a sidecar) or inputs, before any work is done."""
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: --json needs a file path, not a folder")
    if not p.parent.is_dir():
        raise InputError(f"{p.parent}: folder for the JSON output does not exist")
    for out in outputs:
        if out is not None and Path(out).resolve() == p.resolve():
            raise InputError(f"{p}: --json and --out name the same file; give --json another path")
    check_not_input(p, list(inputs), "--json")


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
        first = first_line(e, 10_000)
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
