"""The compact model file (``recjpq compress``) and the one loader of "a run or a model" for evaluate/recommend.

A model file is a safetensors file (see docs/formats.md, "Model file"): tensors only, so loading never unpickles
code. Tensors: the model's state dict with codes in the CODES dtype (uint8, or uint16 when ksub > 256) and
centroids in the chosen dtype (fp32, fp16, bf16), and the raw id maps as embedded Parquet bytes
(``idmap.items``, ``idmap.users``). String metadata: ``format``, ``format_version``, ``model_args`` (JSON,
the dict ``build_model`` takes), ``dataset_fingerprint``, ``dataset`` (the folder's path; files written before it
was recorded lack it), ``codes_dtype``, ``centroid_dtype``, ``source`` and
``codes_meta`` (JSON).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from recjpq_cli.data.io import atomic_file
from recjpq_cli.errors import InputError, first_line
from recjpq_cli.jpq.codebook import codes_dtype_name, codes_torch_dtype

FORMAT = "recjpq-model"
ARTIFACT_FORMAT_VERSION = 1
CENTROID_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CODES_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16}
IDMAP_ITEMS, IDMAP_USERS = "idmap.items", "idmap.users"
CHECKPOINTS = ("best", "last")


# ------------------------------------------------------------------------------------------- building


def build(model_args: dict[str, Any]) -> nn.Module:
    """``build_model`` plus the post-hoc variant with separate input codes (``input_pq`` in the args)."""
    from recjpq_cli.jpq.pq import PQInputJPQ
    from recjpq_cli.models.registry import build_model, extra_tokens

    if not model_args.get("input_pq"):
        return build_model(model_args)
    n, m, ksub = model_args["n_items"], model_args["M"], model_args["ksub"]
    zeros = torch.zeros(n + 1, m, dtype=codes_torch_dtype(ksub))
    items = PQInputJPQ(codes=zeros, ksub=ksub, d=model_args["d"], input_codes=zeros.clone(),
                       extra_tokens=extra_tokens(model_args))
    return build_model(model_args, items=items)


# --------------------------------------------------------------------------------------------- sizes


def _is_codes(key: str) -> bool:
    return key.startswith("items.") and key.endswith("codes")


def _is_centroids(key: str) -> bool:
    return key.startswith("items.") and key.endswith("centroids")


def size_report(*, n_items: int, d: int, codes_count: int, codes_itemsize: int, centroid_params: int,
                centroid_itemsize: int, backbone_params: int, dense_item_params: int = 0,
                id_map_bytes: int = 0, file_bytes: int | None = None,
                checkpoint_bytes: int | None = None) -> dict[str, Any]:
    """Bytes per component beside the dense equivalent: two untied (n_items + 1) x d fp32 tables (the paper's
    SASRec baseline) and the same backbone in fp32."""
    codes_b = codes_count * codes_itemsize
    cent_b = centroid_params * centroid_itemsize
    dense_b = dense_item_params * 4
    backbone_b = backbone_params * 4
    item_b = codes_b + cent_b + dense_b
    eq_item_params = 2 * (n_items + 1) * d
    eq_item_b = eq_item_params * 4
    eq_model_b = eq_item_b + backbone_b
    out: dict[str, Any] = {
        "n_items": n_items, "d": d,
        "components": {
            "codes": {"count": codes_count, "bytes": codes_b},
            "centroids": {"parameters": centroid_params, "bytes": cent_b},
            "dense_item_tables": {"parameters": dense_item_params, "bytes": dense_b},
            "backbone": {"parameters": backbone_params, "bytes": backbone_b},
            "id_maps": {"bytes": id_map_bytes},
        },
        "item_table_bytes": item_b,
        "model_bytes": item_b + backbone_b,
        "dense_equivalent": {"item_table_parameters": eq_item_params, "item_table_bytes": eq_item_b,
                             "model_bytes": eq_model_b},
        "item_table_ratio": eq_item_b / item_b if item_b else None,
        "model_ratio": eq_model_b / (item_b + backbone_b) if item_b + backbone_b else None,
        "file_bytes": file_bytes,
        "checkpoint_bytes": checkpoint_bytes,
        "checkpoint_ratio": checkpoint_bytes / file_bytes if file_bytes and checkpoint_bytes else None,
    }
    return out


def model_size(model: nn.Module, n_items: int, d: int, *, codes_itemsize: int, centroid_itemsize: int,
               **files: Any) -> dict[str, Any]:
    """``size_report`` of a built model, counting codes and centroids in their stored dtypes."""
    from recjpq_cli.jpq.embedding import FullEmbedding

    codes = cents = dense = other = 0
    for key, t in model.state_dict().items():
        if _is_codes(key):
            codes += t.numel()
        elif _is_centroids(key):
            cents += t.numel()
        elif isinstance(model.items, FullEmbedding) and key.startswith("items."):
            dense += t.numel()
        elif t.is_floating_point():
            other += t.numel()
    return size_report(n_items=n_items, d=d, codes_count=codes, codes_itemsize=codes_itemsize,
                       centroid_params=cents, centroid_itemsize=centroid_itemsize, backbone_params=other,
                       dense_item_params=dense, **files)


# ----------------------------------------------------------------------------------------- the file


def _parquet_bytes(s: pl.Series, name: str) -> torch.Tensor:
    buf = io.BytesIO()
    pl.DataFrame({name: s.cast(pl.String)}).write_parquet(buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def write_artifact(path: Path, model: nn.Module, model_args: dict[str, Any], *, fingerprint: str,
                   raw_items: pl.Series, raw_users: pl.Series, centroid_dtype: str, source: dict[str, Any],
                   codes_meta: dict[str, Any] | None, dataset: str | None = None) -> int:
    """Write the model file atomically; ``raw_items`` lists items 1..n (no padding entry). Returns the
    bytes the id maps take."""
    from safetensors.torch import save_file

    ksub = int(model_args["ksub"])
    codes_name = codes_dtype_name(ksub)
    tensors: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        if _is_codes(key):
            t = t.to(torch.int32).to(CODES_DTYPES[codes_name])
        elif _is_centroids(key):
            t = t.to(CENTROID_DTYPES[centroid_dtype])
        tensors[key] = t.contiguous().clone()
    tensors[IDMAP_ITEMS] = _parquet_bytes(raw_items, "raw_item")
    tensors[IDMAP_USERS] = _parquet_bytes(raw_users, "raw_user")
    meta = {
        "format": FORMAT, "format_version": str(ARTIFACT_FORMAT_VERSION),
        "model_args": json.dumps(model_args), "dataset_fingerprint": fingerprint,
        "codes_dtype": codes_name, "centroid_dtype": centroid_dtype,
        "source": json.dumps(source), "codes_meta": json.dumps(codes_meta),
    } | ({"dataset": dataset} if dataset else {})
    with atomic_file(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return tensors[IDMAP_ITEMS].numel() + tensors[IDMAP_USERS].numel()


def check_state(state: dict[str, torch.Tensor], args: dict[str, Any], path: Path) -> None:
    """The one check of a model's tensors before it is built, for run checkpoints and model files alike:
    every floating tensor finite (a diverged model is refused, never ranked), codes shaped
    ``(n_items + 1, M)`` with every sub-id below ``ksub``."""
    from recjpq_cli.models.registry import check_model_args

    check_model_args(args, path)
    if not isinstance(state, dict):
        raise InputError(f"{path}: the state dict is not a mapping of names to tensors")
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{path}: '{key}' is not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"{path}: '{key}' holds non-finite values (NaN or inf): the model diverged and "
                             f"cannot rank items; train again with a lower learning rate (--set lr=...)")
        if key.endswith("codes") and args.get("embedding") == "jpq":
            want = (int(args["n_items"]) + 1, int(args["M"]))
            if tuple(t.shape) != want:
                raise InputError(f"{path}: '{key}' has shape {tuple(t.shape)}, expected (n_items + 1, M) = {want}")
            c = t.to(torch.int32)
            lo, hi = (int(c.min()), int(c.max())) if c.numel() else (0, 0)
            if lo < 0 or hi >= int(args["ksub"]):
                bad = lo if lo < 0 else hi
                raise InputError(f"{path}: '{key}' holds sub-id {bad}, outside 0..ksub-1 = 0..{int(args['ksub']) - 1}; "
                                 f"the file is corrupt")


@dataclass
class Artifact:
    path: Path
    model: nn.Module
    model_args: dict[str, Any]
    fingerprint: str
    codes_dtype: str
    centroid_dtype: str
    source: dict[str, Any]
    codes_meta: dict[str, Any] | None
    raw_items: pl.Series  # indexed by item id; index 0 is the padding placeholder (null)
    raw_users: pl.Series  # indexed by user id


def _meta_json(path: Path, meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"{path}: model file metadata '{key}' is missing or not JSON") from None


def read_artifact(path: Path, device: str | torch.device = "cpu") -> Artifact:
    """Load a model file; a truncated, corrupt or foreign file is an InputError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputError(f"{path}: not a recjpq model file (make one with `recjpq compress`)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type, and OS errors
        first = first_line(e)
        raise InputError(f"{path}: corrupt or truncated model file ({first})") from None
    if meta.get("format_version") != str(ARTIFACT_FORMAT_VERSION):
        raise InputError(f"{path}: unsupported model file format_version {meta.get('format_version')!r} "
                         f"(this recjpq reads {ARTIFACT_FORMAT_VERSION})")
    args = _meta_json(path, meta, "model_args")
    for key in ("dataset_fingerprint", "codes_dtype", "centroid_dtype"):
        if key not in meta:
            raise InputError(f"{path}: model file metadata '{key}' is missing")
    try:
        raw_items = pl.read_parquet(io.BytesIO(tensors.pop(IDMAP_ITEMS).numpy().tobytes()))["raw_item"]
        raw_users = pl.read_parquet(io.BytesIO(tensors.pop(IDMAP_USERS).numpy().tobytes()))["raw_user"]
    except Exception as e:  # noqa: BLE001 - any failure here is the file's fault
        raise InputError(f"{path}: id maps are missing or unreadable ({type(e).__name__})") from None
    check_state(tensors, args, path)
    try:
        model = build(args)
        state = {k: (v.float() if v.is_floating_point() else v.to(torch.int32)) for k, v in tensors.items()}
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = first_line(e)
        raise InputError(f"{path}: weights do not match the model arguments ({first})") from None
    model.eval().to(device)
    return Artifact(path=path, model=model, model_args=args, fingerprint=meta["dataset_fingerprint"],
                    codes_dtype=meta["codes_dtype"], centroid_dtype=meta["centroid_dtype"],
                    source=_meta_json(path, meta, "source"), codes_meta=_meta_json(path, meta, "codes_meta"),
                    raw_items=pl.concat([pl.Series("raw_item", [None], pl.String), raw_items]),
                    raw_users=raw_users)


# ------------------------------------------------------------------------------- a run or a model


@dataclass
class LoadedModel:
    """What evaluate and recommend need from a run folder or a model file."""

    name: str
    source: Path  # what the user gave
    file: Path  # the checkpoint or model file read
    kind: str  # "run" | "model"
    model: nn.Module
    model_args: dict[str, Any]
    fingerprint: str
    raw_items: pl.Series | None = None  # from a model file; runs use the dataset's
    size: dict[str, Any] = field(default_factory=dict)


def model_inputs(source: Path, checkpoint: str = "best") -> list[Path]:
    """The files ``load_model`` reads from a run folder or model file (what no output may replace)."""
    source = Path(source)
    return [source, source / f"{checkpoint}.pt"] if source.is_dir() else [source]


def model_file_kind(source: Path) -> str:
    """A file given as a model: a torch checkpoint is read as one, a safetensors file as a model file; a pickle
    or anything else is refused in one line that says what it is (decided by content, never by suffix)."""
    from recjpq_cli.data import kinds

    try:
        kind = kinds.file_kind(source)
    except OSError as e:
        raise InputError(f"{source}: cannot read the file ({e.strerror or type(e).__name__})") from None
    if kind == kinds.PICKLE:
        raise InputError(f"{source}: is a pickle file, which recjpq never loads (unpickling can run code); "
                         f"give a model file from `recjpq compress` or a run folder")
    if kind not in (kinds.TORCH, kinds.MODEL, kinds.SAFETENSORS):
        raise InputError(f"{source}: is {kind}, not a model file or a torch checkpoint (give a run folder, a "
                         f"model file from `recjpq compress` or a checkpoint .pt)")
    return kind


def load_model(source: Path, *, checkpoint: str = "best", data: Path, fingerprint: str,
               device: str | torch.device = "cpu") -> LoadedModel:
    """A directory is a run (``best.pt`` or ``last.pt``), a file is a model file (a checkpoint file given
    directly also works). The model must belong to the dataset: the error names both otherwise."""
    from recjpq_cli.checkpoint import load_checkpoint, model_from_checkpoint

    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such run folder or model file")
    from recjpq_cli.data import kinds

    if source.is_dir() or model_file_kind(source) == kinds.TORCH:
        file = source / f"{checkpoint}.pt" if source.is_dir() else source
        if not file.is_file():
            raise InputError(f"{source}: {file.name} not found (a run folder written by `recjpq train` "
                             f"holds best.pt and last.pt)")
        ckpt = load_checkpoint(file)
        fp = str(ckpt["dataset_fingerprint"])
        _check_fingerprint(source, fp, data, fingerprint)
        check_state(ckpt["state_dict"], ckpt["model_args"], file)
        model = model_from_checkpoint(ckpt, file).to(device)
        args = ckpt["model_args"]
        size = model_size(model, args["n_items"], args["d"],
                          codes_itemsize=CODES_DTYPES[codes_dtype_name(args.get("ksub") or 256)].itemsize,
                          centroid_itemsize=4, file_bytes=file.stat().st_size)
        return LoadedModel(name=source.name, source=source, file=file, kind="run", model=model,
                           model_args=args, fingerprint=fp, size=size)
    art = read_artifact(source, device)
    _check_fingerprint(source, art.fingerprint, data, fingerprint)
    size = model_size(art.model, art.model_args["n_items"], art.model_args["d"],
                      codes_itemsize=CODES_DTYPES[art.codes_dtype].itemsize,
                      centroid_itemsize=CENTROID_DTYPES[art.centroid_dtype].itemsize,
                      file_bytes=source.stat().st_size)
    return LoadedModel(name=source.name, source=source, file=source, kind="model", model=art.model,
                       model_args=art.model_args, fingerprint=art.fingerprint, raw_items=art.raw_items,
                       size=size)


def _check_fingerprint(source: Path, fp: str, data: Path, expected: str) -> None:
    if fp != expected:
        raise InputError(f"{source} was trained on another dataset (fingerprint {fp[:12]}…) than {data} "
                         f"(fingerprint {expected[:12]}…); use the dataset it was trained on")
