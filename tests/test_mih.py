"""mih: multi-index hashing checked against brute force, on the compiled and the numpy paths."""

from __future__ import annotations

import numpy as np
import pytest

from semhash_spark import codes as C
from semhash_spark.index import mih
from semhash_spark.index.mih import MultiIndexHash


def clustered(bits, n, rng, clusters=8, flip=0.06):
    centres = rng.integers(0, 2, size=(clusters, bits))
    return C.pack_bits(centres[rng.integers(0, clusters, size=n)] ^ (rng.random((n, bits)) < flip))


def exact(q, db, start_bit, bits):
    keep = np.zeros(bits, dtype=bool)
    keep[start_bit:] = True
    uq, ub = C.unpack_bits(q, bits)[:, keep], C.unpack_bits(db, bits)[:, keep]
    return (uq[:, None, :] != ub[None, :, :]).sum(-1)


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def path(request, monkeypatch):
    if request.param and mih._K is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(mih, "USE_COMPILED", request.param)
    return request.param


@pytest.mark.parametrize(
    "bits, kind, start_bit, n",
    [
        (20, "random", 0, 3000),
        (32, "clustered", 0, 3000),
        (64, "random", 0, 20000),
        (64, "clustered", 6, 20000),
        (128, "clustered", 0, 3000),
        (28, "clustered", 5, 800),
        (64, "clustered", 0, 300),
    ],
)
def test_equals_brute_force(path, bits, kind, start_bit, n):
    rng = np.random.default_rng(bits + n)
    both = C.pack_bits(rng.integers(0, 2, size=(n + 15, bits))) if kind == "random" else clustered(bits, n + 15, rng)
    db, q = both[:n], both[n:]
    ix = MultiIndexHash(db, bits, start_bit=start_bit)
    H = exact(q, db, start_bit, bits)
    prev = None
    for r in (0, 1, 2, 4, 7):
        lims, D, I = ix.range_search(q, r)
        for i in range(len(q)):
            want = np.flatnonzero(H[i] <= r)
            want = want[np.lexsort((want, H[i][want]))]
            assert np.array_equal(I[lims[i] : lims[i + 1]], want)
            assert np.array_equal(D[lims[i] : lims[i + 1]], H[i][want])
        counts = np.diff(lims)
        assert prev is None or np.all(counts >= prev)  # recall never falls as the radius grows
        prev = counts
    for k in (1, 10, 60):
        D, I = ix.search(q, k)
        for i in range(len(q)):
            want = np.lexsort((np.arange(n), H[i]))[:k]
            assert np.array_equal(I[i], want) and np.array_equal(D[i], H[i][want])


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_approximate_knn_within_eps_of_the_true_distances(path, kind):
    """``eps > 0``: every result's distance is its true one, the i-th is within (1 + eps) of the true i-th distance,
    rows are distinct; on uniform codes a large eps does stop early (some answer differs from the exact one).
    ``eps = 0`` is the exact answer."""
    rng = np.random.default_rng(7)
    n = 200_000  # uniform codes: enough that k-NN probes buckets rather than falling back to a scan
    both = C.pack_bits(rng.integers(0, 2, size=(n + 40, 64))) if kind == "random" else clustered(64, n + 40, rng)
    db, q = both[:n], both[n:]
    ix = MultiIndexHash(db, 64)
    H = np.stack([ix.distances(q[i : i + 1], np.arange(n)) for i in range(len(q))])  # the scan: brute force
    assert np.array_equal(H[:3, :500], exact(q[:3], db[:500], 0, 64))
    want = np.array([np.lexsort((np.arange(n), H[i]))[:10] for i in range(len(q))])
    true_d = np.take_along_axis(H, want, axis=1)
    D0, I0 = ix.search(q, 10, eps=0.0)
    assert np.array_equal(I0, want) and np.array_equal(D0, true_d)
    differs = 0
    for eps in (0.25, 1.0):
        D, I = ix.search(q, 10, eps=eps)
        assert np.array_equal(D, np.take_along_axis(H, I, axis=1))
        assert all(len(set(row)) == 10 for row in I.tolist())
        assert np.all(np.diff(D, axis=1) >= 0)
        assert np.all(D <= (1 + eps) * true_d)
        differs += int((D != true_d).any())
    if kind == "random":
        assert differs > 0
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            ix.search(q, 10, eps=bad)


def test_pads_with_minus_one_and_handles_tiny_indexes(path):
    rng = np.random.default_rng(0)
    db = C.pack_bits(rng.integers(0, 2, size=(5, 64)))
    ix = MultiIndexHash(db, 64)
    D, I = ix.search(db[:2], 8)
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == -1).all() and sorted(I[0, :5]) == list(range(5))
    lims, D, I = ix.range_search(db[:2], 64)
    assert list(np.diff(lims)) == [5, 5]
    empty = MultiIndexHash(np.zeros((0, 8), np.uint8), 64)
    assert empty.search(db[:1], 3)[1].tolist() == [[-1, -1, -1]]


