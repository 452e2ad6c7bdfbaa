"""Compiled (numba) loops of :class:`semhash_spark.index.address.AddressTable`: the same results as its numpy path, one
query at a time, in two stages: ``visit_*`` enumerate the ball's addresses and read each one's run of rows (a cost
fixed by the address bits and the radius), ``gather`` and ``rerank`` read the rows of those runs (a cost that grows
with the shortlist).

Arrays: ``ids int64[n]`` item rows sorted by (address, row); direct tables: ``offsets int64[2**bits + 1]`` indexed
by address; otherwise ``keys uint64[u]`` the distinct addresses ascending, ``offsets int64[u + 1]`` their runs in
``ids``, and ``dirs int64[2**dbits + 1]`` the runs of ``keys`` per top ``dbits = bits - shift`` bits. Runs: CSR
``(lims int64[nq + 1], starts int64[m], ends int64[m], dist int32[m])``, the non-empty runs of query ``j`` at
``lims[j]:lims[j + 1]``, by address distance.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from semhash_spark.index._mih_kernels import _insert, _popc


@njit(inline="always", cache=True)
def _run(a, offsets, keys, dirs, shift, direct):
    """``(lo, hi)``: the positions in ``ids`` of the items at address ``a`` (``lo == hi`` when none)."""
    if direct:
        i = np.int64(a)
        return offsets[i], offsets[i + 1]
    h = np.int64(a >> np.uint64(shift))
    lo, hi = dirs[h], dirs[h + 1]
    while lo < hi:  # binary search in the short run of keys sharing the top bits
        mid = (lo + hi) >> 1
        if keys[mid] < a:
            lo = mid + 1
        else:
            hi = mid
    if lo < dirs[h + 1] and keys[lo] == a:
        return offsets[lo], offsets[lo + 1]
    return 0, 0


@njit(inline="always", cache=True)
def _new_runs(nq):
    """Empty run buffers for ``nq`` queries: ``lims`` and room for 1024 runs (:func:`_append` grows them)."""
    return (np.zeros(nq + 1, np.int64), np.empty(1024, np.int64), np.empty(1024, np.int64), np.empty(1024, np.int32))


@njit(inline="always", cache=True)
def _append(starts, ends, dist, cnt, lo, hi, w):
    """Run ``(lo, hi)`` at distance ``w`` appended at ``cnt``, the buffers doubled when full; returns them."""
    if cnt == starts.shape[0]:
        ns = np.empty(2 * cnt, np.int64)
        ne = np.empty(2 * cnt, np.int64)
        nd = np.empty(2 * cnt, np.int32)
        ns[:cnt] = starts
        ne[:cnt] = ends
        nd[:cnt] = dist
        starts, ends, dist = ns, ne, nd
    starts[cnt] = lo
    ends[cnt] = hi
    dist[cnt] = w
    return starts, ends, dist


@njit(cache=True, nogil=True)
def visit_masks(offsets, keys, dirs, shift, direct, masks, shell_end, qs):
    """The non-empty runs of every address within the ball, its XOR masks given (``masks`` by weight, weight
    ``w`` ending at ``shell_end[w]``): one sequential pass of independent probes, which the CPU overlaps."""
    nq = qs.shape[0]
    lims, starts, ends, dist = _new_runs(nq)
    cnt = 0
    for j in range(nq):
        q = qs[j]
        t0 = 0
        for w in range(shell_end.shape[0]):
            for t in range(t0, shell_end[w]):
                lo, hi = _run(q ^ masks[t], offsets, keys, dirs, shift, direct)
                if hi > lo:
                    starts, ends, dist = _append(starts, ends, dist, cnt, lo, hi, w)
                    cnt += 1
            t0 = shell_end[w]
        lims[j + 1] = cnt
    return lims, starts[:cnt].copy(), ends[:cnt].copy(), dist[:cnt].copy()


@njit(cache=True, nogil=True)
def visit_enum(offsets, keys, dirs, shift, direct, bits, qs, radius):
    """As :func:`visit_masks`, enumerating the ball's addresses one combination of flipped bits at a time (for
    balls too large for a table of masks)."""
    nq = qs.shape[0]
    lims, starts, ends, dist = _new_runs(nq)
    cnt = 0
    pos = np.empty(max(radius, 1), np.int64)  # the flipped bit positions, ascending
    for j in range(nq):
        q = qs[j]
        for w in range(radius + 1):
            for t in range(w):
                pos[t] = t
            while True:
                m = np.uint64(0)
                for t in range(w):
                    m |= np.uint64(1) << np.uint64(pos[t])
                lo, hi = _run(q ^ m, offsets, keys, dirs, shift, direct)
                if hi > lo:
                    starts, ends, dist = _append(starts, ends, dist, cnt, lo, hi, w)
                    cnt += 1
                # next combination of w positions among bits (lexicographic); done after the last
                t = w - 1
                while t >= 0 and pos[t] == bits - w + t:
                    t -= 1
                if t < 0:
                    break
                pos[t] += 1
                for u in range(t + 1, w):
                    pos[u] = pos[u - 1] + 1
        lims[j + 1] = cnt
    return lims, starts[:cnt].copy(), ends[:cnt].copy(), dist[:cnt].copy()


@njit(cache=True, nogil=True)
def gather(ids, lims, starts, ends, dist, ordered):
    """CSR ``(lims, rows, distances)`` of the runs' rows; ``ordered``: the rows of one distance sorted."""
    nq = lims.shape[0] - 1
    total = 0
    for g in range(starts.shape[0]):
        total += ends[g] - starts[g]
    out_lims = np.zeros(nq + 1, np.int64)
    out_i = np.empty(total, np.int64)
    out_d = np.empty(total, np.int32)
    cnt = 0
    for j in range(nq):
        g = lims[j]
        while g < lims[j + 1]:
            w = dist[g]
            first = cnt
            while g < lims[j + 1] and dist[g] == w:
                for p in range(starts[g], ends[g]):
                    out_i[cnt] = ids[p]
                    out_d[cnt] = w
                    cnt += 1
                g += 1
            if ordered and cnt - first > 1:  # rows of one shell come from several addresses: order them
                out_i[first:cnt] = np.sort(out_i[first:cnt])
        out_lims[j + 1] = cnt
    return out_lims, out_i, out_d


