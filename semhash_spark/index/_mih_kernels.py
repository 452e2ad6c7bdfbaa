"""Compiled (numba) query loops of :mod:`semhash_spark.index.mih`: the same algorithm as its numpy path, one query at a
time without per-call array overhead. Imported only through ``mih``, which falls back to numpy without numba.

Arrays: ``words uint64[n, w]`` codes as 64-bit words, ``mask uint64[w]`` the compared bits, ``perm int[m, n]`` rows
of each table in substring order, ``tw uint64[m, n * w]`` the codes again in each table's order (``words[perm[j]]``:
a bucket's candidates are read sequentially, not gathered), ``offs int[sum(2**bits_j + 1)]`` the tables' bucket
offsets end to end (table ``j`` starts at ``base[j]``), ``submask uint64[m, w]`` each substring's bits,
``qw uint64[nq, w]``, ``qsub int64[nq, m]`` the queries' substrings. Results are ordered by (distance, row).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_K1 = np.uint64(0x5555555555555555)
_K2 = np.uint64(0x3333333333333333)
_K4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_KH = np.uint64(0x0101010101010101)


@njit(inline="always", cache=True)
def _popc(x):
    x = x - ((x >> np.uint64(1)) & _K1)
    x = (x & _K2) + ((x >> np.uint64(2)) & _K2)
    x = (x + (x >> np.uint64(4))) & _K4
    return np.int64((x * _KH) >> np.uint64(56))  # LLVM turns this into one popcnt


@njit(inline="always", cache=True)
def _dist(words, row, q, mask):
    d = 0
    for t in range(words.shape[1]):
        d += _popc((words[row, t] ^ q[t]) & mask[t])
    return d


@njit(inline="always", cache=True)
def _next_comb(v):
    """The next larger integer with as many set bits (Gosper's hack)."""
    c = v & -v
    r = v + c
    return (((r ^ v) >> 2) // c) | r


@njit(inline="always", cache=True)
def _insert(bd, bi, cnt, d, row):
    """Into the ascending (distance, row) top list ``bd, bi`` holding ``cnt``; returns the new count."""
    k = bd.shape[0]
    if cnt == k and (d > bd[k - 1] or (d == bd[k - 1] and row > bi[k - 1])):
        return cnt
    i = cnt if cnt < k else k - 1
    while i > 0 and (bd[i - 1] > d or (bd[i - 1] == d and bi[i - 1] > row)):
        bd[i] = bd[i - 1]
        bi[i] = bi[i - 1]
        i -= 1
    bd[i] = d
    bi[i] = row
    return cnt + 1 if cnt < k else k


@njit(inline="always", cache=True)
def _append(out_d, out_i, cnt, d, row):
    """Writes result ``cnt`` into the buffers, doubling them when full; returns the (possibly new) buffers."""
    if cnt == out_d.shape[0]:
        nd = np.empty(2 * cnt, np.int32)
        ni = np.empty(2 * cnt, np.int64)
        nd[:cnt] = out_d[:cnt]
        ni[:cnt] = out_i[:cnt]
        out_d, out_i = nd, ni
    out_d[cnt] = d
    out_i[cnt] = row
    return out_d, out_i


@njit(inline="always", cache=True)
def _sort_by_distance(out_d, out_i, start, cnt):
    """Stable sort of results ``start:cnt`` by distance (rows that arrived in ascending order stay so)."""
    if cnt - start > 1:
        o = np.argsort(out_d[start:cnt], kind="mergesort")
        out_d[start:cnt] = out_d[start:cnt][o]
        out_i[start:cnt] = out_i[start:cnt][o]


@njit(inline="always", cache=True)
def _tdist(tw, j, p, q, mask):
    """Distance from ``q`` to entry ``p`` of table ``j``'s own copy of the codes (bucket order, ``w`` words each)."""
    w = q.shape[0]
    d = 0
    for t in range(w):
        d += _popc((tw[j, p * w + t] ^ q[t]) & mask[t])
    return d


_BLOCK = 32  # bucket entries counted together inside a chunk that has a hit; fewer are checked one by one
_CHUNK = 256  # bucket entries counted together first: a chunk without a hit is skipped whole


@njit(inline="always", cache=True)
def _skip_far(tw, j, p, end, q, mask, thr, lim):
    """For one-word codes: from entry ``p`` of table ``j``'s bucket ending at ``end``, skips every whole chunk of up
    to ``_CHUNK`` entries none of which is closer than ``thr`` (a vectorised count each), and, inside a chunk that
    has one (entries before ``lim``), every block of ``_BLOCK`` entries that has none. Returns the start of the
    first block that has one (or of a tail too short to count, or ``end``) and the new ``lim``. Other codes:
    ``(p, lim)``."""
    if q.shape[0] != 1:
        return p, lim
    while end - p >= _BLOCK:
        if p >= lim:
            e = min(end, p + _CHUNK)
            if _count_below1(tw[j, p:e], mask[0], q[0], thr) == 0:
                p = e
                continue
            lim = e
        if _count_below1(tw[j, p : p + _BLOCK], mask[0], q[0], thr) != 0:
            return p, lim
        p += _BLOCK
    return p, lim


_GROUPED = 256  # buckets of at least this many entries are read group by group (see _group_end)


@njit(inline="always", cache=True)
def _group_end(tw, j, p, end, sm, x):
    """The end of the group of entries from ``p`` (one-word codes) whose bits under ``sm`` equal ``x``: a bucket's
    entries are grouped by another table's substring (:meth:`mih.MultiIndexHash._build`), so a group that cannot
    hold a result is passed over by a galloping search instead of read."""
    lo, step = p, 1
    hi = p + 1
    while hi < end and (tw[j, hi] & sm) == x:
        lo = hi
        step *= 2
        hi = p + step
    hi = min(hi, end)
    while hi - lo > 1:  # entry lo is in the group, entry hi is not (or is the end)
        mid = (lo + hi) // 2
        if (tw[j, mid] & sm) == x:
            lo = mid
        else:
            hi = mid
    return hi


@njit(cache=True, nogil=True)
def _radix_sort(a, tmp, nbits):
    """Sorts the non-negative ``a`` (keys below ``2**nbits``) in place, by bytes from the lowest (stable)."""
    n = a.shape[0]
    if n < 64:  # insertion sort
        for i in range(1, n):
            x = a[i]
            k = i
            while k > 0 and a[k - 1] > x:
                a[k] = a[k - 1]
                k -= 1
            a[k] = x
        return
    cnt = np.empty(257, np.int64)
    src, dst = a, tmp[:n]
    shift, passes = 0, 0
    while shift < nbits:
        cnt[:] = 0
        for i in range(n):
            cnt[((src[i] >> shift) & 255) + 1] += 1
        for b in range(256):
            cnt[b + 1] += cnt[b]
        for i in range(n):
            b = (src[i] >> shift) & 255
            dst[cnt[b]] = src[i]
            cnt[b] += 1
        src, dst = dst, src
        shift += 8
        passes += 1
    if passes % 2 == 1:
        a[:] = src


@njit(cache=True, nogil=True)
def _order_results(out_d, out_i, start, cnt, rowbits, dbits, tmp):
    """Orders results ``start:cnt`` by (distance, row) through one radix sort of ``distance << rowbits | row``."""
    m = cnt - start
    if m < 2:
        return tmp
    if tmp.shape[0] < 2 * m:
        tmp = np.empty(4 * m, np.int64)
    key = tmp[:m]
    for i in range(m):
        key[i] = (np.int64(out_d[start + i]) << rowbits) | out_i[start + i]
    _radix_sort(key, tmp[m : 2 * m], rowbits + dbits)
    low = (np.int64(1) << rowbits) - 1
    for i in range(m):
        out_d[start + i] = key[i] >> rowbits
        out_i[start + i] = key[i] & low
    return tmp


@njit(inline="always", cache=True)
def _touch(tw, offs, base, nbits, qsub, qi, j, lo, hi, w):
    """Loads the first word of every bucket that the probes of shells ``lo..hi`` of table ``j`` will read, all before
    reading any: the misses on the offsets and then on the codes overlap instead of coming one probe at a time.
    Returns a value for the caller to keep (so the loads stay)."""
    nb = nbits[j]
    limit = np.int64(1) << nb
    acc = np.uint64(0)
    for t in range(lo, min(hi, nb) + 1):
        v = (np.int64(1) << t) - 1
        while v < limit:
            key = base[j] + (qsub[qi, j] ^ v)
            o = offs[key]
            if o < offs[key + 1]:
                acc ^= tw[j, o * w]
            if t == 0:
                break
            v = _next_comb(v)
    return acc


@njit(cache=True, nogil=True)
def _allocate(offs, base, nbits, ballsz, qsub, qi, radius, tmax, probe_cost, rad, cnts, best, how):
    """Per-query radii ``rad[j]`` (-1: table ``j`` not probed) with ``sum(rad + 1) >= radius + 1`` -- so by the
    pigeonhole principle every code within ``radius`` is within ``rad[j]`` of the query on some substring ``j`` --
    that minimise the candidates the probes will read (counted exactly from the bucket offsets, for radii up to
    ``tmax``) plus ``probe_cost`` per probe: a knapsack over the tables. A dense substring gets a small radius or
    none, a sparse one a larger radius. Returns False (``rad`` untouched) when no allocation fits under ``tmax``."""
    m = nbits.shape[0]
    r1 = radius + 1
    for j in range(m):
        nb = nbits[j]
        limit = np.int64(1) << nb
        tot = 0
        for t in range(min(tmax, nb) + 1):
            v = (np.int64(1) << t) - 1
            while v < limit:
                key = base[j] + (qsub[qi, j] ^ v)
                tot += offs[key + 1] - offs[key]
                if t == 0:
                    break
                v = _next_comb(v)
            cnts[j, t] = tot
    best[0, :] = np.inf
    best[0, 0] = 0.0
    for j in range(m):
        nb = nbits[j]
        best[j + 1, :] = np.inf
        for c in range(r1 + 1):
            if best[j, c] == np.inf:
                continue
            for t in range(-1, min(tmax, nb) + 1):
                c2 = min(r1, c + t + 1)
                cost = best[j, c] if t < 0 else best[j, c] + cnts[j, t] + probe_cost * ballsz[j, t]
                if cost < best[j + 1, c2]:
                    best[j + 1, c2] = cost
                    how[j + 1, c2, 0] = t
                    how[j + 1, c2, 1] = c
    if best[m, r1] == np.inf:
        return False
    c = r1
    for j in range(m, 0, -1):
        rad[j - 1] = how[j, c, 0]
        c = how[j, c, 1]
    return True


@njit(cache=True, nogil=True)
def range_batch(
    tw,
    mask,
    perm,
    offs,
    base,
    nbits,
    submask,
    qw,
    qsub,
    radius,
    rowbits,
    ballsz,
    tmax,
    probe_cost,
    sub,
    hot_tmax,
    hot_cost,
):
    """Multi-index range search: ``(lims, D, I)``; a row is kept in the first table whose ball reaches it.

    ``tw uint64[m, n * w]``: each table's own copy of the codes in its bucket order, so a bucket's candidates are
    read sequentially (``perm`` maps an entry back to its row only for results). With ``tmax >= 0`` each query
    gets its own radii per table (:func:`_allocate`, ``ballsz[j, t]`` the probes of radius ``t`` in table ``j``);
    else the even split ``radius = m*s + a``. ``sub[j]`` (one-word codes; -1: none): the table whose substring
    groups the entries of each bucket of table ``j``; in a bucket of at least ``_GROUPED`` entries a group is
    passed over whole when that substring alone puts it beyond the radius, or when it was reached through that
    (earlier) table already. A query whose radii would read candidates costing more than ``hot_cost`` (the even
    split's exact buckets when ``s = 0``, else :func:`_allocate`'s estimate) gets radii up to ``hot_tmax`` instead
    (-1: never), so that a table whose bucket is hot can be probed not at all."""
    nq, m = qw.shape[0], perm.shape[0]
    s, a = radius // m, radius % m
    rad = np.empty(m, np.int64)
    cnts = np.zeros((m, max(tmax, hot_tmax, 0) + 1), np.int64)
    best = np.empty((m + 1, radius + 2), np.float64)
    how = np.zeros((m + 1, radius + 2, 2), np.int64)
    dbits = 1
    while (1 << dbits) <= radius:
        dbits += 1
    out_d = np.empty(1024, np.int32)
    out_i = np.empty(1024, np.int64)
    tmp = np.empty(2048, np.int64)
    lims = np.zeros(nq + 1, np.int64)
    cnt = 0
    acc = np.uint64(0)
    for qi in range(nq):
        start = cnt
        q = qw[qi]
        if tmax >= 0 and _allocate(offs, base, nbits, ballsz, qsub, qi, radius, tmax, probe_cost, rad, cnts, best, how):
            cost = best[m, radius + 1]
        else:
            cost = 0.0 if s == 0 else np.inf  # s = 0: the even split's buckets, counted below
            for j in range(m):
                rad[j] = s if j <= a else s - 1
                if s == 0 and j <= a:
                    key = base[j] + qsub[qi, j]
                    cost += offs[key + 1] - offs[key]
        if hot_tmax >= 0 and cost > hot_cost:
            _allocate(offs, base, nbits, ballsz, qsub, qi, radius, hot_tmax, probe_cost, rad, cnts, best, how)
        for j in range(m):
            acc ^= _touch(tw, offs, base, nbits, qsub, qi, j, 0, rad[j], q.shape[0])
        for j in range(m):
            rj = rad[j]
            nb = nbits[j]
            limit = np.int64(1) << nb
            js = sub[j]
            sm = submask[js, 0] if js >= 0 else np.uint64(0)
            # a group's rows are all within rad[js] of the query on table js (so reached there, if js < j): skip
            dup_r = rad[js] if js >= 0 and js < j else np.int64(-1)
            for t in range(min(rj, nb) + 1):
                v = (np.int64(1) << t) - 1
                while v < limit:
                    key = base[j] + (qsub[qi, j] ^ v)
                    p, end = np.int64(offs[key]), np.int64(offs[key + 1])
                    nxt = p  # where the next vectorised count starts
                    lim = p  # the end of the chunk known to hold a hit
                    grouped = js >= 0 and end - p >= _GROUPED
                    gx = np.uint64(0)
                    ingroup = False  # entry p is in the group gx, which was found worth reading
                    while p < end:
                        if p >= nxt:
                            p, lim = _skip_far(tw, j, p, end, q, mask, radius + 1, lim)
                            nxt = p + _BLOCK
                            ingroup = False
                            if p >= end:
                                break
                        if grouped:
                            x = tw[j, p] & sm
                            if not ingroup or x != gx:
                                gx = x
                                ds = _popc((x ^ q[0]) & sm)
                                if t + ds > radius or ds <= dup_r:
                                    p = _group_end(tw, j, p, end, sm, x)
                                    ingroup = False
                                    continue
                                ingroup = True
                        d = _tdist(tw, j, p, q, mask)
                        p += 1
                        if d > radius:
                            continue
                        dup = False
                        for j2 in range(j):
                            r2 = rad[j2]
                            if r2 >= 0 and _tdist(tw, j, p - 1, q, submask[j2]) <= r2:
                                dup = True
                                break
                        if dup:
                            continue
                        out_d, out_i = _append(out_d, out_i, cnt, d, np.int64(perm[j, p - 1]))
                        cnt += 1
                    if t == 0:
                        break
                    v = _next_comb(v)
        tmp = _order_results(out_d, out_i, start, cnt, rowbits, dbits, tmp)
        lims[qi + 1] = cnt
    if acc == np.uint64(1) and cnt < 0:  # never true: keeps the loads of _touch
        lims[0] = 1
    return lims, out_d[:cnt].copy(), out_i[:cnt].copy()


@njit(cache=True, nogil=True)
def knn_batch(tw, mask, perm, offs, base, nbits, submask, qw, qsub, k, shell_cum, probe_cost, row_cost, eps, sub):
    """Multi-index k-NN: shells of growing substring distance, table by table, until the k-th distance is within
    the radius already covered. From shell 1 on, a query whose remaining probes (to cover its current k-th
    distance, ``shell_cum[j, t]`` probes for shells 0..t of table j) would cost more than reading every row (a
    probe costs ``probe_cost`` scanned rows, each row it finds ``row_cost``) is flagged in the third result for a
    linear scan (its D, I rows stay -1). ``tw``: as in :func:`range_batch`.

    ``eps > 0`` stops early: once the k-th distance found is below ``(1 + eps)`` times the distance every unseen
    code is at least at, so the i-th result is within ``(1 + eps)`` of the true i-th distance, for every i (a
    true i-th neighbour not yet seen is at least that far; one seen is among the results or beaten by them).
    ``sub``: as in :func:`range_batch`; in a bucket of at least ``_GROUPED`` entries a group is passed over whole
    when that substring alone puts it beyond the current k-th distance, or makes it reached in another (shell,
    table) first."""
    nq, m, n = qw.shape[0], perm.shape[0], perm.shape[1]
    need_scan = np.zeros(nq, np.bool_)
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    bd = np.empty(k, np.int64)
    bi = np.empty(k, np.int64)
    done_j = np.zeros(m, np.int64)
    acc = np.uint64(0)
    per_probe = np.empty(m, np.float64)
    maxnb, total = 0, 0
    for j in range(m):
        maxnb = max(maxnb, nbits[j])
        total += nbits[j]
        per_probe[j] = probe_cost + row_cost * n / float(np.int64(1) << nbits[j])
    for qi in range(nq):
        q = qw[qi]
        cnt, done, scan = 0, False, False
        done_j[:] = 0
        for s in range(maxnb + 1):
            for j in range(m):
                nb = nbits[j]
                js = sub[j]
                sm = submask[js, 0] if js >= 0 else np.uint64(0)
                if s <= nb:
                    acc ^= _touch(tw, offs, base, nbits, qsub, qi, j, s, s, q.shape[0])
                    limit = np.int64(1) << nb
                    v = (np.int64(1) << s) - 1
                    while v < limit:
                        done_j[j] += 1
                        key = base[j] + (qsub[qi, j] ^ v)
                        p, end = np.int64(offs[key]), np.int64(offs[key + 1])
                        nxt = p  # where the next vectorised count starts (once the top k is full)
                        lim = p  # the end of the chunk known to hold a hit
                        grouped = js >= 0 and end - p >= _GROUPED
                        gx = np.uint64(0)
                        ingroup = False  # entry p is in the group gx, which was found worth reading
                        while p < end:
                            if cnt == k and p >= nxt:
                                p, lim = _skip_far(tw, j, p, end, q, mask, bd[k - 1] + 1, lim)
                                nxt = p + _BLOCK
                                ingroup = False
                                if p >= end:
                                    break
                            if grouped:
                                x = tw[j, p] & sm
                                if not ingroup or x != gx:
                                    gx = x
                                    ds = _popc((x ^ q[0]) & sm)
                                    if (cnt == k and s + ds > bd[k - 1]) or (js < j and ds <= s) or (js > j and ds < s):
                                        p = _group_end(tw, j, p, end, sm, x)
                                        ingroup = False
                                        continue
                                    ingroup = True
                            d = _tdist(tw, j, p, q, mask)
                            p += 1
                            if cnt == k and d > bd[k - 1]:
                                continue  # cannot enter the top k, seen before or not
                            row = np.int64(perm[j, p - 1])
                            new = True
                            for j2 in range(m):  # first reached in an earlier (shell, table)?
                                if j2 != j:
                                    cd = _tdist(tw, j, p - 1, q, submask[j2])
                                    if (j2 < j and cd <= s) or (j2 > j and cd < s):
                                        new = False
                                        break
                            if new:
                                cnt = _insert(bd, bi, cnt, d, row)
                        if s == 0:
                            break
                        v = _next_comb(v)
                if cnt == k and bd[k - 1] < (1.0 + eps) * (m * s + j + 1):  # unseen codes: m*s + j + 1 away
                    done = True
                    break
                if s >= 1:
                    dk = int(bd[k - 1] / (1.0 + eps)) if cnt == k else total  # the distance to cover
                    sd, jd = dk // m, dk % m
                    need = 0.0
                    for j2 in range(m):
                        t = min(sd if j2 <= jd else sd - 1, nbits[j2])
                        if t >= 0:
                            need += max(0, shell_cum[j2, t] - done_j[j2]) * per_probe[j2]
                    if need > n:
                        scan = True
                        break
            if done or scan:
                break
        if scan:
            need_scan[qi] = True
            continue
        for t in range(cnt):
            D[qi, t] = bd[t]
            I[qi, t] = bi[t]
    if acc == np.uint64(1) and nq < 0:  # never true: keeps the loads of _touch
        need_scan[0] = True
    return D, I, need_scan


@njit(cache=True, nogil=True)
def scan_range(words, mask, qw, radius):
    """Linear range search: ``(lims, D, I)`` by (distance, row)."""
    nq, n = qw.shape[0], words.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    out_d = np.empty(1024, np.int32)
    out_i = np.empty(1024, np.int64)
    cnt = 0
    for qi in range(nq):
        start = cnt
        q = qw[qi]
        for row in range(n):
            d = _dist(words, row, q, mask)
            if d <= radius:
                out_d, out_i = _append(out_d, out_i, cnt, d, row)
                cnt += 1
        _sort_by_distance(out_d, out_i, start, cnt)  # rows ascend already: a stable sort is enough
        lims[qi + 1] = cnt
    return lims, out_d[:cnt].copy(), out_i[:cnt].copy()


@njit(cache=True, nogil=True)
def scan_knn(words, mask, qw, k):
    """Linear k-NN: ``(D, I)`` by (distance, row), -1 padded."""
    nq, n = qw.shape[0], words.shape[0]
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    bd = np.empty(k, np.int64)
    bi = np.empty(k, np.int64)
    for qi in range(nq):
        cnt = 0
        for row in range(n):
            d = _dist(words, row, qw[qi], mask)
            if cnt < k or d < bd[k - 1]:
                cnt = _insert(bd, bi, cnt, d, row)
        for t in range(cnt):
            D[qi, t] = bd[t]
            I[qi, t] = bi[t]
    return D, I


@njit(cache=True, nogil=True)
def scan_distances(words, mask, q, out):
    """Distances from one code to every row (the linear popcount scan)."""
    for row in range(words.shape[0]):
        out[row] = _dist(words, row, q, mask)


# ---------------------------------------------------------------------------------------------- one-word codes
# Codes of at most 64 bits: a 1-d word array lets LLVM vectorise the scan (the generic loops above cannot).


@njit(cache=True, nogil=True)
def scan_distances1(words, mask, q, out):
    """The linear popcount scan over one-word codes."""
    for row in range(words.shape[0]):
        out[row] = _popc((words[row] ^ q) & mask)


@njit(inline="always", cache=True)
def _count_below1(block, mask, q, thr):
    """Rows of ``block`` closer than ``thr``; indices from 0 so LLVM can drop wrap-around checks and vectorise."""
    c = 0
    for r in range(block.shape[0]):
        if _popc((block[r] ^ q) & mask) < thr:
            c += 1
    return c


@njit(cache=True, nogil=True)
def scan_knn1(words, mask, qw, k):
    """Blocks of rows: a vectorised count of rows closer than the current k-th, then (rarely) a scalar pass."""
    nq, n = qw.shape[0], words.shape[0]
    D = np.full((nq, k), -1, np.int32)
    I = np.full((nq, k), -1, np.int64)
    bd = np.empty(k, np.int64)
    bi = np.empty(k, np.int64)
    block = 2048
    for qi in range(nq):
        q = qw[qi]
        cnt = 0
        thr = 1 << 30
        for s in range(0, n, block):
            e = min(n, s + block)
            if cnt == k and _count_below1(words[s:e], mask, q, thr) == 0:
                continue
            for row in range(s, e):
                d = _popc((words[row] ^ q) & mask)
                if d < thr or cnt < k:
                    cnt = _insert(bd, bi, cnt, d, row)
                    if cnt == k:
                        thr = bd[k - 1]  # rows come in ascending order: a tie never displaces
        for t in range(cnt):
            D[qi, t] = bd[t]
            I[qi, t] = bi[t]
    return D, I


@njit(cache=True, nogil=True)
def scan_range1(words, mask, qw, radius):
    """Blocks of rows: a vectorised count within the radius, then a scalar pass over blocks that have any."""
    nq, n = qw.shape[0], words.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    out_d = np.empty(1024, np.int32)
    out_i = np.empty(1024, np.int64)
    block = 2048
    cnt = 0
    for qi in range(nq):
        start = cnt
        q = qw[qi]
        for s in range(0, n, block):
            e = min(n, s + block)
            if _count_below1(words[s:e], mask, q, radius + 1) == 0:
                continue
            for row in range(s, e):
                d = _popc((words[row] ^ q) & mask)
                if d <= radius:
                    out_d, out_i = _append(out_d, out_i, cnt, d, row)
                    cnt += 1
        _sort_by_distance(out_d, out_i, start, cnt)
        lims[qi + 1] = cnt
    return lims, out_d[:cnt].copy(), out_i[:cnt].copy()
