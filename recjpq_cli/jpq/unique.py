"""The uniqueness pass's fast path (``assign --unique``), compiled with numba.

The same rule as the plain :func:`recjpq_cli.jpq.assignment.make_unique_plain`, which it is tested against:
colliding items in item-id order, each moved to the free code nearest to its own that changes one split (the
last split first, the nearest value, ties to the lower), else the first free code in lexicographic order.
"Used" is the same test too: the original codes' keys (``_row_keys``: exact packing or the same mixing hash)
by binary search, and the codes given out since in an open-addressing hash table, so one collision costs
O(M x ksub) compiled steps instead of ksub Python calls.

Items that share an original code search the same candidates in the same order, and a candidate found used
stays used (codes are only ever given out), so each group of equal codes (named by its first item, exactly,
not by a hash) keeps where its search stopped: the next item of the group resumes there, and a group whose
one-split neighbours are all taken goes straight to the lexicographic scan. A group of g items then costs O(M x ksub + g) checks, not
O(g x M x ksub) (a long tail of items with the same near-zero SVD vector is one such group), with the
same codes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

LEX_BLOCK = 4096  # as the plain path: the lexicographic scan resumes at a block known to be taken
MIX = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _key(code, bits, packed):
    """``_row_keys`` of one code."""
    key = np.uint64(0)
    if packed:
        for k in range(code.size):
            key = (key << np.uint64(bits)) | np.uint64(code[k])
    else:
        for k in range(code.size):
            key = (key ^ (np.uint64(code[k]) + np.uint64(k + 1))) * MIX
            key ^= key >> np.uint64(29)
    return key


@njit(cache=True)
def _slot(key, cap_log):
    return np.int64((key * MIX) >> np.uint64(64 - cap_log))


@njit(cache=True)
def _used(key, sorted_keys, table, occ, cap_log):
    pos = np.searchsorted(sorted_keys, key)
    if pos < sorted_keys.size and sorted_keys[pos] == key:
        return True
    mask = (1 << cap_log) - 1
    s = _slot(key, cap_log)
    while occ[s]:
        if table[s] == key:
            return True
        s = (s + 1) & mask
    return False


@njit(cache=True)
def _add(key, table, occ, cap_log):
    mask = (1 << cap_log) - 1
    s = _slot(key, cap_log)
    while occ[s]:
        if table[s] == key:
            return
        s = (s + 1) & mask
    occ[s] = True
    table[s] = key


@njit(cache=True)
def _candidate(cand, c, k, step):
    """Step ``step`` of split ``k``'s search from value ``c``: c, c-1, c+1, c-2, ... (nearest, ties low)."""
    v = c if step == 0 else (c - (step + 1) // 2 if step % 2 == 1 else c + step // 2)
    cand[k] = v
    return v


@njit(cache=True)
def _one_split_move(cand, start, ksub, bits, packed, sorted_keys, table, occ, cap_log):
    """Set ``cand`` to the nearest free one-split neighbour (last split first), searching from position
    ``start`` of that order; the position where it was found, or -1 when there is none."""
    m = cand.size
    width = 2 * ksub
    for pos in range(start, m * width):
        k = m - 1 - pos // width
        c = cand[k]
        v = _candidate(cand, c, k, pos % width)
        if 0 <= v < ksub and not _used(_key(cand, bits, packed), sorted_keys, table, occ, cap_log):
            return pos
        cand[k] = c
    return -1


@njit(cache=True)
def _lexicographic_free(cand, scan_from, ksub, bits, packed, sorted_keys, table, occ, cap_log):
    """Set ``cand`` to the first free code in lexicographic order from ``scan_from``; the new scan start."""
    m = cand.size
    while True:
        for t in range(scan_from, scan_from + LEX_BLOCK):
            tt = t
            for k in range(m - 1, -1, -1):
                cand[k] = tt % ksub
                tt //= ksub
            if not _used(_key(cand, bits, packed), sorted_keys, table, occ, cap_log):
                return scan_from
        scan_from += LEX_BLOCK


@njit(cache=True)
def move_collisions(out, moved, group, sorted_keys, ksub, bits, packed, cap_log):
    """Move every item of ``moved`` (ascending) in ``out`` (int64, in place) to its nearest free code;
    ``group[j]``: the first item whose code equals ``moved[j]``'s original code."""
    table = np.zeros(1 << cap_log, dtype=np.uint64)
    occ = np.zeros(1 << cap_log, dtype=np.bool_)
    resume = np.zeros(out.shape[0], dtype=np.int64)  # per group (by its first item): where its search stopped
    cand = np.empty(out.shape[1], dtype=np.int64)
    done = out.shape[1] * 2 * ksub  # every one-split neighbour taken
    scan_from = 0
    for idx in range(moved.size):
        i, g = moved[idx], group[idx]
        cand[:] = out[i]
        found = _one_split_move(cand, resume[g], ksub, bits, packed, sorted_keys, table, occ, cap_log) \
            if resume[g] < done else -1
        if found < 0:
            cand[:] = out[i]
            scan_from = _lexicographic_free(cand, scan_from, ksub, bits, packed, sorted_keys, table, occ, cap_log)
        resume[g] = found if found >= 0 else done
        out[i] = cand
        _add(_key(cand, bits, packed), table, occ, cap_log)
