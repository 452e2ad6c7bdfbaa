"""Compiled (numba) loops of :mod:`semhash_spark.index.dedup`: the pairs of one sorted run of bucket tiles, and the
content similarity of pairs. They run inside Spark tasks; only the pairs they keep leave the task.

Arrays: ``seg int32[n]``, ``key int64[n]``, ``lo, hi, blk int32[n]`` the rows' tile coordinates, sorted so
that a tile's rows are contiguous, block ``lo`` first (``(key, seg, lo, hi, blk)``); ``words uint64[n, w]``
the codes as big-endian 64-bit words; ``segmask uint64[m, w]`` each segment's bits. Word lists:
``indptr int64[n + 1]`` into ``ids int32[nnz]`` (ascending within a row) and ``weights float64[nnz]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from semhash_spark.index._mih_kernels import _popc


@njit(inline="always", cache=True)
def _first_agreeing(words, a, b, segmask, s):
    """True when segment ``s`` is the first segment on which codes ``a`` and ``b`` agree."""
    for t in range(s + 1):
        same = True
        for w in range(words.shape[1]):
            if (words[a, w] ^ words[b, w]) & segmask[t, w] != 0:
                same = False
                break
        if same:
            return t == s
    return False


@njit(inline="always", cache=True)
def _scan(w1, x, b, stop, radius):
    """The first row ``b' >= b`` below ``stop`` whose code ``w1[b']`` is within ``radius`` of ``x``, else ``stop``."""
    while b < stop:
        if _popc(x ^ w1[b]) <= radius:
            return b
        b += 1
    return stop


@njit(cache=True, nogil=True)
def tile_pairs(seg, key, lo, hi, blk, words, segmask, radius, stop, limit, fresh):
    """Every pair of rows ``a < b`` of rows ``[0, stop)`` that share a tile ``(seg, key, lo, hi)`` (both in the
    one block of a diagonal tile ``lo == hi``, one in each block of the others), are within ``radius``, agree
    first on segment ``seg`` and have at least one row with ``fresh`` set (``int8[n]``; all ones pairs every
    row). A tile of more than ``limit > 0`` rows is skipped and reported instead.
    Returns ``(a int64[k], b int64[k], distance int32[k], skipped_first_row int64[h], skipped_rows int64[h])``;
    each pair once."""
    hot_s = np.empty(16, np.int64)
    hot_n = np.empty(16, np.int64)
    nhot = 0
    cap = 1024
    out_a = np.empty(cap, np.int64)
    out_b = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.int32)
    nw = words.shape[1]
    w1 = np.ascontiguousarray(words[:, 0]) if nw == 1 else np.empty(0, np.uint64)
    cnt = 0
    i = 0
    while i < stop:
        j = i + 1
        while j < stop and key[j] == key[i] and seg[j] == seg[i] and lo[j] == lo[i] and hi[j] == hi[i]:
            j += 1
        if limit > 0 and j - i > limit:
            if nhot == hot_s.size:
                hot_s = np.concatenate((hot_s, np.empty(nhot, np.int64)))
                hot_n = np.concatenate((hot_n, np.empty(nhot, np.int64)))
            hot_s[nhot] = i
            hot_n[nhot] = j - i
            nhot += 1
            i = j
            continue
        diagonal = lo[i] == hi[i]
        m = i  # off-diagonal: rows [i, m) in block lo, [m, j) in block hi
        while m < j and blk[m] == lo[i]:
            m += 1
        s = seg[i]
        for a in range(i, j if diagonal else m):
            b = a + 1 if diagonal else m
            while b < j:
                if nw == 1:  # 64-bit codes: a tight scan to the next row within the radius (most rows are not)
                    b = _scan(w1, w1[a], b, j, radius)
                    if b == j:
                        break
                    d = _popc(w1[a] ^ w1[b])
                else:
                    d = 0
                    for w in range(nw):
                        d += _popc(words[a, w] ^ words[b, w])
                    if d > radius:
                        b += 1
                        continue
                if (fresh[a] == 0 and fresh[b] == 0) or not _first_agreeing(words, a, b, segmask, s):
                    b += 1
                    continue
                if cnt == cap:
                    cap *= 2
                    na = np.empty(cap, np.int64)
                    nb = np.empty(cap, np.int64)
                    nd = np.empty(cap, np.int32)
                    na[:cnt] = out_a[:cnt]
                    nb[:cnt] = out_b[:cnt]
                    nd[:cnt] = out_d[:cnt]
                    out_a, out_b, out_d = na, nb, nd
                out_a[cnt] = a
                out_b[cnt] = b
                out_d[cnt] = d
                cnt += 1
                b += 1
        i = j
    return out_a[:cnt].copy(), out_b[:cnt].copy(), out_d[:cnt].copy(), hot_s[:nhot].copy(), hot_n[:nhot].copy()


@njit(cache=True, nogil=True)
def pair_similarity(indptr, ids, weights, a, b, cosine, min_sim=0.0):
    """Per pair ``(a[k], b[k])``: cosine of the rows' weight vectors, or Jaccard of their id sets (int32 word ids
    or int64 word hashes, ascending); in [0, 1]. Jaccard with ``min_sim > 0``: a pair that cannot reach it (the
    smaller set too small, or too few ids left in the merge) stops early and gets an upper bound below
    ``min_sim`` instead of its value (the set-similarity join's size and prefix bounds)."""
    out = np.zeros(a.size, np.float64)
    bound = not cosine and min_sim > 0.0
    for k in range(a.size):
        p, pe = indptr[a[k]], indptr[a[k] + 1]
        q, qe = indptr[b[k]], indptr[b[k] + 1]
        la, lb = pe - p, qe - q
        # inter / (la + lb - inter) >= min_sim needs inter >= min_sim (la + lb) / (1 + min_sim); one below, safe
        need = int(np.floor(min_sim * (la + lb) / (1.0 + min_sim))) - 1 if bound else -1
        if bound and min(la, lb) < need:
            m = min(la, lb)
            out[k] = m / (la + lb - m) if la + lb - m > 0 else 0.0
            continue
        na = nb = dot = 0.0
        if cosine:
            for t in range(p, pe):
                na += weights[t] * weights[t]
            for t in range(q, qe):
                nb += weights[t] * weights[t]
        inter = 0
        cut = False
        while p < pe and q < qe:
            if bound and inter + min(pe - p, qe - q) < need:
                cut = True
                break
            if ids[p] == ids[q]:
                dot += weights[p] * weights[q]
                inter += 1
                p += 1
                q += 1
            elif ids[p] < ids[q]:
                p += 1
            else:
                q += 1
        if cut:
            inter += min(pe - p, qe - q)  # at most this many in common: the upper bound
        if cosine:
            den = np.sqrt(na) * np.sqrt(nb)
            sim = dot / den if den > 0 else 0.0
        else:
            union = la + lb - inter
            sim = inter / union if union > 0 else 0.0
        out[k] = min(max(sim, 0.0), 1.0)
    return out
