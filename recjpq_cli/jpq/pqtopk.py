"""PQTopK on the CPU: whole-catalogue ranks and top-k from the sub-item score table, compiled with numba.

For one user the sub-item score table ``S`` (``M * ksub`` floats, a few KiB) stays in L1 cache while the
codes stream past once: each item costs M table look-ups and additions, with no ``(B, n_items)`` score matrix
and no reconstructed item table. Scores are summed in float32 in split order 0..M-1, exactly as
``JPQEmbedding.score_range`` does, so ranks and top-k lists are bit-for-bit those of the torch path.

Used by ``ranking.py`` for JPQ models on the CPU when numba is installed (``RECJPQ_NO_NUMBA=1`` turns it off);
otherwise ranking falls back to the chunked torch path. Exclusions (seen items) come as CSR: row ``b``'s
sorted, unique excluded items are ``ex_items[ex_ptr[b]:ex_ptr[b + 1]]``.
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is a dependency, but the package must still work (more slowly) without it
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

INT64_MIN = np.iinfo(np.int64).min


def available() -> bool:
    """Whether the compiled path can be used (numba importable and not disabled by RECJPQ_NO_NUMBA)."""
    return numba is not None and os.environ.get("RECJPQ_NO_NUMBA", "") in ("", "0")


def exclusions_csr(n_rows: int, rows: np.ndarray | None, items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs -> CSR of sorted, unique items per row: (ex_ptr (n_rows + 1,), ex_items)."""
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    if rows is None or items is None or len(rows) == 0:
        return ptr, np.zeros(0, dtype=np.int64)
    pairs = np.unique(rows.astype(np.int64) * (1 << 32) + items.astype(np.int64))  # sorted by row, then item
    r = pairs >> 32
    np.cumsum(np.bincount(r, minlength=n_rows), out=ptr[1:])
    return ptr, (pairs & 0xFFFFFFFF).astype(np.int64)