@njit(cache=True, nogil=True)
def search_masks(offsets, keys, dirs, shift, direct, masks, shell_end, qs, qw, words, ids, k):
    """:func:`visit_masks` then :func:`rerank` in one pass: each run ranked as it is found, no runs kept (a
    lookup is one compiled call, which matters at small radii where the call is most of the cost)."""
    nq = qs.shape[0]
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    nw = words.shape[1]
    nmasks = shell_end[shell_end.shape[0] - 1]
    for j in range(nq):
        q = qs[j]
        cnt = 0
        for t in range(nmasks):
            lo, hi = _run(q ^ masks[t], offsets, keys, dirs, shift, direct)
            for p in range(lo, hi):
                d = 0
                for u in range(nw):
                    d += _popc(words[p, u] ^ qw[j, u])
                cnt = _insert(D[j], I[j], cnt, np.int32(d), ids[p])
    return D, I


@njit(cache=True, nogil=True)
def rerank(lims, starts, ends, qw, words, ids, k):
    """The ``k`` items of each query's runs closest to its ranking code ``qw[j]`` (``uint64[w]``), by (distance,
    row): ``(D int32[nq, k], I int64[nq, k])`` padded with -1. ``words uint64[n, w]`` are the codes in ``ids``
    order, so a run's codes are read in sequence."""
    nq = lims.shape[0] - 1
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    nw = words.shape[1]
    for j in range(nq):
        cnt = 0
        for g in range(lims[j], lims[j + 1]):
            for p in range(starts[g], ends[g]):
                d = 0
                for u in range(nw):
                    d += _popc(words[p, u] ^ qw[j, u])
                cnt = _insert(D[j], I[j], cnt, np.int32(d), ids[p])
    return D, I
