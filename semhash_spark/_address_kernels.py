"""Compiled (numba) probe loop of :class:`semhash_spark.address.AddressTable`: the same results as its numpy path,
one query at a time, enumerating the ball's addresses without materialising them.

Arrays: ``ids int64[n]`` item rows sorted by (address, row); direct tables: ``offsets int64[2**bits + 1]`` indexed
by address; otherwise ``keys uint64[u]`` the distinct addresses ascending, ``offsets int64[u + 1]`` their runs in
``ids``, and ``dirs int64[2**dbits + 1]`` the runs of ``keys`` per top ``dbits = bits - shift`` bits.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from semhash_spark._mih_kernels import _insert, _popc


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


@njit(cache=True, nogil=True)
def ball_masks(offsets, ids, keys, dirs, shift, direct, masks, shell_end, qs, ordered):
    """As :func:`ball`, the ball's XOR masks given (``masks`` by weight, weight ``w`` ending at ``shell_end[w]``):
    one sequential pass of independent probes, which the CPU overlaps. Not ``ordered``: rows of one distance
    stay in address order."""
    nq = qs.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    cap = 1024
    out_i = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.int32)
    cnt = 0
    for j in range(nq):
        q = qs[j]
        t0 = 0
        for w in range(shell_end.shape[0]):
            start = cnt
            for t in range(t0, shell_end[w]):
                lo, hi = _run(q ^ masks[t], offsets, keys, dirs, shift, direct)
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
            t0 = shell_end[w]
            if ordered and cnt - start > 1:
                out_i[start:cnt] = np.sort(out_i[start:cnt])
        lims[j + 1] = cnt
    return lims, out_i[:cnt].copy(), out_d[:cnt].copy()


@njit(cache=True, nogil=True)
def ball_topk(offsets, keys, dirs, shift, direct, masks, shell_end, qs, qw, words, ids, k):
    """The ``k`` items of each query's ball closest to its ranking code ``qw[j]`` (``uint64[w]``), by (distance,
    row): ``(D int32[nq, k], I int64[nq, k])`` padded with -1. ``words uint64[n, w]`` are the codes in ``ids``
    order, so a bucket's codes are read in sequence."""
    nq = qs.shape[0]
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    nw = words.shape[1]
    for j in range(nq):
        q = qs[j]
        cnt = 0
        for t in range(masks.shape[0]):
            lo, hi = _run(q ^ masks[t], offsets, keys, dirs, shift, direct)
            for p in range(lo, hi):
                d = 0
                for u in range(nw):
                    d += _popc(words[p, u] ^ qw[j, u])
                cnt = _insert(D[j], I[j], cnt, np.int32(d), ids[p])
    return D, I
