"""The model behind ``recjpq serve``: raw ids in, top-k raw ids and scores out, for many queries at once.

A query is a history of known item ids (oldest first), a ``k`` and whether to exclude the history's items.
``Engine.answer`` encodes a list of queries as one batch (the last ``max_len`` items of each history, left-
padded, exactly as ``recommend`` builds them) and ranks the whole catalogue with ``top_k``: the same exact
kernel as ``recommend`` and ``evaluate``, so a user's answer equals their row of ``recommend``'s file.
No HTTP here: the server (``app.py``) and the tests call it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recjpq_cli import __version__, retrieval, scoring
from recjpq_cli.data import sequences
from recjpq_cli.errors import InputError

CPU = torch.device("cpu")  # the server scores on the CPU
CHUNK = 256  # queries encoded and ranked at once: bounds activations (B x max_len x d) whatever a batch holds
# The transformer of a small batch runs on one thread: a second OpenMP thread waits for a core at every small
# op (one tiny layer: 2.4 ms on one thread against 50-84 ms on two, on the shared 2-core machine). The top-k
# kernel still spreads a batch's users over every core (numba). Set in the thread that ranks (OpenMP's thread
# count is per thread).
TORCH_THREADS = 1


@dataclass(frozen=True)
class ServeConfig:
    model: Path
    data: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    batch_window_ms: float = 2.0
    max_batch: int = 64


@dataclass
class Query:
    items: np.ndarray  # (L,) int64 known item ids, oldest first
    k: int
    exclude_seen: bool = True
    unknown: list[str] = field(default_factory=list)  # raw ids of the history the model does not know


@dataclass
class Answer:
    items: list[str]  # raw item ids, best first
    scores: list[float]
    unknown: list[str]


def top_k(items: Any, h: Tensor, k: int, rows: Tensor | None, excluded: Tensor | None) -> tuple[Tensor, Tensor]:
    """The server's one top-k call: the fastest exact kernel (``retrieval.topk``: the pruned search of
    ``jpq/prune.py`` on large JPQ catalogues, else PQTopK or the torch path; the same lists either way)."""
    return retrieval.topk(items, h, k, rows, excluded)


def _pairs(flat: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> tuple[Tensor, Tensor]:
    """(row, item) pairs of flat[starts[r]:starts[r] + lens[r]] for every row r (the exclusions)."""
    rows = np.repeat(np.arange(len(lens)), lens)
    first = np.repeat(np.cumsum(lens) - lens, lens)
    idx = np.repeat(starts, lens) + (np.arange(int(lens.sum())) - first)
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(flat[idx].astype(np.int64))


class Engine:
    """A loaded model file (and optionally the dataset of known users), ready to answer queries."""

    def __init__(self, *, path: Path, model: torch.nn.Module, model_args: dict[str, Any], fingerprint: str,
                 raw_items: list[str | None], size: dict[str, Any], dataset: Any = None):
        self.path, self.model, self.model_args, self.fingerprint = path, model, model_args, fingerprint
        self.n_items = int(model_args["n_items"])
        self.max_len = int(model_args["max_len"])
        self.size = size
        self._names = raw_items  # index = item id; 0 is padding (None)
        self._item_id = dict(zip(raw_items[1:], range(1, len(raw_items)), strict=True))
        self.dataset = dataset
        self._user_id: dict[str, int] | None = None
        if dataset is not None:
            users = dataset.raw_users().to_list()
            self._user_id = dict(zip(users, range(len(users)), strict=True))

    @classmethod
    def load(cls, cfg: ServeConfig) -> Engine:
        """Read the model file with the checks of ``evaluate`` (and the dataset with ``--data``)."""
        from recjpq_cli.artifact import CENTROID_DTYPES, CODES_DTYPES, load_model, model_size, read_artifact
        from recjpq_cli.data.schema import load_dataset

        path = Path(cfg.model)
        if path.is_dir():
            raise InputError(f"{path}: is a folder; serve takes a model file (make one with `recjpq compress`)")
        if cfg.data is not None:
            ds = load_dataset(cfg.data)
            lm = load_model(path, data=cfg.data, fingerprint=ds.fingerprint)
            if lm.kind != "model" or lm.raw_items is None:
                raise InputError(f"{path}: is a training checkpoint; serve takes a model file "
                                 f"(make one with `recjpq compress`)")
            return cls(path=path, model=lm.model, model_args=lm.model_args, fingerprint=lm.fingerprint,
                       raw_items=lm.raw_items.to_list(), size=lm.size, dataset=ds)
        art = read_artifact(path)
        size = model_size(art.model, art.model_args["n_items"], art.model_args["d"],
                          codes_itemsize=CODES_DTYPES[art.codes_dtype].itemsize,
                          centroid_itemsize=CENTROID_DTYPES[art.centroid_dtype].itemsize,
                          file_bytes=path.stat().st_size)
        return cls(path=path, model=art.model, model_args=art.model_args, fingerprint=art.fingerprint,
                   raw_items=art.raw_items.to_list(), size=size)

    # ------------------------------------------------------------------------------------------ ids

    @property
    def has_users(self) -> bool:
        return self._user_id is not None

    def item_ids(self, raw: list[str]) -> tuple[np.ndarray, list[str]]:
        """Known item ids of the raw ids, in order, and the raw ids that are not in the model."""
        get = self._item_id.get
        ids = [get(r, 0) for r in raw]
        return np.array([i for i in ids if i], dtype=np.int64), [r for r, i in zip(raw, ids, strict=True) if not i]

    def user_history(self, raw_user: str) -> np.ndarray | None:
        """A known user's whole sequence (training, validation and test items, as ``recommend``), else None."""
        if self._user_id is None or raw_user not in self._user_id:
            return None
        u = self._user_id[raw_user]
        return self.dataset.item[self.dataset.offsets[u]:self.dataset.offsets[u + 1]].astype(np.int64)

    # ---------------------------------------------------------------------------------------- ranking

    def answer(self, queries: list[Query]) -> list[Answer]:
        """One answer per query, in order; histories are encoded together, CHUNK queries at a time."""
        if torch.get_num_threads() != TORCH_THREADS:
            torch.set_num_threads(TORCH_THREADS)
        out: list[Answer] = []
        for s in range(0, len(queries), CHUNK):
            out += self._answer_chunk(queries[s:s + CHUNK])
        return out

    @torch.no_grad()
    def _answer_chunk(self, queries: list[Query]) -> list[Answer]:
        lens = np.array([len(q.items) for q in queries], dtype=np.int64)
        flat = np.concatenate([q.items for q in queries]).astype(np.int64)
        starts = np.cumsum(lens) - lens
        hist = sequences.windows(flat, starts, starts + lens, self.max_len)  # (B, max_len), left-padded
        h = scoring.encode(self.model, torch.from_numpy(hist), CPU)  # (B, d), as evaluate and recommend encode
        ks = np.array([q.k for q in queries], dtype=np.int64)
        excl = np.array([q.exclude_seen for q in queries], dtype=bool)
        ids: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(queries)
        scores: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(queries)
        for k in np.unique(ks):  # one top-k call per distinct k (usually one)
            sel = np.flatnonzero(ks == k)
            rows, items = _pairs(flat, starts[sel], lens[sel] * excl[sel])
            sc, it = top_k(self.model.items, h[torch.from_numpy(sel)], int(k), rows, items)
            for j, r in enumerate(sel):
                ids[r], scores[r] = it[j].numpy(), sc[j].float().numpy()
        answers = []
        for q, i, sc in zip(queries, ids, scores, strict=True):
            keep = np.isfinite(sc)  # only when fewer than k items are left after the exclusions
            answers.append(Answer(items=[self._names[x] for x in i[keep].tolist()], scores=sc[keep].tolist(),
                                  unknown=q.unknown))
        return answers

    def warm_up(self) -> float:
        """Compile and run every kernel once (one query alone, then a batch), so no request pays for it."""
        t0 = time.perf_counter()
        q = Query(items=np.array([1], dtype=np.int64), k=1)
        self.answer([q])
        self.answer([q] * 8)
        return time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        a = self.model_args
        return {"items": self.n_items, "M": a.get("M"), "ksub": a.get("ksub"), "d": a["d"], "model": a["model"],
                "max_len": self.max_len, "model_bytes": self.size.get("model_bytes"),
                "file_bytes": self.size.get("file_bytes"), "dataset": self.fingerprint,
                "users": len(self._user_id) if self._user_id is not None else None, "version": __version__}
