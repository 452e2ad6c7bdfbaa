"""Documents' own word sets, for near-duplicate checks on the text rather than on the model's vocabulary.

``prepare`` stores per document the 64-bit hashes of its distinct tokens (all of them, in or out of the
vocabulary), ascending, as int64 LE bytes (:data:`semhash_spark.data.dataset.WORD_HASHES`). Jaccard over these
sets equals Jaccard over the word sets up to 64-bit hash collisions. :func:`minhash` and :func:`lsh_pairs`
find the pairs of a sample above a Jaccard threshold (dedup's radius calibration); the exact check is
:func:`semhash_spark.index._dedup_kernels.pair_similarity` over the hash sets.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
from numba import njit

HASH_DTYPE = np.dtype("<i8")
MERSENNE = (1 << 61) - 1


def word_set_hashes(tokens: Iterable[str]) -> bytes:
    """The distinct tokens' 64-bit hashes (blake2b), ascending, as int64 LE bytes."""
    uniq = set(tokens)
    raw = b"".join(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest() for w in uniq)
    return np.unique(np.frombuffer(raw, dtype=HASH_DTYPE)).astype(HASH_DTYPE).tobytes()


def hash_lists(rows: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of :func:`word_set_hashes` bytes -> CSR parts ``(indptr int64[n + 1], hashes int64[nnz])``."""
    sizes = np.fromiter((len(b) if b is not None else 0 for b in rows), np.int64, len(rows))
    if np.any(sizes % HASH_DTYPE.itemsize):
        raise ValueError("word_hashes rows must hold 8-byte values")
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(sizes // HASH_DTYPE.itemsize, out=indptr[1:])
    data = np.frombuffer(b"".join(b for b in rows if b), dtype=HASH_DTYPE).astype(np.int64)
    return indptr, data


@njit(cache=True, nogil=True)
def _minhash(indptr, hashes, a, b):
    """Per row and permutation ``j``: the least ``mix_j(x)`` over the row's hashes ``x``, with
    ``mix_j(x) = y ^ (y >> 29)``, ``y = (x ^ b_j) * a_j mod 2^64`` (``a_j`` odd): a bijection of 64-bit values
    per ``j``, three integer operations where a modular hash needs divisions."""
    n, k = indptr.size - 1, a.size
    out = np.full((n, k), np.iinfo(np.uint64).max, np.uint64)
    s = np.uint64(29)
    for r in range(n):
        row = out[r]
        for t in range(indptr[r], indptr[r + 1]):
            x = np.uint64(hashes[t])
            for j in range(k):
                y = (x ^ b[j]) * a[j]
                v = y ^ (y >> s)
                if v < row[j]:
                    row[j] = v
    return out


def minhash(indptr: np.ndarray, hashes: np.ndarray, num_perm: int = 125, seed: int = 1) -> np.ndarray:
    """MinHash signatures ``uint64[n, num_perm]`` of the rows' hash sets (random 64-bit bijections: the word
    hashes are already uniform, so each permutation's minimum is as good as a universal hash's)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True)
    return _minhash(indptr, hashes, a, b)


@njit(cache=True, nogil=True)
def _group_pairs(order, starts, ends):
    """All pairs ``(min, max)`` of the rows ``order[s:e]`` of each group ``(s, e)``."""
    total = 0
    for g in range(starts.size):
        m = ends[g] - starts[g]
        total += m * (m - 1) // 2
    out = np.empty((total, 2), np.int64)
    k = 0
    for g in range(starts.size):
        for p in range(starts[g], ends[g]):
            for q in range(p + 1, ends[g]):
                x, y = order[p], order[q]
                out[k, 0] = min(x, y)
                out[k, 1] = max(x, y)
                k += 1
    return out


def lsh_pairs(sig: np.ndarray, bands: int, rows: int, max_group: int = 256, seed: int = 1) -> np.ndarray:
    """Candidate pairs ``int64[k, 2]`` (``a < b``, unique) of rows that agree on all ``rows`` values of some band;
    a group of more than ``max_group`` equal bands is sampled down to that many rows (a bounded sample)."""
    n = sig.shape[0]
    rng = np.random.default_rng(seed)
    mult = rng.integers(1, 1 << 63, rows, dtype=np.uint64) | np.uint64(1)
    out = []
    with np.errstate(over="ignore"):
        for band in range(bands):
            keys = (sig[:, band * rows : (band + 1) * rows] * mult).sum(axis=1, dtype=np.uint64)
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
            ends = np.r_[starts[1:], n]
            size = ends - starts
            small = (size > 1) & (size <= max_group)
            out.append(_group_pairs(order, starts[small], ends[small]))
            for s, e in zip(starts[size > max_group], ends[size > max_group]):
                members = rng.choice(order[s:e], max_group, replace=False)
                i, j = np.triu_indices(members.size, 1)
                out.append(np.stack([np.minimum(members[i], members[j]), np.maximum(members[i], members[j])], 1))
    pairs = np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)
    code = np.unique(pairs[:, 0] * np.int64(max(n, 1)) + pairs[:, 1])  # a < b < n: one int64 per pair
    return np.stack([code // max(n, 1), code % max(n, 1)], 1).astype(np.int64)
