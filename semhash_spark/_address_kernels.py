"""Compiled (numba) probe loop of :class:`semhash_spark.address.AddressTable`: the same results as its numpy path,
one query at a time, enumerating the ball's addresses without materialising them.

Arrays: ``ids int64[n]`` item rows sorted by (address, row); direct tables: ``offsets int64[2**bits + 1]`` indexed
by address; otherwise ``keys uint64[u]`` the distinct addresses ascending, ``offsets int64[u + 1]`` their runs in
``ids``, and ``dirs int64[2**dbits + 1]`` the runs of ``keys`` per top ``dbits = bits - shift`` bits.
"""
from __future__ import annotations

import numpy as np
from numba import njit


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


@njit(cache=True, nogil=True)
def ball(offsets, ids, keys, dirs, shift, direct, bits, qs, radius):
    """CSR ``(lims, ids, distances)`` of every item within address distance ``radius`` of each of ``qs``."""
    nq = qs.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    cap = 1024
    out_i = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.int32)
    cnt = 0
    pos = np.empty(max(radius, 1), np.int64)      # the flipped bit positions, ascending
    for j in range(nq):
        q = qs[j]
        for w in range(radius + 1):
            start = cnt
            for t in range(w):
                pos[t] = t
            while True:
                m = np.uint64(0)
                for t in range(w):
                    m |= np.uint64(1) << np.uint64(pos[t])
                lo, hi = _run(q ^ m, offsets, keys, dirs, shift, direct)
                if hi > lo:
                    if cnt + (hi - lo) > cap:
                        while cnt + (hi - lo) > cap:
                            cap *= 2
                        ni = np.empty(cap, np.int64)
                        nd = np.empty(cap, np.int32)
                        ni[:cnt] = out_i[:cnt]
                        nd[:cnt] = out_d[:cnt]
                        out_i, out_d = ni, nd
                    for p in range(lo, hi):
                        out_i[cnt] = ids[p]
                        out_d[cnt] = w
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
            if cnt - start > 1:  # rows of one shell come from several addresses: order them
                out_i[start:cnt] = np.sort(out_i[start:cnt])
        lims[j + 1] = cnt
    return lims, out_i[:cnt].copy(), out_d[:cnt].copy()
