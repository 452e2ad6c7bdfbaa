"""address: the Hamming-ball address lookup checked against brute force, on the compiled and the numpy paths."""

from __future__ import annotations

import numpy as np
import pytest

from semhash_spark.index import address
from semhash_spark import codes as C
from semhash_spark.index.address import AddressTable, ball_size


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def path(request, monkeypatch):
    if request.param and address._K is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(address, "USE_COMPILED", request.param)
    return request.param


def clustered_addresses(bits, n, rng, clusters=6, flip=0.08):
    centres = rng.integers(0, 2, size=(clusters, bits))
    b01 = centres[rng.integers(0, clusters, size=n)] ^ (rng.random((n, bits)) < flip)
    return C.prefix(C.pack_bits(b01), bits)


def brute(q, db, bits):
    """Address Hamming distances ``int[nq, n]`` by unpacked bits."""

    def unpack(a):
        return ((a[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.int8)

    return (unpack(q)[:, None, :] != unpack(db)[None, :, :]).sum(-1)


@pytest.mark.parametrize(
    "bits, n, kind",
    [
        (12, 3000, "random"),
        (20, 4000, "clustered"),
        (20, 50, "random"),
        (28, 4000, "clustered"),
        (40, 2000, "clustered"),
        (64, 1500, "clustered"),
    ],
)
def test_ball_equals_brute_force(path, bits, n, kind):
    rng = np.random.default_rng(bits * 1000 + n)
    if kind == "random":
        both = rng.integers(0, 1 << bits, size=n + 12, dtype=np.uint64)
    else:
        both = clustered_addresses(bits, n + 12, rng)
    db, q = both[:n], both[n:]
    q[0] = db[3]  # a query at an occupied address
    table = AddressTable(db, bits)
    assert len(table) == n
    H = brute(q, db, bits)
    prev = None
    for r in range(0, min(bits, 4) + 1 if bits > 28 else min(bits, 5) + 1):
        lims, ids, d = table.ball(q, r)
        assert lims.dtype == np.int64 and ids.dtype == np.int64 and d.dtype == np.int32
        assert lims.shape == (len(q) + 1,) and lims[0] == 0 and lims[-1] == len(ids) == len(d)
        for i in range(len(q)):
            got, gd = ids[lims[i] : lims[i + 1]], d[lims[i] : lims[i + 1]]
            want = np.flatnonzero(H[i] <= r)
            want = want[np.lexsort((want, H[i][want]))]
            assert len(np.unique(got)) == len(got)  # no duplicates
            assert np.all(H[i][got] <= r)  # a subset of the exact ball
            assert np.array_equal(got, want) and np.array_equal(gd, H[i][want])
        counts = np.diff(lims)
        assert prev is None or np.all(counts >= prev)  # the shortlist never shrinks as the radius grows
        prev = counts
    assert np.any(prev > 0)


def test_full_radius_returns_every_item(path):
    rng = np.random.default_rng(5)
    db = rng.integers(0, 1 << 10, size=700, dtype=np.uint64)
    table = AddressTable(db, 10)
    lims, ids, d = table.ball(np.array([0, 1023], np.uint64), 10)
    for i in range(2):
        assert np.array_equal(np.sort(ids[lims[i] : lims[i + 1]]), np.arange(700))


def test_compiled_and_numpy_agree(monkeypatch):
    if address._K is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(11)
    for bits in (16, 30):
        db = clustered_addresses(bits, 5000, rng)
        q = clustered_addresses(bits, 20, rng)
        table = AddressTable(db, bits)
        out = []
        for compiled in (True, False):
            monkeypatch.setattr(address, "USE_COMPILED", compiled)
            out.append(table.ball(q, 3))
        for a, b in zip(*out):
            assert np.array_equal(a, b)


def test_empty_table_and_empty_queries(path):
    table = AddressTable(np.zeros(0, np.uint64), 20)
    lims, ids, d = table.ball(np.array([5, 7], np.uint64), 2)
    assert np.array_equal(lims, [0, 0, 0]) and ids.size == 0 and d.size == 0
    lims, ids, d = AddressTable(np.array([1, 2], np.uint64), 20).ball(np.zeros(0, np.uint64), 1)
    assert np.array_equal(lims, [0]) and ids.size == 0


def test_ball_size():
    assert ball_size(20, 4) == 1 + 20 + 190 + 1140 + 4845
    assert ball_size(28, 0) == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: AddressTable(np.array([1, 2], np.uint64), 0), "address bits"),
        (lambda: AddressTable(np.array([1, 2], np.uint64), 65), "address bits"),
        (lambda: AddressTable(np.array([1, 1 << 20], np.uint64), 20), "below 2\\*\\*20"),
        (lambda: AddressTable(np.array([1, -2]), 20), "non-negative"),
        (lambda: AddressTable(np.array([[1, 2]], np.uint64), 20), "1-d"),
        (lambda: AddressTable(np.array([1.5]), 20), "integers"),
        (lambda: AddressTable(np.array([1, 2], np.uint64), 20).ball(np.array([1], np.uint64), -1), "radius"),
        (lambda: AddressTable(np.array([1, 2], np.uint64), 20).ball(np.array([1], np.uint64), 21), "radius"),
        (lambda: AddressTable(np.array([1, 2], np.uint64), 20).ball(np.array([1 << 21], np.uint64), 1), "below"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("abits, cbits", [(12, 64), (20, 128), (28, 40)])
def test_search_is_the_ball_ranked_by_the_ranking_code(path, abits, cbits):
    """``search``: the k items of the address ball closest to the ranking code, as brute force finds them."""
    rng = np.random.default_rng(abits + cbits)
    n = 3000
    addr = clustered_addresses(abits, n + 10, rng)
    codes = C.pack_bits(rng.integers(0, 2, size=(n + 10, cbits)))
    table = AddressTable(addr[:n], abits, codes=codes[:n])
    Ha = brute(addr[n:], addr[:n], abits)
    Hc = C.hamming(codes[n:], codes[:n])
    for r in (0, 2, 4):
        D, I = table.search(addr[n:], codes[n:], r, 7)
        assert D.shape == I.shape == (10, 7)
        for i in range(10):
            ball = np.flatnonzero(Ha[i] <= r)
            want = ball[np.lexsort((ball, Hc[i][ball]))][:7]
            assert np.array_equal(I[i, : want.size], want) and np.array_equal(D[i, : want.size], Hc[i][want])
            assert np.all(I[i, want.size :] == -1) and np.all(D[i, want.size :] == -1)
        R = table.rerank(table.visit(addr[n:], r), codes[n:], 7)  # the two stages give the one-pass result
        assert np.array_equal(R[0], D) and np.array_equal(R[1], I)


def test_unordered_ball_holds_the_same_rows_by_distance(path):
    rng = np.random.default_rng(3)
    db = clustered_addresses(20, 5000, rng)
    table = AddressTable(db, 20)
    q = db[:5]
    a, b = table.ball(q, 3), table.ball(q, 3, ordered=False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    for i in range(5):
        s = slice(a[0][i], a[0][i + 1])
        assert np.array_equal(a[1][s], b[1][s][np.lexsort((b[1][s], b[2][s]))])


def test_search_needs_codes():
    with pytest.raises(ValueError, match="codes="):
        AddressTable(np.array([1, 2], np.uint64), 20).search(np.array([1], np.uint64), np.zeros((1, 8), np.uint8), 1, 5)
    with pytest.raises(ValueError, match="one per address"):
        AddressTable(np.array([1, 2], np.uint64), 20, codes=np.zeros((3, 8), np.uint8))


def test_enumerated_ball_equals_the_mask_table(monkeypatch):
    """Balls too large for a table of masks are enumerated one combination at a time: the same results."""
    if address._K is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(17)
    db = clustered_addresses(28, 4000, rng)
    q = np.concatenate([db[:3], clustered_addresses(28, 5, rng)])
    want = [AddressTable(db, 28).ball(q, r) for r in range(5)]
    monkeypatch.setattr(address, "_MASKS_MAX", 0)
    table = AddressTable(db, 28)
    for r in range(5):
        assert table._mask_table(r) is None
        for a, b in zip(table.ball(q, r), want[r]):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("bits", [16, 30])
def test_visit_returns_one_run_per_occupied_address_of_the_ball(path, bits):
    """``visit``: one run per occupied address within the radius, holding exactly that address's rows; at most
    ``ball_size`` runs a query whatever the table's size (the stage whose cost is fixed by bits and radius)."""
    rng = np.random.default_rng(bits)
    db = clustered_addresses(bits, 6000, rng)
    q = np.concatenate([db[:2], clustered_addresses(bits, 4, rng)])
    table = AddressTable(db, bits)
    for r in (0, 2, 3):
        lims, starts, ends, dist = table.visit(q, r)
        assert lims.shape == (len(q) + 1,) and lims[-1] == starts.size == ends.size == dist.size
        assert np.all(ends > starts) and dist.dtype == np.int32
        for i in range(len(q)):
            s = slice(lims[i], lims[i + 1])
            assert lims[i + 1] - lims[i] <= ball_size(bits, r)
            assert np.all(np.diff(dist[s]) >= 0)  # by address distance
            seen = set()
            for a, b, w in zip(starts[s], ends[s], dist[s]):
                addrs = db[table.ids_[a:b]]
                assert np.all(addrs == addrs[0]) and addrs[0] not in seen
                seen.add(addrs[0])
                assert bin(int(addrs[0]) ^ int(q[i])).count("1") == w
                assert b - a == np.sum(db == addrs[0])  # the whole bucket
            want = {int(a) for a in np.unique(db) if bin(int(a) ^ int(q[i])).count("1") <= r}
            assert {int(a) for a in seen} == want
        g = table.gather((lims, starts, ends, dist))
        for a, b in zip(g, table.ball(q, r)):
            assert np.array_equal(a, b)