def test_distances_and_codes_of():
    rng = np.random.default_rng(1)
    db = C.pack_bits(rng.integers(0, 2, size=(2000, 64)))
    ix = MultiIndexHash(db, 64, start_bit=8)
    rows = np.array([3, 1999, 0])
    assert np.array_equal(ix.codes_of(rows), db[rows])
    assert np.array_equal(ix.distances(db[:1], rows), exact(db[:1], db[rows], 8, 64)[0])


def test_scan_distances_matches_codes_module():
    rng = np.random.default_rng(2)
    db = C.pack_bits(rng.integers(0, 2, size=(5000, 64)))
    w = C.to_words(db)[:, 0].copy()
    assert np.array_equal(mih.scan_distances(w, w[7]), C.hamming(db[7:8], db)[0])


def test_substrings_and_shells():
    assert mih.split_bits(0, 64, 3) == [(0, 22), (22, 43), (43, 64)]
    assert sorted(mih.shell(5, 2).tolist()) == sorted(
        a | b for a in (1, 2, 4, 8, 16) for b in (1, 2, 4, 8, 16) if a < b
    )
    assert len(mih.ball(20, 2)) == C.ball_size(20, 2)
    codes = np.array([[0b10110000, 0b00001111]], dtype=np.uint8)
    assert int(mih.substring_values(codes, 2, 6)[0]) == 0b1100
    with pytest.raises(ValueError, match="start_bit"):
        MultiIndexHash(codes, 16, start_bit=16)


@pytest.mark.skipif(mih._K is None, reason="numba is not installed")
@pytest.mark.parametrize("m, rowbits, dbits", [(5, 20, 3), (40, 7, 1), (3000, 17, 3), (5000, 24, 2)])
def test_results_ordered_by_distance_then_row(m, rowbits, dbits):
    """The compiled loops' radix sort (odd and even numbers of byte passes, and the insertion sort below 64)."""
    rng = np.random.default_rng(m)
    d = rng.integers(0, 1 << dbits, size=m + 7).astype(np.int32)
    i = rng.integers(0, 1 << rowbits, size=m + 7).astype(np.int64)
    want = np.lexsort((i[3 : 3 + m], d[3 : 3 + m]))
    wd, wi = d[3 : 3 + m][want], i[3 : 3 + m][want]
    mih._K._order_results(d, i, 3, 3 + m, rowbits, dbits, np.empty(16, np.int64))
    assert np.array_equal(d[3 : 3 + m], wd) and np.array_equal(i[3 : 3 + m], wi)


def test_skewed_codes_with_large_buckets(path):
    """Most codes in a few substring buckets (like a trained model's): block-skipping and de-duplication hold."""
    rng = np.random.default_rng(7)
    bits = rng.random((30000, 64)) < np.linspace(0.01, 0.6, 64)
    db = C.pack_bits(bits[:29980])
    q = C.pack_bits(bits[29980:])
    ix = MultiIndexHash(db, 64)
    H = exact(q, db, 0, 64)
    for r in (2, 4, 6):
        lims, D, I = ix.range_search(q, r)
        for j in range(len(q)):
            want = np.flatnonzero(H[j] <= r)
            assert np.array_equal(I[lims[j] : lims[j + 1]], want[np.lexsort((want, H[j][want]))])
    D, I = ix.search(q, 10)
    for j in range(len(q)):
        want = np.lexsort((np.arange(len(db)), H[j]))[:10]
        assert np.array_equal(I[j], want) and np.array_equal(D[j], H[j][want])


def test_planted_codes_at_exactly_the_radius(path):
    """Codes exactly ``r`` bits from each query, the flips spread over the substrings in every way: a probe plan
    whose radii do not cover ``r`` (per-query radii included) loses some of them."""
    rng = np.random.default_rng(11)
    bits = rng.random((20000, 64)) < np.linspace(0.05, 0.5, 64)
    q = bits[:12]
    planted = []
    for r in (4, 6):
        for qi in q:
            for _ in range(60):
                x = qi.copy()
                x[rng.choice(64, size=r, replace=False)] ^= True
                planted.append(x)
    db = C.pack_bits(np.concatenate([bits[12:], np.array(planted)]))
    qc = C.pack_bits(q)
    ix = MultiIndexHash(db, 64)
    H = exact(qc, db, 0, 64)
    for r in (3, 4, 5, 6):
        lims, D, I = ix.range_search(qc, r)
        for j in range(len(qc)):
            want = np.flatnonzero(H[j] <= r)
            assert np.array_equal(I[lims[j] : lims[j + 1]], want[np.lexsort((want, H[j][want]))])


