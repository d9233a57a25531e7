"""Code assignment: item codes ``(n_items, M)`` from training interactions, before any training.

Three strategies behind one method, ``assign(train, M=, ksub=, seed=) -> Assignment``:

- ``random``: each split's sub-id drawn uniformly from ``0..ksub-1``.
- ``svd``: truncated SVD of the users x items count matrix; right singular vector k gives split k.
- ``bpr``: BPR matrix factorisation with M factors (``jpq/bpr.py``); factor k gives split k.
- ``svd-kmeans`` (RecJPQ-HC): truncated SVD with ``d`` components, product-quantised by k-means
  (``jpq/pq.py``, the same k-means as ``compress --from-dense``); also returns the k-means centroids, which
  training starts from.

``svd`` and ``bpr`` turn their real-valued item factors into codes with :func:`discretise` (exact
equal-frequency bins). :func:`make_unique` then moves the items whose full code repeats an earlier
item's code to the nearest free code. Everything here is pure numpy / scipy / torch on arrays.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np

from recjpq_cli.errors import ConfigError
from recjpq_cli.jpq.types import STRATEGIES, ProgressFn, StepFn, TrainData

__all__ = ["STRATEGIES", "Assignment", "ProgressFn", "StepFn", "Strategy", "TrainData", "get_strategy"]

NOISE_STD = 1e-5


@dataclass
class Assignment:
    codes: np.ndarray  # (n_items, M) int64, items 1..n_items in rows 0..n_items-1
    facts: dict[str, Any] = field(default_factory=dict)
    centroids: np.ndarray | None = None  # (M, ksub, d / M) float32 starting centroids (svd-kmeans only)


class Strategy(Protocol):
    name: str
    uses_interactions: bool  # False: only the catalogue size matters (``TrainData`` arrays may be empty)

    def assign(self, train: TrainData, *, M: int, ksub: int, seed: int) -> Assignment: ...


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent seeded streams per purpose (start vector, noise, random codes)."""
    return np.random.default_rng([seed, stream])


# --------------------------------------------------------------------------------------------------
# Discretisation: real-valued factors -> balanced codes


def stable_rank(x: np.ndarray) -> np.ndarray:
    """Per column, each row's position in a stable ascending sort (ties keep row order).

    Sorted with the fast (unstable) argsort; then the rare runs of tied values are put back in row
    order, so the result always equals the stable sort's.
    """
    xt = np.ascontiguousarray(np.asarray(x).T)  # (M, n): sort contiguous rows
    order = np.argsort(xt, axis=1)  # (M, n)
    n = xt.shape[1]
    for k in range(xt.shape[0]):  # over columns, not items
        v = xt[k, order[k]]
        tied = np.flatnonzero(v[1:] == v[:-1])  # position p: v[p] == v[p + 1]
        if tied.size:
            starts = tied[np.r_[True, np.diff(tied) > 1]]
            ends = tied[np.r_[np.diff(tied) > 1, True]] + 2
            for a, b in zip(starts, ends, strict=True):  # over runs of ties only
                order[k, a:b] = np.sort(order[k, a:b])
    rank = np.empty_like(order)
    idx = np.arange(n, dtype=order.dtype)
    for k in range(xt.shape[0]):
        rank[k, order[k]] = idx
    return rank.T


def discretise(factors: np.ndarray, ksub: int, seed: int) -> np.ndarray:
    """Min-max normalise each column, add seeded N(0, 1e-5) noise, cut into ``ksub`` equal-frequency bins.

    ``bin = rank * ksub // n`` by stable rank: exact quantiles over all items, so every bin holds
    ``floor(n / ksub)`` or ``ceil(n / ksub)`` items.
    """
    f = np.asarray(factors, dtype=np.float64)  # (n, M)
    n = f.shape[0]
    lo, hi = f.min(axis=0), f.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    x = (f - lo) / span + _rng(seed, 1).normal(0.0, NOISE_STD, size=f.shape)
    return stable_rank(x) * ksub // n


