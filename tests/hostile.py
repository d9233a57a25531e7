"""Helpers of the hostile-input tests: a folder's files before and after, a refusal, tampered copies."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch
import yaml
from conftest import error_line, invoke


def snapshot(*folders: Path) -> dict[str, tuple[int, str, int]]:
    """Every path under the folders (recursively) with size, sha256 and mode: any new, changed or
    removed file (a temporary left behind included) changes it."""
    out: dict[str, tuple[int, str, int]] = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            else:
                out[str(p)] = (-1, "dir", p.stat().st_mode)
    return out


def refused(args: list[Any], *folders: Path, words: tuple[str, ...] = (), code: int = 1) -> str:
    """Run ``recjpq ARGS``: exit ``code``, exactly one ``Error:`` line holding every word, no traceback, and
    nothing new or changed in ``folders``. Returns the line."""
    before = snapshot(*folders)
    res = invoke(args)
    assert res.exit_code == code, res.output
    line = error_line(res)
    for w in words:
        assert str(w) in line, (w, line)
    assert snapshot(*folders) == before, line
    return line


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tamper_model(src: Path, dst: Path, tensors: Callable[[dict], None] | None = None,
                 meta: Callable[[dict], None] | None = None) -> Path:
    """A copy of a model file with its tensors and/or string metadata changed in place by the callables."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_file(t, str(dst), metadata=m)
    return dst


def tamper_run(src: Path, dst: Path, change: Callable[[dict], None]) -> Path:
    """A copy of a run folder whose best.pt was changed by ``change(checkpoint)``."""
    copy_tree(src, dst)
    ckpt = torch.load(dst / "best.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, dst / "best.pt")
    return dst


def tamper_dataset(src: Path, dst: Path, frame: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                   meta: Callable[[dict], None] | None = None) -> Path:
    """A copy of a dataset folder with interactions.parquet and/or dataset.yaml changed."""
    copy_tree(src, dst)
    if frame:
        frame(pl.read_parquet(dst / "interactions.parquet")).write_parquet(dst / "interactions.parquet")
    if meta:
        m = yaml.safe_load((dst / "dataset.yaml").read_text())
        meta(m)
        (dst / "dataset.yaml").write_text(yaml.safe_dump(m))
    return dst


def set_json(m: dict, key: str, **changes: Any) -> None:
    m[key] = json.dumps(json.loads(m[key]) | changes)
