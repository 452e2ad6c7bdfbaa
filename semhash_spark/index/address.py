"""The papers' memory-address lookup: every item stored under a short address code, a query visiting every address
within a small Hamming radius of its own.

Salakhutdinov & Hinton, "Semantic hashing" (2009): a 20-bit code learned for each document is a memory address;
the documents at the addresses within Hamming distance ``r`` of the query's address are its shortlist, found in a
time that does not depend on the size of the collection. Torralba, Fergus & Weiss (CVPR 2008) do the same with
28-bit image codes.

``AddressTable`` keeps the item rows sorted by (address, row). Up to ``DIRECT_MAX_BITS`` address bits it is the
papers' memory: a direct table of ``2**bits + 1`` offsets indexed by address. Wider addresses keep the sorted
distinct addresses and a directory over their top bits (about ``log2`` of their count), so a probe is one directory
read and a short binary search. A lookup has two stages: ``visit`` enumerates the ``sum(C(bits, i), i <= radius)``
addresses of the ball shell by shell and reads each one's run of rows (a cost fixed by the bits and the radius);
``gather`` reads the runs' rows (``ball``: CSR results like faiss ``range_search``, ordered by (address distance,
row)) and ``rerank`` their ranking codes (``search``: the ``k`` items of the ball closest to a query's ranking
code, faiss-shaped ``(D, I)``), both growing with the shortlist.
"""

from __future__ import annotations

from math import comb

import numpy as np

from semhash_spark import codes as C

try:  # the compiled probe loop; without numba ``ball`` takes the numpy path below
    from semhash_spark.index import _address_kernels as _K
except ImportError:  # pragma: no cover - numba is pinned in requirements.txt
    _K = None

USE_COMPILED = _K is not None  # set False to force the numpy path (tests compare the two)
DIRECT_MAX_BITS = 24  # direct table up to 2**24 + 1 offsets (128 MiB); wider: sorted distinct addresses
_MASKS_MAX = 1 << 21  # balls up to this many addresses are probed from a cached table of XOR masks
_MAX_BITS = 64
_U64, _U8 = np.dtype(np.uint64), np.dtype(np.uint8)


