"""The run folder of ``train``: its file names, its one-writer lock, and how it is created, replaced and kept
consistent (``docs/formats.md#run-directory``).

Order of writes at every validation: ``last.pt`` (atomic), then ``best.pt`` (atomic), then
``metrics.jsonl`` (rewritten atomically). So a kill at any moment leaves checkpoints at least as new as the
metrics, and :func:`reconcile_metrics` makes the metrics agree with ``last.pt`` on ``--resume``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from recjpq_cli.data.io import atomic_file
from recjpq_cli.errors import InputError, OutputExistsError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"


class RunLock:
    """An exclusive advisory lock (``flock``) on ``RUN/.lock``, held while a process writes the run.

    The operating system releases it when the process ends, however it ends, so a lock file left behind by
    a killed process is never mistaken for a live writer.
    """

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid.isdigit() else ""


def lock(run_dir: Path) -> RunLock:
    """Take the run folder's lock, or refuse in one line when another process holds it."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(f"{path}: cannot create the run's lock file ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise InputError(f"{run_dir}: the run is in use by another recjpq process{_holder(path)}; "
                             "wait for it to finish or stop it first") from None
        raise InputError(f"{path}: cannot lock the run folder ({e.strerror})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(fd, path)


def busy(run_dir: Path) -> bool:
    """True while another process holds the lock of ``run_dir`` (False for a folder that is not a run)."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def refuse_if_busy(path: Path) -> None:
    """Refuse to write ``path`` when it is, or lies in, a run folder that a training process is writing."""
    path = Path(path)
    for folder in (path, path.parent):
        if busy(folder):
            raise InputError(f"{path}: the run {folder} is in use by another recjpq process"
                             f"{_holder(folder / LOCK)}; wait for it to finish or stop it first")


def is_run_folder(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def create(run: Path, overwrite: bool, config_text: str) -> RunLock:
    """Create the run folder (and any missing folders above it) with its ``config.yaml`` and lock; with
    ``overwrite``, replace an old run.

    The new folder is built beside the old one and swapped in whole, so the old run is deleted only once
    the new one exists; a folder that is not a run is never replaced. Returns the new folder's lock.
    """
    run = Path(run)
    old_lock = None
    if run.exists():
        if not overwrite:
            raise OutputExistsError(f"{run}: run folder already exists (use --resume to continue it or --overwrite)")
        if not run.is_dir() or (not is_run_folder(run) and any(run.iterdir())):
            raise OutputExistsError(f"{run}: exists and is not a recjpq run folder; refusing to overwrite it")
        old_lock = lock(run)
    tmp = run.with_name(f".{run.name}.tmp-{os.getpid()}")
    try:
        run.parent.mkdir(parents=True, exist_ok=True)  # `--out runs/x` makes runs/, as ML tools do
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        new_lock = lock(tmp)
        (tmp / CONFIG).write_text(config_text)
        if run.exists():
            trash = run.with_name(f".{run.name}.old-{os.getpid()}")
            os.replace(run, trash)
            os.replace(tmp, run)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, run)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputExistsError(f"{run}: run folder was created by another process meanwhile") from None
        raise InputError(f"{run}: cannot create the run folder ({e.strerror})") from None
    finally:
        if old_lock is not None:
            old_lock.release()
    new_lock.path = run / LOCK
    return new_lock


def remove_temporaries(run: Path) -> None:
    """Delete ``.NAME.tmp-*`` files left in the run folder by a killed writer (call with the lock held)."""
    for p in Path(run).glob(".*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = Path(run) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill in a version that appended in place
    return rows


def write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` whole (atomically): never a half-written line."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with atomic_file(Path(run) / METRICS) as tmp:
        tmp.write_text(text)


def reconcile_metrics(run: Path, ckpt_step: int, ckpt_row: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The metrics rows that agree with ``last.pt`` at ``ckpt_step``: later rows (a kill between the
    writes of an older version) are dropped, and the checkpoint's own row is added when it is missing."""
    rows = [r for r in read_metrics(run) if int(r.get("step", -1)) <= ckpt_step]
    if ckpt_row is not None and not any(int(r.get("step", -1)) == ckpt_step for r in rows):
        rows.append(ckpt_row)
    return rows