@pytest.mark.parametrize("k", [1, 3, 8])
def test_neighbours_anywhere_in_a_large_bucket(path, k):
    """One bucket of 2,000 codes read in chunks by a vectorised count: neighbours planted at its start, at chunk
    and block edges and in its short tail are all found, by k-NN and by range search."""
    rng = np.random.default_rng(k)
    bits = rng.integers(0, 2, size=(2001, 64)).astype(bool)
    bits[:, :16] = False  # every code in table 0's bucket 0 (m=4: 16-bit substrings)
    q = bits[2000].copy()
    for row, r in zip((0, 31, 32, 255, 256, 257, 511, 1984, 1999), (3, 2, 3, 1, 2, 3, 2, 1, 3)):
        bits[row] = q
        bits[row, 16 + rng.choice(48, size=r, replace=False)] ^= True
    db, qc = C.pack_bits(bits[:2000]), C.pack_bits(bits[2000:])
    ix = MultiIndexHash(db, 64, m=4)
    H = exact(qc, db, 0, 64)[0]
    want = np.lexsort((np.arange(2000), H))[:k]
    D, I = ix.search(qc, k)
    assert np.array_equal(I[0], want) and np.array_equal(D[0], H[want])
    lims, D, I = ix.range_search(qc, 3)
    within = np.flatnonzero(H <= 3)
    assert len(within) >= 9
    assert np.array_equal(I, within[np.lexsort((within, H[within]))])


def test_substring_count_chosen_from_the_codes():
    """Spread-out codes (uniform, 1M): the default's k-NN would scan, so more substrings are chosen, with a much
    lower estimated k-NN cost; the index built with them is exact. Concentrated codes keep the default without
    costing alternatives."""
    rng = np.random.default_rng(3)
    n = 1_000_000
    db = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    m0 = mih.default_substrings(n, 64)
    m, costs = mih.choose_substrings(db, 64)
    assert m > m0 and set(costs) > {m0, m}
    assert costs[m]["knn10"] * 1.5 < costs[m0]["knn10"]
    ix = MultiIndexHash(db, 64)
    assert ix.m == m and ix.substring_costs == costs
    q = rng.integers(0, 256, size=(20, 8), dtype=np.uint8)
    D, I = ix.search(q, 10)
    Ds, Is = MultiIndexHash(db, 64, m=0).search(q, 10)
    assert np.array_equal(D, Ds) and np.array_equal(I, Is)

    conc = clustered(64, 100_000, rng, clusters=50, flip=0.03)
    m, costs = mih.choose_substrings(conc, 64)
    assert m == mih.default_substrings(100_000, 64) and list(costs) == [m]


def test_chosen_substring_count_on_wide_codes_with_a_prefix():
    """128-bit codes compared from bit 8 (as inside a partition): the costed choice runs and the index is exact."""
    rng = np.random.default_rng(5)
    db = rng.integers(0, 256, size=(70_000, 16), dtype=np.uint8)
    m, costs = mih.choose_substrings(db, 128, start_bit=8)
    assert m in costs and 1 <= m <= 120
    ix = MultiIndexHash(db, 128, start_bit=8)
    assert ix.m == m
    q = rng.integers(0, 256, size=(8, 16), dtype=np.uint8)
    H = exact(q, db, 8, 128)
    D, I = ix.search(q, 5)
    for j in range(len(q)):
        want = np.lexsort((np.arange(len(db)), H[j]))[:5]
        assert np.array_equal(I[j], want) and np.array_equal(D[j], H[j][want])


@pytest.mark.parametrize("hot", [False, True], ids=["plain", "wider-radii"])
def test_grouped_hot_buckets_skip_only_what_cannot_be_a_new_result(path, hot, monkeypatch):
    """Buckets of thousands of rows (one value on every substring but the last few bits), their rows grouped by
    another substring: groups beyond the radius and groups already reached through an earlier table are passed over
    whole, and every other row is still found (range search and k-NN against brute force). ``wider-radii``: every
    query takes the per-query radii meant for hot queries (up to the widest countable ball)."""
    if hot:
        monkeypatch.setattr(mih, "_HOT_FACTOR", 0.0)
    rng = np.random.default_rng(5)
    n = 6000
    q = rng.integers(0, 2, size=(8, 64)).astype(bool)
    base = q[rng.integers(0, len(q), size=n)]
    flips = np.zeros((n, 64), dtype=bool)
    for i in range(n):  # 0-6 flips, often all in one substring (m=4: 16 bits each)
        span = [(0, 16), (16, 32), (32, 48), (48, 64), (0, 64)][rng.integers(0, 5)]
        flips[i, rng.choice(np.arange(*span), size=rng.integers(0, 7), replace=False)] = True
    db = C.pack_bits(base ^ flips)
    qc = C.pack_bits(q)
    ix = MultiIndexHash(db, 64, m=4)
    assert min(np.diff(t.offsets).max() for t in ix._tables) >= 500
    H = exact(qc, db, 0, 64)
    for r in (0, 1, 2, 3, 4, 5, 6, 8):
        lims, D, I = ix.range_search(qc, r)
        for j in range(len(qc)):
            want = np.flatnonzero(H[j] <= r)
            assert np.array_equal(I[lims[j] : lims[j + 1]], want[np.lexsort((want, H[j][want]))])
            assert np.array_equal(D[lims[j] : lims[j + 1]], H[j][want[np.lexsort((want, H[j][want]))]])
    for k in (1, 10, 200):
        D, I = ix.search(qc, k)
        for j in range(len(qc)):
            want = np.lexsort((np.arange(n), H[j]))[:k]
            assert np.array_equal(I[j], want) and np.array_equal(D[j], H[j][want])
