"""Exact in-memory Hamming search by multi-index hashing, shaped like faiss's binary indexes.

Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index hashing" (CVPR 2012): the compared bits
are cut into ``m`` disjoint substrings, each with its own table from substring value to the rows holding it. If
``radius = m*s + a`` (``0 <= a < m``), a code within ``radius`` of the query is, by the pigeonhole principle, within
``s`` bits of it on one of the first ``a + 1`` substrings or within ``s - 1`` bits on one of the others. So a range
search probes small Hamming balls around the query's substrings, never the ball of ``radius`` in the whole code,
and checks each row found with a full popcount. Substrings of about ``log2(n)`` bits keep O(1) rows per bucket.
Any radii ``r_j`` with ``sum(r_j + 1) > radius`` are as exact (``r_j = -1``: table ``j`` not probed); the compiled
loops choose them per query when ``s >= 1``, from the exact bucket sizes around the query, so that a substring where
the query sits in a dense region (common in codes from a trained model) is probed narrowly or not at all.

k-NN search probes shells (substring distance exactly ``s``) table by table: once shell ``s`` of tables ``0..j``
and shell ``s - 1`` of the others are probed, every code within ``m*s + j`` has been seen, and a query whose k-th
distance is at most that is done. A row seen in several tables is counted once: it is new only in the first
(shell, table) in probe order that reaches it.

Tables are direct-address (``offsets[v]:offsets[v+1]`` into a row permutation) when the substring is short enough,
else sorted keys probed with ``searchsorted``. For the compiled loops each table also keeps its own copy of the codes
in bucket order, so a probed bucket's candidates are read in sequence (and 32 at a time by a vectorised count)
rather than gathered one cache miss each: 44 bytes a 64-bit code with 3 tables, against 20 without the copies.

Rows are compared on bits ``[start_bit, end_bit)`` of the canonical packed code (MSB first, see
:mod:`semhash_spark.codes`); the service uses ``start_bit = partition_bits`` inside a partition, whose rows share
their first bits. When probing would cost more than reading every row, a query falls back to a linear popcount
scan (:func:`scan_within`, :func:`scan_topk`), so results are exact either way.
Results are ordered by (distance, row), identical to brute force; ``search`` pads with -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from semhash_spark import codes as C

try:  # the compiled query loops; without numba every query takes the numpy path below
    from semhash_spark.index import _mih_kernels as _K
except ImportError:  # pragma: no cover - numba is pinned in requirements.txt
    _K = None

USE_COMPILED = _K is not None  # set False to force the numpy path (tests compare the two)
# Compiled loops, in units of one row of the vectorised linear scan: a bucket probe (misses on the offsets and on
# the bucket's first codes) and each candidate it finds (read in sequence, checked, de-duplicated). Set on 64-bit
# uniform, clustered and model-produced codes at 1M and 10M (docs/benchmarks-log.md "Lookup").
_COMPILED_PROBE_COST = 1000.0  # range search
_COMPILED_ROW_COST = 1.0
_KNN_PROBE_COST = 300.0  # k-NN
_KNN_ROW_COST = 2.0
_ALLOC_PROBE_COST = 64.0  # range search's per-query radii: a probe against one candidate read
_ALLOC_MAX_PROBES = 1024  # ... chosen only when counting a table's candidates takes at most this many probes
_HOT_FACTOR = 1.0  # ... wider for a query whose plan reads more than this times what counting them costs

_SCAN_CHUNK = 1 << 16  # rows per popcount block: the XOR and SWAR passes stay in L2
_DIRECT_MAX_BITS = 26  # direct-address tables up to 2**26 buckets
_SCAN_BELOW = 512  # fewer rows than this: no tables, always scan
_PROBE_COST = 8.0  # one bucket probe costs about this many scanned rows (measured on numpy 1.26)

# ------------------------------------------------------------------------------------------------ kernels

popcount_inplace = C.popcount_inplace  # the one SWAR popcount (semhash_spark.codes)


def _xor_dist(db: np.ndarray, q: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    x = np.bitwise_xor(db, q)
    if mask is not None:
        x &= mask
    return popcount_inplace(x)


def scan_distances(
    words: np.ndarray, q: np.ndarray, mask: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Distances ``int32[n]`` from one word-code ``q`` to every row of ``words`` (the linear popcount scan)."""
    n = words.shape[0]
    out = np.empty(n, dtype=np.int32) if out is None else out
    if USE_COMPILED and _K is not None:
        w2 = words.reshape(n, -1)
        m = np.full(w2.shape[1], ~np.uint64(0), dtype=np.uint64) if mask is None else np.asarray(mask, np.uint64)
        qv = np.asarray(q, dtype=np.uint64).reshape(-1)
        if w2.shape[1] == 1:  # a C-contiguous 1-d array: numba vectorises only that layout
            _K.scan_distances1(np.ascontiguousarray(w2.reshape(-1)), m.reshape(-1)[0], qv[0], out)
        else:
            _K.scan_distances(w2, m.reshape(-1), qv, out)
        return out
    for s in range(0, n, _SCAN_CHUNK):
        out[s : s + _SCAN_CHUNK] = _xor_dist(words[s : s + _SCAN_CHUNK], q, mask)
    return out


