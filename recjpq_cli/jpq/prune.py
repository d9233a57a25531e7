"""Exact top-k without scoring every item: RecJPQPrune-style dynamic pruning, compiled with numba.

Petrov, Macdonald & Tonellotto (2025, arXiv 2505.00560). An item's score is the sum of its M sub-item scores,
so an item whose sub-ids all score low cannot enter the top k. Per split the items are kept as an inverted
list by sub-id (:class:`PruneIndex`, CSR, built once per model with a stable numpy argsort and cached on the
embedding); each list also holds a copy of its items' codes, so scoring a list streams memory in order.

For one user: per split, sub-ids are visited in descending sub-item score (a heap per split, built in
O(ksub) per query, O(log ksub) per visited list: with ksub in the thousands the lists are short and a linear
scan per visit would cost more than PQTopK). At each step the split whose head
(its best unvisited sub-id) drops the bound most is advanced, and every item of that sub-id's list is scored
exactly (the same float32 sum in split order 0..M-1 as ``pqtopk``, so scores are bit-for-bit those of
PQTopK) into a heap of the k best (score descending, id ascending). An item not scored yet has an unvisited
sub-id in every split, so its score is at most the float32 sum of the heads (rounding is monotone). The
search stops once the k-th best score is strictly above that bound: an unscored item could tie the k-th
score with a lower id, so equality is not enough. Items met again in a later list are recognised by their
sub-ids (a visited sub-id in another split), only when they would enter the heap.

Seen items are excluded as in PQTopK (sorted CSR rows, checked only for candidates that would enter the
heap), and fewer than k unexcluded items are padded the same way (-inf: id 0, then the excluded ids). When
a search has touched more than ``FALLBACK_SHARE`` x n_items list entries (flat score distributions, heavy
ties), it finishes with one exhaustive pass over the codes from its current heap, so a degenerate query costs
about ``1 + FALLBACK_SHARE`` PQTopK passes, not up to M.

``retrieval.topk`` is the entry point for callers: it takes this kernel when :func:`worthwhile` (a catalogue
size rule) and ``ranking.topk`` (PQTopK) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recjpq_cli.jpq import pqtopk

# Catalogues with fewer items go to PQTopK: it needs well under a millisecond there and no index.
MIN_ITEMS = 200_000
# Share of n_items list entries a query may score before it switches to one exhaustive pass.
FALLBACK_SHARE = 0.15

if pqtopk.numba is not None:
    from numba import njit, prange

    from recjpq_cli.jpq.pqtopk import INT64_MIN, _contains, _key, _sift_down, _sum

    @njit(nogil=True, cache=True)
    def _sub_id(hkey):
        """The sub-id of a per-split heap entry (``~_key(score, sub_id)``)."""
        return 0xFFFFFFFF - (~hkey & 0xFFFFFFFF)

    @njit(nogil=True, cache=True)
    def _build(tab, ptr, m, ksub, hk):
        """Split m's non-empty sub-ids as a heap whose root is the best: entries ``~_key(score, sub_id)``
        (PQTopK's order, score descending then sub-id ascending, reversed for its min-heap), heapified in
        O(ksub). Returns the number of entries."""
        n = 0
        base = m * ksub
        for c in range(ksub):
            if ptr[m, c + 1] > ptr[m, c]:
                hk[n] = ~_key(tab[base + c], c)
                n += 1
        for i in range(n // 2 - 1, -1, -1):
            _sift_down(hk, n, i)
        return n

    @njit(nogil=True, cache=True)
    def _heads(tab, hk, n, m, ksub, head_c, head, nxt):
        """Split m's best unvisited sub-id (the root) and the score of the next one (a child of the root);
        head_c[m] = -1 when the split is exhausted."""
        if n == 0:
            head_c[m], head[m], nxt[m] = -1, -np.inf, -np.inf
            return
        c = _sub_id(hk[0])
        head_c[m], head[m] = c, tab[m * ksub + c]
        if n == 1:
            nxt[m] = -np.inf
        else:
            j = 1 if n == 2 or hk[1] < hk[2] else 2
            nxt[m] = tab[m * ksub + _sub_id(hk[j])]

    @njit(nogil=True, cache=True)
    def _pick(head, nxt, m_splits):
        """The split whose head, once visited, lowers the bound most (to its second-best sub-id's score)."""
        best, best_drop = 0, -1.0
        for m in range(m_splits):
            drop = np.inf if nxt[m] == -np.inf else head[m] - nxt[m]
            if drop > best_drop:
                best, best_drop = m, drop
        return best

    @njit(nogil=True, cache=True)
    def _seen(done, row, skip, m_splits):
        """Whether an item with sub-ids ``row`` was scored already: one of its sub-ids (other than split
        ``skip``) had its list visited."""
        for m in range(m_splits):
            if m != skip and done[m, row[m]]:
                return True
        return False

    @njit(nogil=True, cache=True)
    def _offer(heap, k, key):
        heap[0] = key
        _sift_down(heap, k, 0)

    @njit(nogil=True, cache=True)
    def _scan_all(tab, codes, heap, k, ex, done, thr, fast):
        """The fallback: one exhaustive pass from the current heap, skipping items already scored."""
        n1, m_splits = codes.shape
        ksub = tab.shape[0] // m_splits
        for i in range(1, n1):
            s = _sum(tab, codes, i, m_splits, ksub, fast)
            if s < thr:
                continue
            key = _key(s, i)
            if key <= heap[0] or _seen(done, codes[i], -1, m_splits) or _contains(ex, i):
                continue
            _offer(heap, k, key)
            if heap[0] != INT64_MIN:
                thr = _sum(tab, codes, 0xFFFFFFFF - (heap[0] & 0xFFFFFFFF), m_splits, ksub, fast)

    @njit(nogil=True, cache=True)
    def _bound(head, m_splits):
        b = head[0]
        for m in range(1, m_splits):  # split order, as the item scores
            b += head[m]
        return b

    @njit(nogil=True, cache=True)
    def _search(tab, codes, post_ids, post_codes, ptr, k, ex, fast, budget):
        """The pruned search for one user: a min-heap of the k best keys (INT64_MIN where empty)."""
        n1, m_splits = codes.shape
        ksub = tab.shape[0] // m_splits
        done = np.zeros((m_splits, ksub), dtype=np.bool_)
        head_c = np.empty(m_splits, dtype=np.int64)
        head = np.empty(m_splits, dtype=np.float32)
        nxt = np.empty(m_splits, dtype=np.float32)
        hk = np.empty((m_splits, ksub), dtype=np.int64)  # per split: unvisited sub-ids, best at the root
        hn = np.empty(m_splits, dtype=np.int64)
        for m in range(m_splits):
            hn[m] = _build(tab, ptr, m, ksub, hk[m])
            _heads(tab, hk[m], hn[m], m, ksub, head_c, head, nxt)
        heap = np.full(k, INT64_MIN, dtype=np.int64)
        thr = -np.inf
        touched = 0
        while True:
            m = _pick(head, nxt, m_splits)
            c = head_c[m]
            pc = post_codes[m]
            for j in range(ptr[m, c], ptr[m, c + 1]):
                s = _sum(tab, pc, j, m_splits, ksub, fast)
                if s < thr:
                    continue
                i = post_ids[m, j]
                key = _key(s, i)
                if key <= heap[0] or _seen(done, pc[j], m, m_splits) or _contains(ex, i):
                    continue
                _offer(heap, k, key)
                if heap[0] != INT64_MIN:
                    thr = _sum(tab, codes, 0xFFFFFFFF - (heap[0] & 0xFFFFFFFF), m_splits, ksub, fast)
            touched += ptr[m, c + 1] - ptr[m, c]
            done[m, c] = True
            hn[m] -= 1  # drop the root
            hk[m, 0] = hk[m, hn[m]]
            _sift_down(hk[m], hn[m], 0)
            _heads(tab, hk[m], hn[m], m, ksub, head_c, head, nxt)
            if head_c[m] < 0:  # every item has a sub-id in this split: all scored
                break
            if heap[0] != INT64_MIN and thr > _bound(head, m_splits):
                break
            if touched > budget:
                _scan_all(tab, codes, heap, k, ex, done, thr, fast)
                break
        return heap, touched

    @njit(nogil=True, cache=True)
    def _topk_one(tab, codes, post_ids, post_codes, ptr, k, ex, out_ids, out_scores, fast, budget):
        n1, m_splits = codes.shape
        ksub = tab.shape[0] // m_splits
        heap, touched = _search(tab, codes, post_ids, post_codes, ptr, k, ex, fast, budget)
        keys = np.sort(heap)[::-1]
        j = 0
        for key in keys:
            if key == INT64_MIN:
                break
            i = 0xFFFFFFFF - (key & 0xFFFFFFFF)
            out_ids[j] = i
            out_scores[j] = _sum(tab, codes, i, m_splits, ksub, fast)
            j += 1
        e = -1  # too few unexcluded items: pad as pqtopk does (-inf: id 0, then the excluded ids)
        while j < k:
            out_ids[j] = 0 if e < 0 else ex[e]
            out_scores[j] = -np.inf
            e += 1
            j += 1
        return touched

    @njit(nogil=True, cache=True)
    def _topk_serial(tabs, codes, post_ids, post_codes, ptr, k, ex_ptr, ex_items, out_ids, out_scores,
                     touched, fast, budget):
        for b in range(tabs.shape[0]):
            touched[b] = _topk_one(tabs[b], codes, post_ids, post_codes, ptr, k, ex_items[ex_ptr[b]:ex_ptr[b + 1]],
                                   out_ids[b], out_scores[b], fast, budget)

    @njit(nogil=True, parallel=True, cache=True)
    def _topk_parallel(tabs, codes, post_ids, post_codes, ptr, k, ex_ptr, ex_items, out_ids, out_scores,
                       touched, fast, budget):
        for b in prange(tabs.shape[0]):
            touched[b] = _topk_one(tabs[b], codes, post_ids, post_codes, ptr, k, ex_items[ex_ptr[b]:ex_ptr[b + 1]],
                                   out_ids[b], out_scores[b], fast, budget)


@dataclass(frozen=True)
class PruneIndex:
    """Per-split inverted lists: split m's items with sub-id c are ``ids[m, ptr[m, c]:ptr[m, c + 1]]``
    (ascending), and ``codes[m, j]`` is the code row of item ``ids[m, j]``.

    ids (M, n_items) int32, codes (M, n_items, M) as the model's codes, ptr (M, ksub + 1) int64:
    (4 + M x itemsize) x M bytes per item, 96 bytes at M=8 with uint8 codes.
    """

    ids: np.ndarray
    codes: np.ndarray
    ptr: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.codes.nbytes + self.ptr.nbytes


def build_index(codes: np.ndarray, ksub: int) -> PruneIndex:
    """The inverted lists of ``codes`` ((n_items + 1, M), row 0 padding, never listed)."""
    items = codes[1:]
    n, m_splits = items.shape
    ids = np.empty((m_splits, n), dtype=np.int32)
    post_codes = np.empty((m_splits, n, m_splits), dtype=codes.dtype)
    ptr = np.zeros((m_splits, ksub + 1), dtype=np.int64)
    for m in range(m_splits):
        o = np.argsort(items[:, m], kind="stable")
        ids[m] = o + 1
        np.take(items, o, axis=0, out=post_codes[m])
        np.cumsum(np.bincount(items[:, m], minlength=ksub), out=ptr[m, 1:])
    return PruneIndex(ids=ids, codes=post_codes, ptr=ptr)


def worthwhile(n_items: int) -> bool:
    """The rule that sends a catalogue to the pruned kernel: numba usable and at least MIN_ITEMS items."""
    return pqtopk.available() and n_items >= MIN_ITEMS


def search(tabs: np.ndarray, codes: np.ndarray, index: PruneIndex, k: int, ex_ptr: np.ndarray,
           ex_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pruned top-k (scores (B, k) float32, ids (B, k) int64, list entries touched (B,) int64).

    The same arguments and results as ``pqtopk.topk`` (tabs (B, M * ksub), codes (n_items + 1, M), exclusions
    as CSR), identical to it bit for bit, plus the work each row did.
    """
    b = tabs.shape[0]
    ids = np.empty((b, k), dtype=np.int64)
    scores = np.empty((b, k), dtype=np.float32)
    touched = np.empty(b, dtype=np.int64)
    budget = int(FALLBACK_SHARE * (codes.shape[0] - 1))
    fn = _topk_parallel if b > 1 and pqtopk._parallel(b) else _topk_serial  # b > 1: no thread-pool query
    fn(np.ascontiguousarray(tabs), codes, index.ids, index.codes, index.ptr, k, ex_ptr, ex_items, ids, scores,
       touched, pqtopk._fast(tabs, codes), budget)
    return scores, ids, touched

