"""Which SVD for `svd-kmeans`: solvers' time and the k-means objective of their item vectors; exits 1 on a miss.

    python benchmarks/bench_svd_solvers.py DATASET_DIR [--solvers arpack,propack,torch4,own] [--dim 512]

Each solver gives the items' top-``dim`` ``V * s`` rows of the training count matrix; then the same k-means
(M=8, ksub=256, seed 0, 20 iterations) runs on each, and the objective (mean squared distance of the items
to their centroids, before ``--unique``) is compared with the first solver's (ARPACK, the previous
implementation). Solvers: ``arpack`` / ``propack`` (scipy ``svds``, float64), ``torchN``
(``torch.svd_lowrank`` with N iterations), ``own`` (``recjpq_cli.jpq.lowrank``, the implementation) or
``ownQpP`` (it with Q iterations and P extra columns). Goal: ``own`` within 1% of the first. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import torch

from recjpq_cli.jpq import lowrank
from recjpq_cli.jpq.assignment import count_matrix, fix_signs, interleave
from recjpq_cli.jpq.pq import kmeans_pq, objective
from recjpq_cli.stages.assign import train_data

M, KSUB, GOAL = 8, 256, 0.01


def vectors(name: str, a, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors (n_items, dim) float32, singular values) by solver ``name``."""
    if name in ("arpack", "propack"):
        from scipy.sparse.linalg import svds

        v0 = np.random.default_rng([0, 0]).uniform(-1, 1, min(a.shape))
        kw = {"v0": v0} if name == "arpack" else {"random_state": 0}
        _, s, vt = svds(a, k=dim, solver=name, return_singular_vectors="vh", **kw)
        o = np.argsort(-s)
        return (fix_signs(vt[o]).T * s[o]).astype(np.float32), s[o]
    if name.startswith("torch"):
        torch.manual_seed(0)
        _, s, v = torch.svd_lowrank(lowrank._csr(a), q=dim + lowrank.OVERSAMPLE, niter=int(name[5:] or 2))
        return (v[:, :dim] * s[:dim]).numpy(), s[:dim].double().numpy()
    if name != "own":
        q, _, p = name[3:].partition("p")
        lowrank.POWER_ITERS, lowrank.OVERSAMPLE = int(q), int(p or lowrank.OVERSAMPLE)
    spec = lowrank.item_vectors(a, dim, 0)
    return spec.vectors.contiguous().numpy(), spec.singular_values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--solvers", default="arpack,propack,torch4,own")
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    a = count_matrix(train_data(args.dataset)[0])
    fro = float(np.square(a.data).sum())
    ref, ok = None, True
    print("| solver | SVD s | k-means s | explained variance | k-means objective | vs first |\n|---|---|---|---|---|---|")
    for name in args.solvers.split(","):
        t = time.perf_counter()
        x, s = vectors(name, a, args.dim)
        t_svd = time.perf_counter() - t
        table = torch.from_numpy(np.ascontiguousarray(x[:, interleave(args.dim, M)]))
        t = time.perf_counter()
        codes, cents = kmeans_pq(table, M=M, ksub=KSUB, iters=20, seed=0)
        t_km = time.perf_counter() - t
        obj = objective(table, codes, cents)
        ref = obj if ref is None else ref
        rel = obj / ref - 1
        if name.startswith("own"):
            ok &= abs(rel) < GOAL
        print(f"| {name} | {t_svd:.1f} | {t_km:.1f} | {np.square(s).sum() / fro:.2%} | {obj:.5g} | {rel:+.2%} |",
              flush=True)
        print(json.dumps({"solver": name, "svd_s": t_svd, "objective": obj}), file=sys.stderr)
    print("all goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