def scan_within(
    words: np.ndarray, q: np.ndarray, radius: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Linear range search of one query: ``(D int32, rows int64)`` within ``radius``, by (distance, row)."""
    ds, rs = [], []
    for s in range(0, words.shape[0], _SCAN_CHUNK):
        d = _xor_dist(words[s : s + _SCAN_CHUNK], q, mask)
        hit = np.flatnonzero(d <= radius)
        if hit.size:
            ds.append(d[hit])
            rs.append(hit + s)
    if not ds:
        return np.empty(0, np.int32), np.empty(0, np.int64)
    d, r = np.concatenate(ds), np.concatenate(rs).astype(np.int64)
    o = np.lexsort((r, d))
    return d[o], r[o]


def scan_topk(
    words: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Linear k-NN of one query: the ``min(k, n)`` nearest ``(D int32, rows int64)`` by (distance, row)."""
    d = scan_distances(words, q, mask)
    return top_k(d, np.arange(d.shape[0], dtype=np.int64), k)


def top_k(d: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest by (distance, row), sorted."""
    if d.shape[0] > k:
        kth = np.partition(d, k - 1)[k - 1]
        keep = np.flatnonzero(d <= kth)
        d, rows = d[keep], rows[keep]
    o = np.lexsort((rows, d))[:k]
    return d[o].astype(np.int32, copy=False), rows[o].astype(np.int64, copy=False)


# ------------------------------------------------------------------------------------------------ bit ranges


def substring_values(codes: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Integer value ``uint64[n]`` of bits ``[start, stop)`` of packed MSB-first codes (``stop - start <= 56``)."""
    if not 0 <= start < stop <= 8 * codes.shape[1] or stop - start > 56:
        raise ValueError(f"bit range [{start}, {stop}) out of range for {8 * codes.shape[1]}-bit codes")
    b0, b1 = start // 8, (stop + 7) // 8
    out = np.zeros(codes.shape[0], dtype=np.uint64)
    for j in range(b0, b1):
        out <<= np.uint64(8)
        out |= codes[:, j]
    out >>= np.uint64(8 * b1 - stop)
    return out & np.uint64((1 << (stop - start)) - 1)


def range_mask(nbytes: int, start: int, stop: int) -> np.ndarray:
    """``uint64[w]``: ones on bits ``[start, stop)`` in the word view (:func:`codes.to_words`) of a packed code."""
    bits = np.zeros((1, 8 * nbytes), dtype=np.uint8)
    bits[0, start:stop] = 1
    return C.to_words(C.pack_bits(bits))[0].copy()


def split_bits(start: int, stop: int, m: int) -> list[tuple[int, int]]:
    """``m`` contiguous substrings covering ``[start, stop)``, the first ones one bit longer when uneven."""
    n = stop - start
    q, r = divmod(n, m)
    out, a = [], start
    for j in range(m):
        b = a + q + (1 if j < r else 0)
        out.append((a, b))
        a = b
    return out


def default_substrings(nrows: int, nbits: int) -> int:
    """Norouzi et al.'s choice: substrings of about ``log2(n)`` bits (at most 32 bits each)."""
    if nrows < _SCAN_BELOW or nbits <= 0:
        return 0
    m = max(1, round(nbits / max(1.0, math.log2(nrows))))
    return min(nbits, max(m, math.ceil(nbits / 32)))


# Choosing m from the data (``MultiIndexHash(m=None)`` with at least _AUTO_MIN_ROWS rows): the estimated work of a
# few typical queries, in scanned-row units, for the substring counts around Norouzi et al.'s.
_AUTO_MIN_ROWS = 1 << 16
_AUTO_TASKS = (("knn", 10), ("range", 2), ("range", 4))  # k nearest; every code within a radius
_AUTO_QUERIES = 64  # rows of the index used as sample queries (seeded: the choice is deterministic)
_AUTO_COUNT_ROWS = 1 << 20  # substring buckets are counted on at most this many rows, then scaled
_AUTO_CALL_COST = 20_000.0  # the fixed cost of a query call (about 10 us), so tiny plans compare as near-equal
_AUTO_SCAN_SHARE = 0.5  # other counts are compared only when the default's k-NN costs this share of a scan
_AUTO_GAIN = 1.5  # ... and one is chosen only if its largest slowdown is this many times smaller


def choose_substrings(
    codes: np.ndarray, bits: int, start_bit: int = 0, end_bit: int | None = None, seed: int = 0
) -> tuple[int, dict[int, dict[str, float]]]:
    """The substring count ``m`` for a multi-index hash of ``codes`` on bits ``[start_bit, end_bit)``, from the data:
    ``(m, {m: {task: estimated cost}})``: no costs below ``_AUTO_MIN_ROWS`` rows, only the default's when it was
    kept without comparing.

    Norouzi et al.'s ``m = bits / log2(n)`` (:func:`default_substrings`) keeps buckets at O(1) rows, which is right
    for a radius search, and for k nearest neighbours when the codes are concentrated (codes from a trained model:
    a query's 10th neighbour is a few bits away). When the codes are spread out it is not: on uniform 64-bit codes
    the 10th neighbour is 13-15 bits away at 1M-10M codes, covering that with 21-bit substrings takes tens of
    thousands of probes, and the query falls back to a linear scan, where more, shorter substrings cover it with a
    few hundred to a few thousand probes of larger buckets.

    So the default is costed on sample queries (``_AUTO_QUERIES`` rows of the index, their k-th distance among the
    other rows found by a scan) for each of ``_AUTO_TASKS``: the probes the search makes (shells in the order
    :meth:`MultiIndexHash.search` probes them; the even split of a radius) at ``_KNN_PROBE_COST`` each, plus the
    rows in the probed buckets (counted on the codes) at ``_KNN_ROW_COST`` each, at most a scan of every row, plus
    ``_AUTO_CALL_COST`` a query. Only if its k-NN costs at least ``_AUTO_SCAN_SHARE`` of a scan are the counts from
    one below to three above it costed too; the one that minimises the largest slowdown against the best count for
    each task (so no typical query is made much slower to speed up another) replaces the default if that slowdown
    is ``_AUTO_GAIN`` times smaller than the default's. The estimate is coarse (a probe's cost depends on whether
    the tables fit in cache), so it decides only where the difference is large."""
    codes = C.as_codes(codes, bits)
    end_bit = bits if end_bit is None else end_bit
    n, nbits = codes.shape[0], end_bit - start_bit
    m0 = default_substrings(n, nbits)
    if n < _AUTO_MIN_ROWS or m0 == 0:
        return m0, {}
    rng = np.random.default_rng(seed)
    q = codes[np.sort(rng.choice(n, size=min(_AUTO_QUERIES, n), replace=False))]
    counted = codes if n <= _AUTO_COUNT_ROWS else codes[np.sort(rng.choice(n, _AUTO_COUNT_ROWS, replace=False))]
    scale = n / counted.shape[0]
    kmax = max(k for kind, k in _AUTO_TASKS if kind == "knn")
    Dq, _ = MultiIndexHash(codes, bits, start_bit=start_bit, end_bit=end_bit, m=0).search(q, kmax + 1)

    def estimate(m: int) -> dict[str, float]:
        spans = split_bits(start_bit, end_bit, m)
        counts = [
            np.bincount(substring_values(counted, a, b).astype(np.int64), minlength=1 << (b - a)) for a, b in spans
        ]
        qsub = [substring_values(q, a, b).astype(np.int64) for a, b in spans]
        est: dict[str, float] = {}
        for kind, val in _AUTO_TASKS:
            total = 0.0
            for i in range(q.shape[0]):
                if kind == "knn":  # a query row finds itself first: its k-th neighbour is entry k
                    s, j = divmod(int(Dq[i, min(val, n - 1)]), m)  # shells to cover it: m*s + j
                else:  # radius = m*s + j: radius s on tables 0..j, s - 1 on the others
                    s, j = divmod(val, m)
                radii = [s if t <= j else s - 1 for t in range(m)]
                cost = _KNN_PROBE_COST * sum(C.ball_size(b - a, r) for (a, b), r in zip(spans, radii) if r >= 0)
                if cost < n:
                    found = sum(
                        int(counts[t][qsub[t][i] ^ ball(b - a, r).astype(np.int64)].sum())
                        for t, ((a, b), r) in enumerate(zip(spans, radii))
                        if r >= 0
                    )
                    cost += _KNN_ROW_COST * scale * found
                total += min(cost, float(n)) + _AUTO_CALL_COST
            est[f"{kind}{val}"] = total / q.shape[0]
        return est

    costs = {m0: estimate(m0)}
    if all(v - _AUTO_CALL_COST < _AUTO_SCAN_SHARE * n for t, v in costs[m0].items() if t.startswith("knn")):
        return m0, costs
    for m in range(max(1, m0 - 1), m0 + 4):
        if m != m0 and m <= nbits and -(-nbits // m) <= _DIRECT_MAX_BITS:
            costs[m] = estimate(m)
    best = {t: min(c[t] for c in costs.values()) for t in costs[m0]}
    worst = {m: max(c[t] / best[t] for t in best) for m, c in costs.items()}
    m = min(costs, key=lambda m: (worst[m], abs(m - m0)))
    return (m if worst[m0] > _AUTO_GAIN * worst[m] else m0), costs


def _sub_table(spans: list[tuple[int, int]], j: int) -> int:
    """The table whose substring groups the rows inside table ``j``'s buckets (-1: none): the one before it, so a
    group already reached through that table is skipped whole; table 0 takes table 1."""
    s = j - 1 if j else 1
    if s >= len(spans) or (spans[j][1] - spans[j][0]) + (spans[s][1] - spans[s][0]) > 63:
        return -1
    return s


@lru_cache(maxsize=512)
def shell(nbits: int, s: int) -> np.ndarray:
    """Every ``nbits``-bit value with exactly ``s`` bits set (``uint64``, read-only)."""
    if s == 0:
        out = np.zeros(1, dtype=np.uint64)
    elif s > nbits:
        out = np.zeros(0, dtype=np.uint64)
    else:  # the highest set bit h, then s - 1 bits below it
        out = np.concatenate([shell(h, s - 1) | np.uint64(1 << h) for h in range(s - 1, nbits)])
    out.setflags(write=False)
    return out


@lru_cache(maxsize=256)
def ball(nbits: int, radius: int) -> np.ndarray:
    """Every ``nbits``-bit value within ``radius`` of 0, nearest first (``uint64``, read-only)."""
    out = np.concatenate([shell(nbits, s) for s in range(0, min(radius, nbits) + 1)])
    out.setflags(write=False)
    return out


def _expand(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ranges -> (positions into the permutation, index of the range each came from)."""
    lens = (stops - starts).astype(np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    owner = np.repeat(np.arange(lens.shape[0]), lens)
    ends = np.cumsum(lens)
    pos = np.arange(total, dtype=np.int64) + (starts.astype(np.int64) - (ends - lens))[owner]
    return pos, owner


# ------------------------------------------------------------------------------------------------ index


@dataclass(frozen=True)
class _Table:
    start: int
    stop: int
    perm: np.ndarray  # rows ordered by substring value
    offsets: np.ndarray | None  # direct address: value v -> perm[offsets[v]:offsets[v + 1]]
    keys: np.ndarray | None  # otherwise: sorted substring values

    @property
    def nbits(self) -> int:
        return self.stop - self.start

    def ranges(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.offsets is not None:
            return self.offsets[values], self.offsets[values + np.uint64(1)]
        return np.searchsorted(self.keys, values, "left"), np.searchsorted(self.keys, values, "right")

    @property
    def nbytes(self) -> int:
        return self.perm.nbytes + sum(a.nbytes for a in (self.offsets, self.keys) if a is not None)


class MultiIndexHash:
    """Exact Hamming k-NN and range search over packed codes ``uint8[n, ceil(bits/8)]``.

    ``search(q, k) -> (D int32[nq, k], I int64[nq, k])`` and ``range_search(q, radius) -> (lims, D, I)`` as in
    faiss; ``I`` are row numbers of ``codes``. Distances count bits ``[start_bit, end_bit)`` only (default: all).
    ``m`` substrings (default: chosen from the codes, :func:`choose_substrings`); ``m = 0`` keeps no tables and
    always scans.
    """

    def __init__(
        self, codes: np.ndarray, bits: int, *, start_bit: int = 0, end_bit: int | None = None, m: int | None = None
    ):
        codes = C.as_codes(codes, bits)
        end_bit = bits if end_bit is None else end_bit
        if not 0 <= start_bit < end_bit <= bits:
            raise ValueError(f"need 0 <= start_bit ({start_bit}) < end_bit ({end_bit}) <= bits ({bits})")
        self.bits, self.start_bit, self.end_bit = bits, start_bit, end_bit
        self.ntotal = codes.shape[0]
        words = C.to_words(codes)
        self._w = words.shape[1]
        self._words = np.ascontiguousarray(words[:, 0] if self._w == 1 else words)
        full = start_bit == 0 and end_bit == bits
        mask = range_mask(codes.shape[1], start_bit, end_bit)
        self._mask = None if full else (mask[0] if self._w == 1 else mask)
        nbits = end_bit - start_bit
        self.substring_costs: dict[int, dict[str, float]] = {}  # how m was chosen (m=None), see choose_substrings
        if m is None:
            self.m, self.substring_costs = choose_substrings(codes, bits, start_bit, end_bit)
        else:
            self.m = int(m)
        if not 0 <= self.m <= nbits:
            raise ValueError(f"m={self.m} substrings for {nbits} bits")
        spans = split_bits(start_bit, end_bit, self.m) if self.m else []
        # each bucket's rows grouped by another table's substring (the one before it; table 0: table 1), so that the
        # compiled range search skips a whole group of a hot bucket at once (one-word codes; see _sub_table)
        self._sub = np.array([_sub_table(spans, j) if self._w == 1 else -1 for j in range(len(spans))], np.int64)
        self._tables = [self._build(codes, a, b, spans[s] if s >= 0 else None) for (a, b), s in zip(spans, self._sub)]
        masks = [range_mask(codes.shape[1], t.start, t.stop) for t in self._tables]
        self._sub_masks = [mk[0] if self._w == 1 else mk for mk in masks]
        self._kern = self._compiled_layout(mask, masks) if _K is not None else None
        self._range_plans: dict[int, tuple[int, int, float]] = {}

    def _compiled_layout(self, mask: np.ndarray, masks: list[np.ndarray]) -> dict | None:
        """The tables end to end for the compiled loops (the tables then view these arrays: no copy is kept), and
        each table's own copy of the codes in its bucket order (``m * 8 * words`` bytes a code)."""
        if any(t.offsets is None for t in self._tables):
            return None  # sorted-key tables: numpy path only
        idx_t = self._tables[0].perm.dtype if self._tables else np.int32
        perm = np.empty((self.m, self.ntotal), dtype=idx_t)
        sizes = [t.offsets.shape[0] for t in self._tables]
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)
        offs = np.empty(int(sum(sizes)), dtype=self._tables[0].offsets.dtype if sizes else np.int32)
        words = self._words.reshape(self.ntotal, self._w)
        tw = np.empty((self.m, self.ntotal * self._w), dtype=np.uint64)
        for j, t in enumerate(self._tables):
            perm[j] = t.perm
            np.take(words, t.perm, axis=0, out=tw[j].reshape(self.ntotal, self._w))
            offs[base[j] : base[j] + sizes[j]] = t.offsets
            self._tables[j] = _Table(t.start, t.stop, perm[j], offs[base[j] : base[j] + sizes[j]], None)
        submask = np.array(masks, dtype=np.uint64).reshape(self.m, words.shape[1])
        mask = np.asarray(mask, dtype=np.uint64).reshape(-1)
        return {
            "words": words,
            "tw": tw,
            "mask": mask,
            "perm": perm,
            "offs": offs,
            "base": base,
            "nbits": np.array([t.nbits for t in self._tables], dtype=np.int64),
            "submask": submask,
            "words1": self._words if self._w == 1 else None,
            "mask1": mask[0],
            "shell_cum": self._shell_cum(),
            "rowbits": max(1, (self.ntotal - 1).bit_length()),
        }

    def _shell_cum(self) -> np.ndarray:
        """``int64[m, max_bits + 1]``: probes for shells 0..t of each table (the size of its ball of radius t)."""
        top = max([t.nbits for t in self._tables], default=0)
        out = np.zeros((self.m, top + 1), dtype=np.int64)
        for j, t in enumerate(self._tables):
            out[j] = [C.ball_size(t.nbits, r) for r in range(top + 1)]
        return out

    def _scan_range(self, qw2: np.ndarray, radius: int):
        k = self._kern
        if k["words1"] is not None:
            return _K.scan_range1(k["words1"], k["mask1"], qw2[:, 0].copy(), radius)
        return _K.scan_range(k["words"], k["mask"], qw2, radius)

    def _scan_knn(self, qw2: np.ndarray, kk: int):
        k = self._kern
        if k["words1"] is not None:
            return _K.scan_knn1(k["words1"], k["mask1"], qw2[:, 0].copy(), kk)
        return _K.scan_knn(k["words"], k["mask"], qw2, kk)

    def _build(self, codes: np.ndarray, a: int, b: int, within: tuple[int, int] | None = None) -> _Table:
        """A table on bits ``[a, b)``; with ``within``, each bucket's rows ordered by their value on those bits."""
        vals = substring_values(codes, a, b)
        n, nb = codes.shape[0], b - a
        idx_t = np.int32 if n < 2**31 - 1 else np.int64
        key = vals if within is None else (vals << np.uint64(within[1] - within[0])) | substring_values(codes, *within)
        perm = np.argsort(key, kind="stable").astype(idx_t)
        if nb <= _DIRECT_MAX_BITS and (1 << nb) <= max(8 * n, 1 << 16):
            offsets = np.zeros((1 << nb) + 1, dtype=idx_t)
            np.cumsum(np.bincount(vals.astype(np.int64), minlength=1 << nb), out=offsets[1:])
            return _Table(a, b, perm, offsets, None)
        return _Table(a, b, perm, None, vals[perm])

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self.ntotal

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes (as 64-bit words) plus every table."""
        copies = self._kern["tw"].nbytes if self._kern is not None else 0  # the tables' bucket-order codes
        return self._words.nbytes + sum(t.nbytes for t in self._tables) + copies

    def __repr__(self) -> str:
        return (
            f"MultiIndexHash(ntotal={self.ntotal}, bits={self.bits}, compared=[{self.start_bit}, "
            f"{self.end_bit}), m={self.m}, substrings={[t.nbits for t in self._tables]})"
        )

    def distances(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Distances ``int32[len(rows)]`` (over the compared bits) from one code ``q`` to the given rows."""
        qw, _ = self._prepare(q)
        return self._dist(np.asarray(rows, dtype=np.int64), qw[0])

    def codes_of(self, rows: np.ndarray) -> np.ndarray:
        """The packed codes ``uint8[len(rows), ceil(bits/8)]`` of the given rows."""
        w = self._words[np.asarray(rows, dtype=np.int64)]
        return np.ascontiguousarray(w).view(np.uint8).reshape(w.shape[0], -1)[:, : C.code_bytes(self.bits)].copy()

    # ---------------------------------------------------------------- queries
    def _prepare(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queries as words (``uint64[nq]`` or ``[nq, w]``) and their substrings ``int64[nq, m]``."""
        q = C.as_codes(q, self.bits)
        qw = C.to_words(q)
        qw = np.ascontiguousarray(qw[:, 0] if self._w == 1 else qw)
        nq, total = q.shape[0], 8 * q.shape[1]
        qs = np.empty((nq, self.m), dtype=np.int64)
        if nq <= 16:  # a few queries: Python integers beat a dozen small numpy calls
            for i in range(nq):
                x = int.from_bytes(q[i].tobytes(), "big")
                for j, t in enumerate(self._tables):
                    qs[i, j] = (x >> (total - t.stop)) & ((1 << t.nbits) - 1)
        else:
            for j, t in enumerate(self._tables):
                qs[:, j] = substring_values(q, t.start, t.stop).astype(np.int64)
        return qw, qs

    def _dist(self, rows: np.ndarray, qrow) -> np.ndarray:
        return _xor_dist(self._words[rows], qrow, self._mask)

    def _radii(self, radius: int) -> list[int]:
        s, a = divmod(radius, self.m)
        return [s if j <= a else s - 1 for j in range(self.m)]

    def _probe_cost(self, radius: int, probe_cost: float = _PROBE_COST, row_cost: float = 1.0) -> float:
        """Estimated work of one range query in scanned-row units (probes plus expected candidates)."""
        cost = 0.0
        for t, r in zip(self._tables, self._radii(radius)):
            if r >= 0:
                nb = C.ball_size(t.nbits, r)
                cost += nb * (probe_cost + row_cost * self.ntotal / float(1 << t.nbits))
        return cost

    def _range_plan(self, radius: int) -> tuple[int, int, float]:
        """Compiled range search of ``radius``: ``(tmax, hot_tmax, hot_cost)``. ``tmax``: -2 to scan, else the largest
        per-query table radius (-1: none, the even split ``radius = m*s + a``). Per-query radii go up to ``s`` when
        ``s >= 1`` and counting the buckets within ``s`` takes few probes (with ``s = 0`` the even split probes one
        bucket a table). A query whose plan would still read more than ``hot_cost`` (in candidate reads) gets radii
        up to ``hot_tmax`` instead (wider balls, so that a hot bucket can be left out), the largest radius whose
        buckets take at most ``_ALLOC_MAX_PROBES`` probes a table to count; ``hot_cost`` is what counting them
        costs (-1: no such radius above ``tmax``)."""
        if self.m == 0 or self._probe_cost(radius, _COMPILED_PROBE_COST, _COMPILED_ROW_COST) > self.ntotal:
            return -2, -1, 0.0
        tmax = radius // self.m
        if tmax < 1 or any(C.ball_size(t.nbits, tmax) > _ALLOC_MAX_PROBES for t in self._tables):
            tmax = -1
        hot = max(tmax, 0)
        while hot < radius and all(C.ball_size(t.nbits, hot + 1) <= _ALLOC_MAX_PROBES for t in self._tables):
            hot += 1
        if hot <= max(tmax, 0) or self.m * (hot + 1) < radius + 1:  # no wider radii, or too few to cover
            return tmax, -1, 0.0
        return tmax, hot, _HOT_FACTOR * _ALLOC_PROBE_COST * sum(C.ball_size(t.nbits, hot) for t in self._tables)

    def range_search(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row within ``radius``: CSR ``(lims int64[nq+1], D int32, I int64)``, per query by (distance, row)."""
        qw, qs = self._prepare(q)
        nq = qw.shape[0]
        if radius < 0 or self.ntotal == 0:
            return np.zeros(nq + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
        if USE_COMPILED and self._kern is not None:
            k, qw2 = self._kern, qw.reshape(nq, -1)
            plan = self._range_plans.get(radius)
            if plan is None:
                plan = self._range_plans[radius] = self._range_plan(radius)
            if plan[0] < -1:
                return self._scan_range(qw2, radius)
            return _K.range_batch(
                k["tw"],
                k["mask"],
                k["perm"],
                k["offs"],
                k["base"],
                k["nbits"],
                k["submask"],
                qw2,
                qs,
                radius,
                k["rowbits"],
                k["shell_cum"],
                plan[0],
                _ALLOC_PROBE_COST,
                self._sub,
                plan[1],
                plan[2],
            )
        qsub = [qs[:, j].astype(np.uint64) for j in range(self.m)]
        if self.m == 0 or self._probe_cost(radius) > self.ntotal:
            return _collect([scan_within(self._words, qw[i], radius, self._mask) for i in range(nq)])
        qids, rows = [], []
        for t, r, sub in zip(self._tables, self._radii(radius), qsub):
            if r < 0:
                continue
            probes = (sub[:, None] ^ ball(t.nbits, r)[None, :]).ravel()
            st, en = t.ranges(probes)
            pos, owner = _expand(st, en)
            rows.append(t.perm[pos])
            qids.append(owner // ball(t.nbits, r).shape[0])
        qid = np.concatenate(qids)
        row = np.concatenate(rows).astype(np.int64)
        d = self._dist(row, qw[qid])
        keep = np.flatnonzero(d <= radius)
        qid, row, d = qid[keep], row[keep], d[keep]
        o = np.lexsort((row, d, qid))
        qid, row, d = qid[o], row[o], d[o]
        if qid.shape[0] > 1:  # a row reached through several tables: duplicates are adjacent after the sort
            first = np.ones(qid.shape[0], dtype=bool)
            first[1:] = (qid[1:] != qid[:-1]) | (row[1:] != row[:-1])
            qid, row, d = qid[first], row[first], d[first]
        lims = np.zeros(nq + 1, dtype=np.int64)
        np.cumsum(np.bincount(qid, minlength=nq), out=lims[1:])
        return lims, d.astype(np.int32), row

    def search(self, q: np.ndarray, k: int, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows: ``D int32[nq, k]``, ``I int64[nq, k]`` by (distance, row), padded with -1.

        Exact with ``eps = 0``. With ``eps > 0`` the probing stops as soon as the k-th distance found is below
        ``1 + eps`` times the distance that every code not yet read is known to be at least at: the i-th result is
        then within ``(1 + eps)`` times the true i-th distance, for every i, and the search reads fewer buckets (a
        query that falls back to a linear scan is still answered exactly)."""
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, not {eps!r}")
        qw, qs = self._prepare(q)
        nq = qw.shape[0]
        D = np.full((nq, max(k, 0)), -1, dtype=np.int32)
        I = np.full((nq, max(k, 0)), -1, dtype=np.int64)
        if k <= 0 or self.ntotal == 0:
            return D, I
        kk = min(k, self.ntotal)
        if USE_COMPILED and self._kern is not None:
            kern, qw2 = self._kern, qw.reshape(nq, -1)
            if self.m == 0:
                Dk, Ik = self._scan_knn(qw2, kk)
            else:
                Dk, Ik, slow = _K.knn_batch(
                    kern["tw"],
                    kern["mask"],
                    kern["perm"],
                    kern["offs"],
                    kern["base"],
                    kern["nbits"],
                    kern["submask"],
                    qw2,
                    qs,
                    kk,
                    kern["shell_cum"],
                    _KNN_PROBE_COST,
                    _KNN_ROW_COST,
                    float(eps),
                    self._sub,
                )
                if slow.any():  # covering their k-th distance would cost more probes than a scan
                    Dk[slow], Ik[slow] = self._scan_knn(np.ascontiguousarray(qw2[slow]), kk)
            D[:, :kk], I[:, :kk] = Dk, Ik
            return D, I
        qsub = [qs[:, j].astype(np.uint64) for j in range(self.m)]
        if self.m == 0:
            for i in range(nq):
                D[i, :kk], I[i, :kk] = scan_topk(self._words, qw[i], kk, self._mask)
            return D, I
        big = np.iinfo(np.int32).max
        best_d = np.full((nq, kk), big, dtype=np.int32)
        best_i = np.full((nq, kk), -1, dtype=np.int64)
        active = np.arange(nq)
        probed = 0.0  # probes per query so far, in scanned-row units
        smax = max(t.nbits for t in self._tables)
        for s in range(smax + 1):
            for j, t in enumerate(self._tables):
                if active.size == 0:
                    break
                sh = shell(t.nbits, s)
                probed += sh.shape[0] * _PROBE_COST
                if probed > self.ntotal:  # the ball got too big: read every row instead
                    for i in active:
                        best_d[i], best_i[i] = scan_topk(self._words, qw[i], kk, self._mask)
                    active = active[:0]
                    break
                if sh.shape[0]:
                    self._probe_shell(j, s, sh, active, qw, qsub, best_d, best_i)
                unseen = self.m * s + j + 1  # every row not yet seen is at least this far
                active = active[best_d[active, kk - 1] >= (1.0 + eps) * unseen]
            if active.size == 0:
                break
        D[:, :kk], I[:, :kk] = best_d, best_i
        D[I < 0] = -1
        return D, I

    def _probe_shell(self, j, s, sh, active, qw, qsub, best_d, best_i) -> None:
        """Probes shell ``s`` of table ``j`` for the active queries and merges new rows into their top k."""
        t = self._tables[j]
        probes = (qsub[j][active][:, None] ^ sh[None, :]).ravel()
        st, en = t.ranges(probes)
        pos, owner = _expand(st, en)
        if pos.size == 0:
            return
        qa = owner // sh.shape[0]  # index into active
        row = t.perm[pos].astype(np.int64)
        x = np.bitwise_xor(self._words[row], qw[active[qa]])
        if self.m > 1:  # keep a row only where this (shell, table) is the first in probe order to reach it
            new = np.ones(row.shape[0], dtype=bool)
            for j2, mk in enumerate(self._sub_masks):
                if j2 != j:
                    cd = popcount_inplace(x & mk)
                    new &= cd > s if j2 < j else cd >= s
            keep = np.flatnonzero(new)
            qa, row, x = qa[keep], row[keep], x[keep]
            if row.size == 0:
                return
        if self._mask is not None:
            x &= self._mask
        d = popcount_inplace(x)
        kk = best_d.shape[1]
        na = active.shape[0]
        cq = np.concatenate([np.repeat(np.arange(na), kk), qa])
        cd = np.concatenate([best_d[active].ravel(), d])
        ci = np.concatenate([best_i[active].ravel(), row])
        o = np.lexsort((ci, cd, cq))
        cq, cd, ci = cq[o], cd[o], ci[o]
        starts = np.searchsorted(cq, np.arange(na))
        rank = np.arange(cq.shape[0]) - starts[cq]
        keep = rank < kk
        best_d[active[cq[keep]], rank[keep]] = cd[keep]
        best_i[active[cq[keep]], rank[keep]] = ci[keep]


def _collect(per_query: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lims = np.zeros(len(per_query) + 1, dtype=np.int64)
    for i, (d, _) in enumerate(per_query):
        lims[i + 1] = lims[i] + d.shape[0]
    if not per_query:
        return lims, np.empty(0, np.int32), np.empty(0, np.int64)
    return (
        lims,
        np.concatenate([d for d, _ in per_query]).astype(np.int32),
        np.concatenate([r for _, r in per_query]).astype(np.int64),
    )


def warm_up() -> None:
    """Compiles (or loads from numba's cache) every query loop now, so the first real query does not pay for it."""
    if _K is None:
        return
    rng = np.random.default_rng(0)
    for bits in (64, 128):
        codes = rng.integers(0, 256, size=(600, bits // 8), dtype=np.uint8)
        for ix in (MultiIndexHash(codes, bits), MultiIndexHash(codes, bits, m=0)):
            ix.range_search(codes[:2], 2)
            ix.search(codes[:2], 3)
            ix.search(codes[:2], 600)