# --------------------------------------------------------------------------------------------------
# Collisions and uniqueness


def first_of_equal(codes: np.ndarray) -> np.ndarray:
    """For every item, the smallest item index whose full code equals its own (itself when it is the first)."""
    n = codes.shape[0]
    small = codes.astype(np.uint8 if n == 0 or int(codes.max()) < 256 else np.uint16)  # lexsort is fastest on bytes
    order = np.lexsort(small.T[::-1])  # stable: equal codes stay in item-id order
    s = small[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = np.any(s[1:] != s[:-1], axis=1)
    first = np.empty(n, dtype=np.int64)
    first[order] = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
    return first


def duplicate_mask(codes: np.ndarray) -> np.ndarray:
    """True for every item whose full code equals that of an item with a smaller id."""
    return first_of_equal(codes) != np.arange(codes.shape[0])


def count_collisions(codes: np.ndarray) -> int:
    """Items that share their full code with an earlier item (n_items - distinct codes)."""
    return int(duplicate_mask(codes).sum()) if codes.shape[0] else 0


def occupancy(codes: np.ndarray, ksub: int) -> dict[str, list[int]]:
    """Per split, the fewest and the most items on one centroid."""
    counts = [np.bincount(codes[:, k], minlength=ksub) for k in range(codes.shape[1])]
    return {"min": [int(c.min()) for c in counts], "max": [int(c.max()) for c in counts]}


def _row_keys(codes: np.ndarray, ksub: int) -> np.ndarray:
    """One uint64 per code: exact bit packing when ``M * bits(ksub) <= 64``, else a mixing hash.

    Equal codes always get equal keys, so "key not used" proves a code is free; a hash clash can only
    make a free code look used, which costs optimality, never uniqueness.
    """
    c = codes.astype(np.uint64)
    bits = max(1, int(ksub - 1).bit_length())
    key = np.zeros(c.shape[0], dtype=np.uint64)
    if bits * c.shape[1] <= 64:
        for k in range(c.shape[1]):  # over splits, not items
            key = (key << np.uint64(bits)) | c[:, k]
        return key
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for k in range(c.shape[1]):
            key = (key ^ (c[:, k] + np.uint64(k + 1))) * mult
            key ^= key >> np.uint64(29)
    return key


class _UsedCodes:
    """Membership of codes: a sorted key array of the original codes plus a set of the codes given out since."""

    def __init__(self, codes: np.ndarray, ksub: int) -> None:
        self.ksub = ksub
        self.sorted = np.sort(_row_keys(codes, ksub))  # repeats are harmless to searchsorted
        self.added: set[int] = set()
        self.scan_from = 0  # lexicographic codes below this are known to be taken

    def free(self, cand: np.ndarray) -> np.ndarray:
        keys = _row_keys(cand, self.ksub)
        pos = np.minimum(np.searchsorted(self.sorted, keys), self.sorted.size - 1)
        used = self.sorted[pos] == keys
        if self.added:
            used |= np.fromiter(map(self.added.__contains__, keys.tolist()), dtype=bool, count=keys.size)
        return ~used

    def add(self, code: np.ndarray) -> None:
        self.added.add(int(_row_keys(code[None, :], self.ksub)[0]))


def _lexicographic(t: np.ndarray, M: int, ksub: int) -> np.ndarray:
    """Codes number ``t`` (small non-negative int64) in lexicographic order, as ``(len(t), M)`` digits."""
    out = np.zeros((t.size, M), dtype=np.int64)
    for k in range(M):  # over splits
        power = ksub ** (M - 1 - k)
        if power <= int(t.max()):
            out[:, k] = (t // power) % ksub
    return out


def _nearest_free(code: np.ndarray, used: _UsedCodes, ksub: int) -> np.ndarray:
    """The free code nearest to ``code`` changing one split: the last split first, nearest value, ties low."""
    values = np.arange(ksub, dtype=np.int64)
    for k in range(code.shape[0] - 1, -1, -1):
        cand = np.repeat(code[None, :], ksub, axis=0)  # (ksub, M)
        cand[:, k] = values
        free = used.free(cand)
        if free.any():
            dist = np.abs(values - code[k]) * 2 + (values > code[k])  # nearest, ties to the lower value
            return cand[int(np.argmin(np.where(free, dist, np.iinfo(np.int64).max)))]
    # Every one-split neighbour is taken (only when ksub^M is close to n_items): the first free code in
    # lexicographic order. It exists among the first n_items + 1 codes, so int64 numbering suffices.
    block = 4096
    while True:
        t = np.arange(used.scan_from, used.scan_from + block, dtype=np.int64)
        cand = _lexicographic(t, code.shape[0], ksub)
        free = used.free(cand)
        if free.any():
            return cand[int(np.argmax(free))]
        used.scan_from += block


def _check_unique_possible(codes: np.ndarray, ksub: int) -> None:
    if ksub ** codes.shape[1] < codes.shape[0]:
        raise ConfigError(f"{codes.shape[0]} items cannot have distinct codes: only ksub^M = "
                          f"{ksub}^{codes.shape[1]} exist")


def make_unique_plain(codes: np.ndarray, ksub: int) -> tuple[np.ndarray, int]:
    """:func:`make_unique` one collision at a time in numpy: the reference of the compiled path, and the path
    where numba is missing or ``RECJPQ_NO_NUMBA=1``."""
    dup = duplicate_mask(codes)
    moved = np.flatnonzero(dup)
    if moved.size == 0:
        return codes, 0
    _check_unique_possible(codes, ksub)
    out = codes.copy()
    used = _UsedCodes(codes, ksub)
    for i in moved:  # colliding items only
        out[i] = _nearest_free(out[i], used, ksub)
        used.add(out[i])
    return out, int(moved.size)


def make_unique(codes: np.ndarray, ksub: int) -> tuple[np.ndarray, int]:
    """Give every item a distinct code, moving as few items as possible; returns (codes, items moved).

    Items sharing a full code are visited in item-id order; each occurrence after the first moves to the
    nearest free code: the last split's value changed to the nearest unused one, else the split before,
    and so on. Only the colliding items are visited, in compiled code (``jpq/unique.py``) when numba is
    usable, else by :func:`make_unique_plain`; both give the same codes.
    """
    from recjpq_cli.jpq import pqtopk

    if not pqtopk.available():
        return make_unique_plain(codes, ksub)
    first = first_of_equal(codes)
    moved = np.flatnonzero(first != np.arange(codes.shape[0]))
    if moved.size == 0:
        return codes, 0
    _check_unique_possible(codes, ksub)
    from recjpq_cli.jpq.unique import move_collisions

    bits = max(1, int(ksub - 1).bit_length())
    out = codes.astype(np.int64, copy=True)
    cap_log = max(1, int(2 * moved.size + 2).bit_length())
    move_collisions(out, moved.astype(np.int64), first[moved], np.sort(_row_keys(codes, ksub)), int(ksub), bits,
                    bits * codes.shape[1] <= 64, cap_log)
    return out.astype(codes.dtype, copy=False), int(moved.size)


# --------------------------------------------------------------------------------------------------
# The strategies


class RandomStrategy:
    name = "random"
    uses_interactions = False

    def assign(self, train: TrainData, *, M: int, ksub: int, seed: int) -> Assignment:
        codes = _rng(seed, 2).integers(0, ksub, size=(train.n_items, M), dtype=np.int64)
        return Assignment(codes=codes)


def count_matrix(train: TrainData) -> Any:
    """Users x items CSR matrix of interaction counts; column j is item j + 1 (padding excluded).

    Built from sorted (user, item) keys: repeats become counts, and rows and columns come out in
    canonical order without scipy's slower COO conversion.
    """
    import scipy.sparse as sp

    key = np.sort(train.user * train.n_items + (train.item - 1))  # (N,) row-major cell ids
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.empty(0, dtype=np.int64)
    counts = np.diff(np.r_[first, key.size]).astype(np.float64)  # (nnz,)
    cells = key[first]
    indptr = np.zeros(train.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(cells // train.n_items, minlength=train.n_users), out=indptr[1:])
    a = sp.csr_matrix((counts, cells % train.n_items, indptr), shape=(train.n_users, train.n_items))
    a.has_canonical_format = True
    return a


def fix_signs(vt: np.ndarray) -> np.ndarray:
    """Flip each row so that its largest-magnitude entry is positive."""
    idx = np.argmax(np.abs(vt), axis=1)
    sign = np.where(vt[np.arange(vt.shape[0]), idx] < 0, -1.0, 1.0)
    return vt * sign[:, None]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run OpenBLAS (numpy's and scipy's copies) on one thread, restoring the counts afterwards.

    ARPACK's BLAS calls are small: on this 2-core machine a second thread gained nothing, and while
    another process used a core it made svds 3x slower. Linux only; a silent no-op elsewhere.
    """
    saved = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
        for path in paths:
            lib = ctypes.CDLL(path)
            names = [(f"{p}_get_num_threads{s}", f"{p}_set_num_threads{s}")
                     for p in ("scipy_openblas", "openblas") for s in ("64_", "")]
            found = [(getattr(lib, g), getattr(lib, s)) for g, s in names if hasattr(lib, g) and hasattr(lib, s)]
            if found:
                get, put = found[0]
                saved.append((put, int(get())))
                put(1)
    except (OSError, AttributeError, ValueError):
        pass
    try:
        yield
    finally:
        for put, n in saved:
            put(n)


def svd_factors(a: Any, M: int, seed: int, *, option: str = "-m") -> tuple[np.ndarray, np.ndarray]:
    """Top-M right singular vectors ``(n_items, M)``, by singular value descending, and the singular values.

    scipy's ``svds`` (ARPACK, seeded start vector) when ``M < min(shape)``; a dense SVD when ``M`` equals
    ``min(shape)`` (only on tiny matrices); more components than that do not exist. ``option`` names the
    command-line option that set ``M`` in error messages.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, svds

    r = min(a.shape)
    if M > r:
        raise ConfigError(f"svd with {M} components ({option} {M}) needs at least {M} users and items with training "
                          f"interactions; the count matrix is {a.shape[0]} x {a.shape[1]} (use a smaller {option} "
                          f"or another strategy)")
    if M < r:
        v0 = _rng(seed, 0).uniform(-1.0, 1.0, r)
        try:
            with single_threaded_blas():
                _, s, vt = svds(a, k=M, v0=v0, return_singular_vectors="vh")
        except ArpackNoConvergence:
            raise ConfigError(f"svd: ARPACK did not converge for {option} {M} on the {a.shape[0]} x {a.shape[1]} count "
                              f"matrix; try another --seed, a smaller {option} or --strategy bpr") from None
    else:
        _, s, vt = np.linalg.svd(a.toarray(), full_matrices=False)
    order = np.argsort(-s, kind="stable")
    return fix_signs(vt[order]).T, s[order]


class SVDStrategy:
    name = "svd"
    uses_interactions = True

    def assign(self, train: TrainData, *, M: int, ksub: int, seed: int) -> Assignment:
        a = count_matrix(train)
        factors, s = svd_factors(a, M, seed)
        total = float(np.square(a.data).sum())
        explained = float(np.square(s).sum() / total) if total > 0 else 0.0
        return Assignment(codes=discretise(factors, ksub, seed),
                          facts={"explained_variance": explained, "singular_values": [float(x) for x in s]})


class BPRStrategy:
    name = "bpr"
    uses_interactions = True

    def __init__(self, epochs: int = 20, on_epoch: ProgressFn | None = None) -> None:
        self.epochs = epochs
        self.on_epoch = on_epoch

    def assign(self, train: TrainData, *, M: int, ksub: int, seed: int) -> Assignment:
        from recjpq_cli.jpq.bpr import train_bpr

        factors, loss = train_bpr(train, M=M, epochs=self.epochs, seed=seed, on_epoch=self.on_epoch)
        return Assignment(codes=discretise(factors, ksub, seed),
                          facts={"final_loss": loss, "epochs": self.epochs})


def spectral_item_vectors(a: Any, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items in the top-``dim`` SVD space of the count matrix by ARPACK: the rows of ``V * s`` (float32), and ``s``.

    The exact reference for :func:`recjpq_cli.jpq.lowrank.item_vectors`, which ``svd-kmeans`` uses. Row i of
    ``V * s`` is ``A^T U`` for item i, the sum of its users' left singular vectors: frequent items get long
    vectors, rare ones short vectors near the origin, items without training interactions zero. (Scaling the
    rows to unit length, so that rare items keep their users' direction at full length, learned worse on
    Amazon Beauty: best validation NDCG@10 in 420 s 0.0168 against 0.0189; docs/results.md.)
    """
    v, s = svd_factors(a, dim, seed, option="--dim")
    return (v * s).astype(np.float32), s


def interleave(dim: int, M: int) -> np.ndarray:
    """Column order that deals the components to the splits like cards: component j goes to split j % M.

    Every split then gets strong and weak components alike, so the k-means of each split sees similar
    variance (a contiguous split would put the top components in split 0 and near-noise in the last).
    """
    return np.concatenate([np.arange(k, dim, M) for k in range(M)])


class SVDKMeansStrategy:
    """RecJPQ-HC in bounded memory: a float32 randomized SVD (``jpq/lowrank.py``) whose one (n_items, d + 32)
    buffer is rotated in place into the item vectors, then k-means on a sample and blocked assignment."""

    name = "svd-kmeans"
    uses_interactions = True

    def __init__(self, dim: int, iters: int = 20, on_step: StepFn | None = None) -> None:
        self.dim = dim
        self.iters = iters
        self.on_step = on_step

    def assign(self, train: TrainData, *, M: int, ksub: int, seed: int) -> Assignment:
        from recjpq_cli.jpq import lowrank
        from recjpq_cli.jpq.pq import kmeans_pq, objective

        if self.dim % M:
            raise ConfigError(f"svd-kmeans: --dim {self.dim} is not divisible by the code length M={M}")
        a = count_matrix(train)
        svd_step = None if self.on_step is None else (lambda done, total: self.on_step("svd", done, total))
        spec = lowrank.item_vectors(a, self.dim, seed, columns=interleave(self.dim, M), on_step=svd_step)
        del a
        codes_t, cents = kmeans_pq(spec.vectors, M=M, ksub=ksub, iters=self.iters, seed=seed, on_step=self.on_step)
        obj = objective(spec.vectors, codes_t, cents)
        return Assignment(codes=codes_t.numpy(), centroids=cents.numpy().astype(np.float32),
                          facts={"d": self.dim, "kmeans_iters": self.iters,
                                 "explained_variance": spec.explained_variance, "kmeans_objective": obj})


def get_strategy(name: str, *, epochs: int = 20, dim: int = 512, on_epoch: ProgressFn | None = None,
                 on_step: StepFn | None = None) -> Strategy:
    """The strategy called ``name``; an unknown name is a ConfigError listing the valid ones."""
    if name == "random":
        return RandomStrategy()
    if name == "svd":
        return SVDStrategy()
    if name == "bpr":
        return BPRStrategy(epochs=epochs, on_epoch=on_epoch)
    if name == "svd-kmeans":
        return SVDKMeansStrategy(dim=dim, on_step=on_step)
    raise ConfigError(f"unknown strategy {name!r} (valid: {', '.join(STRATEGIES)})")