if numba is not None:

    @njit(nogil=True, inline="always", cache=True)
    def _score(tab, codes, i, m_splits, ksub):
        s = tab[codes[i, 0]]
        for m in range(1, m_splits):
            s += tab[m * ksub + codes[i, m]]
        return s

    @njit(nogil=True, inline="always", cache=True)
    def _score_8x256(tab, codes, i):
        """The paper's shape (M=8, ksub=256) with constant offsets: about 1.6x faster than ``_score``."""
        s = tab[codes[i, 0]]
        s += tab[256 + codes[i, 1]]
        s += tab[512 + codes[i, 2]]
        s += tab[768 + codes[i, 3]]
        s += tab[1024 + codes[i, 4]]
        s += tab[1280 + codes[i, 5]]
        s += tab[1536 + codes[i, 6]]
        s += tab[1792 + codes[i, 7]]
        return s

    @njit(nogil=True, inline="always", cache=True)
    def _sum(tab, codes, i, m_splits, ksub, fast):
        """One item's score. ``fast`` is loop-invariant, so the compiler makes one loop per variant."""
        if fast:
            return _score_8x256(tab, codes, i)
        return _score(tab, codes, i, m_splits, ksub)

    @njit(nogil=True, inline="always", cache=True)
    def _key(s, i):
        """Order-preserving int64 key: score descending, then id ascending (as ranking._sort_key)."""
        bits = np.int64(np.float32(s).view(np.int32))
        if bits < 0:
            bits = -(bits & 0x7FFFFFFF) - 1
        return (bits << 32) | (0xFFFFFFFF - i)

    @njit(nogil=True, cache=True)
    def _contains(sorted_arr, x):
        lo, hi = 0, sorted_arr.shape[0]
        while lo < hi:
            mid = (lo + hi) >> 1
            if sorted_arr[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo < sorted_arr.shape[0] and sorted_arr[lo] == x

    @njit(nogil=True, cache=True)
    def _rank_one(tab, codes, target, ex, fast):
        n1, m_splits = codes.shape
        ksub = tab.shape[0] // m_splits
        t = _sum(tab, codes, target, m_splits, ksub, fast)
        cnt = 0
        for i in range(1, target):  # lower ids win ties
            if _sum(tab, codes, i, m_splits, ksub, fast) >= t:
                cnt += 1
        for i in range(target + 1, n1):
            if _sum(tab, codes, i, m_splits, ksub, fast) > t:
                cnt += 1
        for j in range(ex.shape[0]):  # excluded items leave the ranking
            e = ex[j]
            if e == target:
                return 0
            s = _sum(tab, codes, e, m_splits, ksub, fast)
            if (e < target and s >= t) or (e > target and s > t):
                cnt -= 1
        return cnt + 1

    @njit(nogil=True, cache=True)
    def _sift_down(h, n, i):
        """Restore the min-heap ``h[:n]`` below position ``i``."""
        while True:
            left = 2 * i + 1
            if left >= n:
                return
            c = left
            if left + 1 < n and h[left + 1] < h[left]:
                c = left + 1
            if h[c] < h[i]:
                h[c], h[i] = h[i], h[c]
                i = c
            else:
                return

    @njit(nogil=True, cache=True)
    def _topk_one(tab, codes, k, ex, out_ids, out_scores, fast):
        n1, m_splits = codes.shape
        ksub = tab.shape[0] // m_splits
        cap = min(k + ex.shape[0], n1 - 1)
        heap = np.full(cap, INT64_MIN, dtype=np.int64)  # min-heap of keys
        thr = -np.inf
        for i in range(1, n1):
            s = _sum(tab, codes, i, m_splits, ksub, fast)
            if s < thr:  # the common case: cheaper than building the key
                continue
            key = _key(s, i)
            if key > heap[0]:
                heap[0] = key
                _sift_down(heap, cap, 0)
                if heap[0] != INT64_MIN:
                    thr = _sum(tab, codes, 0xFFFFFFFF - (heap[0] & 0xFFFFFFFF), m_splits, ksub, fast)
        keys = np.sort(heap)[::-1]
        j = 0
        for key in keys:
            if j == k or key == INT64_MIN:
                break
            i = 0xFFFFFFFF - (key & 0xFFFFFFFF)
            if _contains(ex, i):
                continue
            out_ids[j] = i
            out_scores[j] = _sum(tab, codes, i, m_splits, ksub, fast)
            j += 1
        # Too few unexcluded items: pad as the torch path does (-inf: padding first, then excluded ids).
        e = -1
        while j < k:
            out_ids[j] = 0 if e < 0 else ex[e]
            out_scores[j] = -np.inf
            e += 1
            j += 1

    @njit(nogil=True, cache=True)
    def _ranks_serial(tabs, codes, targets, ex_ptr, ex_items, out, fast):
        for b in range(tabs.shape[0]):
            out[b] = _rank_one(tabs[b], codes, targets[b], ex_items[ex_ptr[b]:ex_ptr[b + 1]], fast)

    @njit(nogil=True, parallel=True, cache=True)
    def _ranks_parallel(tabs, codes, targets, ex_ptr, ex_items, out, fast):
        for b in prange(tabs.shape[0]):
            out[b] = _rank_one(tabs[b], codes, targets[b], ex_items[ex_ptr[b]:ex_ptr[b + 1]], fast)

    @njit(nogil=True, cache=True)
    def _topk_serial(tabs, codes, k, ex_ptr, ex_items, out_ids, out_scores, fast):
        for b in range(tabs.shape[0]):
            _topk_one(tabs[b], codes, k, ex_items[ex_ptr[b]:ex_ptr[b + 1]], out_ids[b], out_scores[b], fast)

    @njit(nogil=True, parallel=True, cache=True)
    def _topk_parallel(tabs, codes, k, ex_ptr, ex_items, out_ids, out_scores, fast):
        for b in prange(tabs.shape[0]):
            _topk_one(tabs[b], codes, k, ex_items[ex_ptr[b]:ex_ptr[b + 1]], out_ids[b], out_scores[b], fast)


def _parallel(b: int) -> bool:
    """Threads pay off only with several users per call (a lone user would wait for the wake-up)."""
    return b >= 2 * numba.get_num_threads() and numba.get_num_threads() > 1


def _fast(tabs: np.ndarray, codes: np.ndarray) -> bool:
    """Constant offsets for the paper's M=8, ksub=256; a loop over the splits otherwise."""
    return codes.shape[1] == 8 and tabs.shape[1] == 8 * 256


def ranks(tabs: np.ndarray, codes: np.ndarray, targets: np.ndarray, ex_ptr: np.ndarray,
          ex_items: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target (ties to the lower id; 0 when the target is excluded).

    tabs (B, M * ksub) float32 sub-item score tables, codes (n_items + 1, M), targets (B,) -> (B,) int64.
    """
    out = np.empty(tabs.shape[0], dtype=np.int64)
    fn = _ranks_parallel if _parallel(tabs.shape[0]) else _ranks_serial
    fn(np.ascontiguousarray(tabs), codes, targets.astype(np.int64), ex_ptr, ex_items, out, _fast(tabs, codes))
    return out


def topk(tabs: np.ndarray, codes: np.ndarray, k: int, ex_ptr: np.ndarray,
         ex_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores (B, k) float32, ids (B, k) int64) per row, best first, ties to the lower id."""
    b = tabs.shape[0]
    ids = np.empty((b, k), dtype=np.int64)
    scores = np.empty((b, k), dtype=np.float32)
    fn = _topk_parallel if _parallel(b) else _topk_serial
    fn(np.ascontiguousarray(tabs), codes, k, ex_ptr, ex_items, ids, scores, _fast(tabs, codes))
    return scores, ids
