"""Items in the top-``d`` SVD space of a sparse users x items count matrix, in bounded memory (float32).

A randomized range finder with subspace (power) iterations, Halko, Martinsson & Tropp (2011), Alg. 4.4,
orthonormalised on the users' side only:

    Q = qr(G)                   G: seeded Gaussian (n_users, l), l = d + oversampling
    repeat q times:  Q = qr(A A^T Q)
    Z = A^T Q                   (n_items, l): the only n_items-sized array
    Q^T A A^T Q = W S^2 W^T     (l, l) eigen-decomposition in float64
    X = Z W[:, :d]              = V S, computed into Z's first d columns, block by block

Row i of ``X`` is item i's coordinates on the top right singular vectors times the singular values (the
rows of ``V * s``), as ``svds`` would give them, up to each component's sign. Signs are fixed so that every
component's column sum over the items is >= 0 (for a count matrix the top component then points along the
popular items); the components' order is descending by singular value, then ``columns`` reorders them.

Memory: ``Z`` (n_items x l float32), a few (n_users x l) arrays, the matrix and its transpose in CSR; the
power iterations go through the items in blocks, so Z is the only n_items-sized array. Time:
``2q + 3`` sparse products of ``nnz x l``, ``q + 1`` QRs of ``n_users x l`` and one ``n_items x l x d``
product (the sparse products in scipy, the dense ones in torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from recjpq_cli.errors import ConfigError

# Extra columns of the range finder beyond d, and passes of the subspace iteration. Measured on ML-1M at
# d=512 (docs/benchmarks.md): 8 passes with 32 extra columns keep the k-means objective within 0.4% of
# ARPACK's (4 passes with 16: 1.1% below); on the flat spectrum of sample_data fewer passes drift by > 1%.
OVERSAMPLE = 32
POWER_ITERS = 8
# Rows of Z multiplied per block in the final in-place rotation (a (rows, l) float32 temporary), and items
# per block of the power iterations' A A^T Q (their (items, l) temporaries).
ROTATE_ROWS = 65536
ITEM_BLOCK = 262144

StepFn = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class Spectrum:
    vectors: Any  # torch (n_items, d) float32: rows of V * s, a view into one (n_items, l) buffer
    singular_values: np.ndarray  # (d,) float64, descending
    frobenius_sq: float  # ||A||_F^2, for the explained variance

    @property
    def explained_variance(self) -> float:
        return float(np.square(self.singular_values).sum() / self.frobenius_sq) if self.frobenius_sq > 0 else 0.0


def width(dim: int, n_users: int, n_items: int) -> int:
    """Columns of the range finder: d plus the oversampling, at most the matrix's smaller side."""
    return min(dim + OVERSAMPLE, n_users, n_items)


def memory_bytes(dim: int, n_users: int, n_items: int, nnz: int) -> int:
    """Peak bytes of :func:`item_vectors`: Z, user-side arrays, item and rotation blocks, the CSR pair."""
    w = width(dim, n_users, n_items)
    return 4 * w * (n_items + 4 * n_users + ROTATE_ROWS + ITEM_BLOCK) + 24 * nnz + 16 * (n_users + n_items + 2)


def _csr(a: Any) -> Any:
    """A torch float32 CSR tensor of a scipy CSR matrix (for ``torch.svd_lowrank`` in the solver benchmark)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)),
                                       torch.from_numpy(a.indices.astype(np.int64)),
                                       torch.from_numpy(a.data.astype(np.float32)), size=a.shape,
                                       check_invariants=False)


def _gram_times(at: Any, q: np.ndarray) -> np.ndarray:
    """``A A^T q`` (n_users, w) from ``At`` (items x users CSR), ITEM_BLOCK items at a time: the item-side
    product never exists whole (scipy's products allocate their output once; torch's sparse matmul held two)."""
    out = np.zeros_like(q)
    for r in range(0, at.shape[0], ITEM_BLOCK):
        blk = at[r:r + ITEM_BLOCK]  # (block, n_users) CSR
        out += blk.T @ (blk @ q)  # CSC @ (block, w)
    return out


def item_vectors(a: Any, dim: int, seed: int, *, columns: np.ndarray | None = None,
                 on_step: StepFn | None = None, option: str = "--dim") -> Spectrum:
    """The top-``dim`` rows of ``V * s`` of the scipy CSR matrix ``a`` (users x items), float32.

    ``columns`` (a permutation of ``range(dim)``) orders the output columns. Raises ConfigError when
    ``dim`` exceeds the matrix's smaller side or the matrix has no non-zero singular value.
    """
    import torch

    n_users, n_items = a.shape
    if dim > min(n_users, n_items):
        raise ConfigError(f"svd with {dim} components ({option} {dim}) needs at least {dim} users and items; the "
                          f"count matrix is {n_users} x {n_items} (use a smaller {option})")
    fro = float(np.square(a.data, dtype=np.float64).sum())
    if fro == 0.0:
        raise ConfigError("svd: the training count matrix is empty (no interactions), so it has no singular "
                          "component to place items by; use --strategy random")
    w = width(dim, n_users, n_items)
    steps, done = POWER_ITERS + 3, 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, steps)

    at = a.T.tocsr().astype(np.float32)  # (n_items, n_users)
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n_users, w, generator=g))[0].numpy()
    step()
    for _ in range(POWER_ITERS):
        q = torch.linalg.qr(torch.from_numpy(_gram_times(at, q)))[0].numpy()  # (n_users, w)
        step()
    z = torch.from_numpy(at @ q)  # (n_items, w): the one n_items-sized array
    gram = torch.from_numpy(q.T.astype(np.float64) @ _gram_times(at, q).astype(np.float64))  # Q^T A A^T Q
    step()
    evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)  # ascending
    top = torch.argsort(-evals, stable=True)[:dim]
    s = evals[top].clamp(min=0.0).sqrt()
    if float(s[0]) <= 0.0:
        raise ConfigError("svd: the training count matrix has no non-zero singular value; use --strategy random")
    rot = evecs[:, top]  # (w, dim) float64
    col_sum = torch.from_numpy(np.asarray(a.sum(axis=1), dtype=np.float64).reshape(1, -1) @ q.astype(np.float64)) @ rot
    rot = rot * torch.where(col_sum < 0, -1.0, 1.0)
    if columns is not None:  # the output columns' order; the singular values stay descending
        rot = rot[:, torch.from_numpy(np.asarray(columns))]
    rot32 = rot.float()
    for r in range(0, n_items, ROTATE_ROWS):  # Z[:, :dim] = Z W, in place, one block of rows at a time
        z[r:r + ROTATE_ROWS, :dim] = z[r:r + ROTATE_ROWS] @ rot32
    step()
    return Spectrum(vectors=z[:, :dim], singular_values=s.numpy(), frobenius_sq=fro)
