"""Issue 19's tail-item study: svd-kmeans codes where tail items are placed by their neighbours.

Tail items (fewer than ``metrics.LONG_TAIL_THRESHOLD`` = 5 training interactions) have short SVD vectors
that cluster near the origin, so many share centroids. Here each tail item's vector is replaced, before
k-means, by the mean profile of its users (a user's profile: the mean SVD vector of the items they
interacted with); everything else is ``recjpq assign --strategy svd-kmeans``. Measured on Amazon Beauty
(docs/results.md, "Tail items"): the long-tail NDCG@10 fell, so ``assign`` does not do this. Kept so the
measurement can be rerun:

    python benchmarks/tail_codes.py DATASET OUT.npy [assign options...]   # e.g. --dim 128 -b 8192
    bash benchmarks/tail_study.sh WORK_DIR                                 # the whole Beauty comparison
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp

from recjpq_cli.jpq import lowrank
from recjpq_cli.metrics import LONG_TAIL_THRESHOLD

_item_vectors = lowrank.item_vectors


def item_vectors_with_placed_tail(a, dim, seed, **kw):
    spec = _item_vectors(a, dim, seed, **kw)
    x = spec.vectors.numpy()  # (n_items, d) float32, a view: edited in place
    a = sp.csr_matrix(a, dtype=np.float32)
    counts = np.asarray(a.sum(0)).ravel()
    tail = (counts > 0) & (counts < LONG_TAIL_THRESHOLD)
    profiles = sp.diags(1.0 / np.maximum(np.asarray(a.sum(1)).ravel(), 1)).astype(np.float32) @ a @ x
    placed = (sp.diags(1.0 / counts[tail]).astype(np.float32) @ a[:, tail].T.tocsr() @ profiles).astype(np.float32)
    before = np.linalg.norm(x[tail], axis=1).mean()
    x[tail] = placed
    print(f"tail items: {tail.sum()} of {tail.size}; mean length {before:.4f} -> "
          f"{np.linalg.norm(placed, axis=1).mean():.4f} (head {np.linalg.norm(x[~tail & (counts > 0)], axis=1).mean():.4f})",
          file=sys.stderr)
    return spec


if __name__ == "__main__":
    lowrank.item_vectors = item_vectors_with_placed_tail
    from recjpq_cli.cli import main

    sys.argv = ["recjpq", "assign", sys.argv[1], "--strategy", "svd-kmeans", "--out", sys.argv[2], *sys.argv[3:]]
    main()