def _as_addresses(a, bits: int, what: str) -> np.ndarray:
    """``a`` as ``uint64[n]``, checked to be non-negative integers below ``2**bits``."""
    if type(a) is np.ndarray and a.dtype == np.uint64 and a.ndim == 1:  # the common case, checked cheaply
        top = int(a[0]) if a.size == 1 else int(a.max()) if a.size else 0
        if bits < 64 and top >= (1 << bits):
            raise ValueError(
                f"{what} must be below 2**{bits} for {bits}-bit addresses, got {top}; "
                f"pass the address code's bits, not a longer code"
            )
        return a
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array of integer addresses, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must be integers (the address bits' value), got dtype {a.dtype}")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and int(a.min()) < 0:
        raise ValueError(f"{what} must be non-negative, got {int(a.min())}")
    a = a.astype(np.uint64, copy=False)
    if a.size and bits < 64 and int(a.max()) >= (1 << bits):
        raise ValueError(
            f"{what} must be below 2**{bits} for {bits}-bit addresses, got {int(a.max())}; "
            f"pass the address code's bits, not a longer code"
        )
    return a


def ball_size(bits: int, radius: int) -> int:
    """Addresses within Hamming distance ``radius`` of one ``bits``-bit address."""
    return sum(comb(bits, i) for i in range(radius + 1))


class AddressTable:
    """Item rows by address code; ``ball`` finds every item whose address is within a Hamming radius of a query's.

    ``addresses``: one address per item (``uint64``, the integer value of its address bits, e.g.
    :func:`semhash_spark.codes.prefix` of packed codes); the item's row number is its position. ``codes``
    (optional): the items' packed ranking codes ``uint8[n, nbytes]``, kept in address order for :meth:`search`.
    """

    def __init__(self, addresses: np.ndarray, bits: int, *, codes: np.ndarray | None = None):
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= _MAX_BITS:
            raise ValueError(f"address bits must be an integer in 1..{_MAX_BITS}, got {bits!r}")
        self.bits = int(bits)
        a = _as_addresses(addresses, self.bits, "addresses")
        self._n = a.shape[0]
        self.ids_ = np.argsort(a, kind="stable").astype(np.int64)  # rows by (address, row)
        sa = a[self.ids_]
        self.direct = self.bits <= DIRECT_MAX_BITS
        if self.direct:
            self.offsets_ = np.zeros((1 << self.bits) + 1, np.int64)
            np.cumsum(np.bincount(a.astype(np.int64), minlength=1 << self.bits), out=self.offsets_[1:])
            self.keys_ = np.zeros(0, np.uint64)
            self.dir_ = np.zeros(1, np.int64)
            self.shift_ = 0
        else:
            first = np.ones(sa.shape[0], bool)
            first[1:] = sa[1:] != sa[:-1]
            self.keys_ = sa[first]  # distinct addresses, ascending
            self.offsets_ = np.append(np.flatnonzero(first), sa.shape[0]).astype(np.int64)
            dbits = int(min(DIRECT_MAX_BITS, self.bits, max(1, int(np.ceil(np.log2(max(2, self.keys_.size)))))))
            self.shift_ = self.bits - dbits
            top = self.keys_ >> np.uint64(self.shift_)
            self.dir_ = np.searchsorted(top, np.arange((1 << dbits) + 1, dtype=np.uint64)).astype(np.int64)
        self._masks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.words_ = None
        if codes is not None:
            codes = np.asarray(codes)
            if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[0] != self._n:
                raise ValueError(
                    f"codes must be packed uint8[{self._n}, nbytes], one per address; got "
                    f"{codes.dtype}{list(codes.shape)}"
                )
            self.words_ = np.ascontiguousarray(C.to_words(codes)[self.ids_])  # codes in (address, row) order

    def __len__(self) -> int:
        return self._n

    def _check(self, q_addresses, radius) -> tuple[np.ndarray, int]:
        q = q_addresses
        if type(radius) is int and 0 <= radius <= self.bits and type(q) is np.ndarray and q.shape == (1,):
            if q.dtype is _U64 and (self.bits == 64 or int(q[0]) >> self.bits == 0):
                return q, radius  # one query: checked cheaply, as its cost is most of a small ball's
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
            raise TypeError(f"radius must be an integer, got {radius!r}")
        radius = int(radius)
        if not 0 <= radius <= self.bits:
            raise ValueError(f"radius must be in 0..{self.bits} (the address bits), got {radius}")
        q = _as_addresses(
            np.asarray(q_addresses).reshape(-1) if np.ndim(q_addresses) == 0 else q_addresses,
            self.bits,
            "query addresses",
        )
        return np.ascontiguousarray(q), radius

    def _mask_table(self, radius: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ball's XOR masks by weight and where each weight ends, or None when the ball is too large."""
        if radius not in self._masks:
            if ball_size(self.bits, radius) > _MASKS_MAX:
                return None
            masks, dist = _flip_masks(self.bits, radius)
            self._masks[radius] = (masks, np.cumsum(np.bincount(dist, minlength=radius + 1)).astype(np.int64))
        return self._masks[radius]

    def visit(self, q_addresses: np.ndarray, radius: int):
        """The ball's addresses visited: each query's non-empty addresses within ``radius`` of its own, as runs of
        positions in the address order. A cost fixed by the address bits and the radius, whatever the size.

        Returns ``(lims, starts, ends, address_distances)``: query ``i``'s runs are ``lims[i]:lims[i+1]``, run
        ``g`` holding the rows ``ids_[starts[g]:ends[g]]`` at address distance ``address_distances[g]`` (int32),
        by distance. :meth:`gather` reads their rows, :meth:`rerank` their ranking codes.
        """
        q, radius = self._check(q_addresses, radius)
        if USE_COMPILED and _K is not None:
            mt = self._mask_table(radius)
            if mt is not None:
                return _K.visit_masks(self.offsets_, self.keys_, self.dir_, self.shift_, self.direct, mt[0], mt[1], q)
            return _K.visit_enum(self.offsets_, self.keys_, self.dir_, self.shift_, self.direct, self.bits, q, radius)
        return self._visit_numpy(q, radius)

    def gather(self, runs, *, ordered: bool = True):
        """The rows of :meth:`visit`'s runs: ``(lims, ids, address_distances)`` as :meth:`ball` returns them."""
        lims, starts, ends, dist = runs
        if USE_COMPILED and _K is not None:
            return _K.gather(self.ids_, lims, starts, ends, dist, bool(ordered))
        cnt = ends - starts
        pos = _positions(starts, cnt)
        ids, d = self.ids_[pos], np.repeat(dist, cnt).astype(np.int32)
        out_lims = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)[lims]  # rows before each query's runs
        if ordered:
            for j in range(lims.shape[0] - 1):
                s = slice(out_lims[j], out_lims[j + 1])
                o = np.lexsort((ids[s], d[s]))
                ids[s], d[s] = ids[s][o], d[s][o]
        return out_lims, ids.astype(np.int64), d

    def rerank(self, runs, q_codes: np.ndarray, k: int):
        """The ``k`` items of :meth:`visit`'s runs closest to each query's ranking code: faiss-shaped
        ``(D int32[nq, k], I int64[nq, k])`` by (code distance, row), padded with -1."""
        nq = runs[0].shape[0] - 1
        return self._rerank_words(runs, self._query_words(q_codes, nq), self._check_k(k))

    def _rerank_words(self, runs, qw: np.ndarray, k: int):
        """:meth:`rerank` on checked inputs: ``qw`` from :meth:`_query_words`, ``k`` from :meth:`_check_k`."""
        lims, starts, ends, _ = runs
        nq = lims.shape[0] - 1
        if USE_COMPILED and _K is not None:
            return _K.rerank(lims, starts, ends, qw, self.words_, self.ids_, k)
        D = np.full((nq, k), -1, np.int32)
        I = np.full((nq, k), -1, np.int64)
        for j in range(nq):
            s = slice(lims[j], lims[j + 1])
            pos = _positions(starts[s], ends[s] - starts[s])
            rows = self.ids_[pos]
            d = C.popcount64(self.words_[pos] ^ qw[j]).astype(np.int32)
            o = np.lexsort((rows, d))[:k]
            D[j, : o.size], I[j, : o.size] = d[o], rows[o]
        return D, I

    def _query_words(self, q_codes, nq: int) -> np.ndarray:
        """The queries' ranking codes as ``uint64[nq, words]`` like the table's, checked."""
        if self.words_ is None:
            raise ValueError("rerank and search need the items' ranking codes: build the AddressTable with codes=")
        q = q_codes
        if type(q) is np.ndarray and q.dtype is _U8 and q.shape == (nq, 8 * self.words_.shape[1]):
            if q.flags.c_contiguous:  # the common case: a view, no copy
                return q.view(np.uint64)
        q = np.asarray(q_codes)
        words = C.to_words(q) if q.dtype == np.uint8 and q.ndim == 2 and q.shape[0] == nq else None
        if words is None or words.shape[1] != self.words_.shape[1]:
            raise ValueError(
                f"q_codes must be packed uint8[{nq}, nbytes] like the table's codes, got {q.dtype}{list(q.shape)}"
            )
        return np.ascontiguousarray(words)

    @staticmethod
    def _check_k(k) -> int:
        if type(k) is int and k >= 1:
            return k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    def ball(self, q_addresses: np.ndarray, radius: int, *, ordered: bool = True):
        """Every item within address distance ``radius`` of each query's address (:meth:`visit`, then
        :meth:`gather`).

        Returns ``(lims, ids, address_distances)``: query ``i``'s items are ``ids[lims[i]:lims[i+1]]`` (int64 rows)
        at ``address_distances[lims[i]:lims[i+1]]`` (int32), ordered by (distance, row); ``ordered=False`` leaves
        the rows of one distance in address order (for a caller that ranks them anyway).
        """
        return self.gather(self.visit(q_addresses, radius), ordered=ordered)

    def search(self, q_addresses: np.ndarray, q_codes: np.ndarray, radius: int, k: int):
        """The ``k`` items of each query's ball (address distance <= ``radius``) closest to its ranking code
        (:meth:`visit`, then :meth:`rerank`; compiled, one pass that ranks each run as it is found): faiss-shaped
        ``(D int32[nq, k], I int64[nq, k])`` by (code distance, row), padded with -1."""
        q, radius = self._check(q_addresses, radius)
        qw, k = self._query_words(q_codes, q.shape[0]), self._check_k(k)
        if USE_COMPILED and _K is not None:
            mt = self._mask_table(radius)
            if mt is not None:
                return _K.search_masks(
                    self.offsets_,
                    self.keys_,
                    self.dir_,
                    self.shift_,
                    self.direct,
                    mt[0],
                    mt[1],
                    q,
                    qw,
                    self.words_,
                    self.ids_,
                    k,
                )
        return self._rerank_words(self.visit(q, radius), qw, k)

    def _visit_numpy(self, q: np.ndarray, radius: int):
        flips, dist = _flip_masks(self.bits, radius)
        lims = np.zeros(q.shape[0] + 1, np.int64)
        out_s, out_e, out_d = [], [], []
        for j, qa in enumerate(q):
            cand = qa ^ flips
            if self.direct:
                lo, hi = self.offsets_[cand.astype(np.int64)], self.offsets_[cand.astype(np.int64) + 1]
            else:
                k = np.searchsorted(self.keys_, cand)
                hit = k < self.keys_.size
                hit[hit] = self.keys_[k[hit]] == cand[hit]
                lo = np.where(hit, self.offsets_[np.minimum(k, self.keys_.size)], 0)
                hi = np.where(hit, self.offsets_[np.minimum(k + 1, self.keys_.size)], 0)
            keep = hi > lo
            out_s.append(lo[keep])
            out_e.append(hi[keep])
            out_d.append(dist[keep])
            lims[j + 1] = lims[j] + int(keep.sum())
        cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
        return lims, cat(out_s, np.int64), cat(out_e, np.int64), cat(out_d, np.int32)


def _positions(starts: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Positions ``starts[g]..starts[g] + cnt[g]`` of every run ``g``, end to end."""
    return np.repeat(starts - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))


def _flip_masks(bits: int, radius: int):
    """Every XOR mask of at most ``radius`` of ``bits`` bits (``uint64``), by weight, and its weight (int32)."""
    masks, dist = [np.zeros(1, np.uint64)], [np.zeros(1, np.int32)]
    cur = np.zeros(1, np.uint64)  # masks of weight w whose highest set bit is ``top[i]``
    top = np.full(1, -1, np.int64)
    one = np.uint64(1)
    for w in range(1, radius + 1):
        new, ntop = [], []
        for b in range(bits):
            sel = top < b
            new.append(cur[sel] | (one << np.uint64(b)))
            ntop.append(np.full(int(sel.sum()), b, np.int64))
        cur, top = np.concatenate(new), np.concatenate(ntop)
        masks.append(cur)
        dist.append(np.full(cur.size, w, np.int32))
    return np.concatenate(masks), np.concatenate(dist)
