"""index: shards, manifest, atomic publish, and HammingIndex checked against brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semhash_spark import codes as C
from semhash_spark.index import published as X
from semhash_spark.io import store

N, NQ = 1500, 12
BITS = [20, 32, 64, 128]


def random_codes(bits, n, rng):
    return C.pack_bits(rng.integers(0, 2, size=(n, bits)))


def clustered_codes(bits, n, rng, clusters=8, flip=0.06):
    """Codes around a few centres (each bit flipped with probability ``flip``): many near neighbours and ties."""
    centres = rng.integers(0, 2, size=(clusters, bits))
    b = centres[rng.integers(0, clusters, size=n)] ^ (rng.random((n, bits)) < flip)
    return C.pack_bits(b)


def make_data(bits, kind, seed=0):
    rng = np.random.default_rng(seed + bits)
    gen = random_codes if kind == "random" else clustered_codes
    both = gen(bits, N + NQ, rng)
    return both[:N], both[N:]


def frame(codes, bits, address_bits, ids=None, words=False):
    n = len(codes)
    pdf = pd.DataFrame(
        {
            "id": ids if ids is not None else [f"d{i}" for i in range(n)],
            "code": [bytes(r) for r in codes],
            "address": C.prefix(codes, address_bits),
        }
    )
    if words:
        pdf["word_ids"] = [np.array([i % 7, 100 + i], dtype="<i4").tobytes() for i in range(n)]
        pdf["word_counts"] = [np.array([1.0, float(i)], dtype="<f4").tobytes() for i in range(n)]
    return pdf


def publish_codes(index_uri, codes, bits, partition_bits, address_bits, tasks=3, words=False, version=None):
    """What the encode job does: each 'Spark task' writes its shards, the driver builds and publishes the manifest."""
    version = version or X.new_version_id()
    vp = X.version_prefix(index_uri, version)
    pdf = frame(codes, bits, address_bits, words=words)
    metas = []
    for chunk in np.array_split(np.arange(len(pdf)), tasks):
        metas += X.write_shard(vp, partition_bits, C.code_bytes(bits), pdf.iloc[chunk])
    manifest = X.build_manifest(version, bits, address_bits, partition_bits, metas, model={"version": "test"})
    X.publish(index_uri, version, manifest)
    return version


def brute_force(q, db):
    return C.hamming(q, db)  # int32[nq, n]


def rows_of(index, I):
    """Ordinals -> row numbers of the input codes (ids are 'd<row>')."""
    I = np.asarray(I)
    return np.array([int(s[1:]) for s in index.ids_of(I).ravel()], dtype=np.int64).reshape(I.shape)


@pytest.fixture(
    scope="module", params=[(b, k) for b in BITS for k in ("random", "clustered")], ids=lambda p: f"{p[0]}bit-{p[1]}"
)
def case(request, tmp_path_factory):
    bits, kind = request.param
    db, q = make_data(bits, kind)
    address_bits = min(bits, 20)
    uri = str(tmp_path_factory.mktemp(f"idx{bits}{kind}"))
    publish_codes(uri, db, bits, partition_bits=6, address_bits=address_bits)
    return dict(bits=bits, db=db, q=q, uri=uri, address_bits=address_bits, H=brute_force(q, db))


def test_range_search_equals_brute_force(case):
    index = X.HammingIndex.open(case["uri"])
    H, bits = case["H"], case["bits"]
    previous = [set() for _ in range(NQ)]
    for radius in sorted({0, 1, 2, 4, bits // 8, bits // 4, bits // 2, bits}):
        lims, D, I = index.range_search(case["q"], radius)
        assert lims.shape == (NQ + 1,) and D.dtype == np.int32 and I.dtype == np.int64
        for i in range(NQ):
            d, ids = D[lims[i] : lims[i + 1]], I[lims[i] : lims[i + 1]]
            rows = rows_of(index, ids)
            expected = set(np.flatnonzero(H[i] <= radius))
            assert len(set(ids)) == len(ids)  # no duplicates
            assert set(rows) == expected  # exactly the ball
            np.testing.assert_array_equal(d, H[i, rows])  # distances are true
            assert np.all(np.lexsort((ids, d)) == np.arange(len(d)))  # sorted by (distance, ordinal)
            assert previous[i] <= expected  # recall never falls
            previous[i] = expected
    assert all(len(p) == N for p in previous)  # full radius: everything


def test_search_equals_brute_force_knn(case):
    index = X.HammingIndex.open(case["uri"])
    H = case["H"]
    for k in (1, 10, 50):
        D, I = index.search(case["q"], k)
        assert D.shape == I.shape == (NQ, k)
        np.testing.assert_array_equal(D, np.sort(H, axis=1)[:, :k])
        for i in range(NQ):
            np.testing.assert_array_equal(H[i, rows_of(index, I[i])], D[i])
            assert np.all(np.lexsort((I[i], D[i])) == np.arange(k))


def test_in_memory_index_matches_brute_force_exactly(case):
    """from_codes: ordinals are row numbers, so I equals brute force sorted by (distance, row)."""
    H, bits = case["H"], case["bits"]
    order = np.lexsort((np.broadcast_to(np.arange(N), H.shape), H), axis=1)
    for pb in (0, 6):
        index = X.HammingIndex.from_codes(case["db"], bits=bits, partition_bits=pb)
        D, I = index.search(case["q"], 10)
        np.testing.assert_array_equal(I, order[:, :10])
        np.testing.assert_array_equal(D, np.take_along_axis(H, order[:, :10], 1))
        lims, D2, I2 = index.range_search(case["q"], bits // 4)
        for i in range(NQ):
            want = order[i][H[i, order[i]] <= bits // 4]
            np.testing.assert_array_equal(I2[lims[i] : lims[i + 1]], want)
        np.testing.assert_array_equal(index.codes_of(I[:, 0]), case["db"][I[:, 0]])


def test_address_lookup_is_the_address_ball(case):
    index = X.HammingIndex.open(case["uri"])
    ab = case["address_bits"]
    q_addr, db_addr = C.prefix(case["q"], ab), C.prefix(case["db"], ab)
    for radius in (0, 2, 4):
        lims, D, I = index.address_lookup(case["q"], radius)
        for i in range(NQ):
            rows = rows_of(index, I[lims[i] : lims[i + 1]])
            assert set(rows) == set(np.flatnonzero(C.int_hamming(db_addr, int(q_addr[i])) <= radius))
            np.testing.assert_array_equal(D[lims[i] : lims[i + 1]], case["H"][i, rows])
    if ab == case["bits"]:  # 20-bit codes: the paper's lookup is the range search
        for a, b in zip(index.address_lookup(case["q"], 4), index.range_search(case["q"], 4)):
            np.testing.assert_array_equal(a, b)


def test_small_radius_reads_few_partitions(case):
    index = X.HammingIndex.open(case["uri"])
    assert index.partitions_read == 0
    index.range_search(case["q"][:1], 1)
    assert 0 < index.partitions_read < index.npartitions
    D, _ = index.search(case["q"][:1], 1)
    if D[0, 0] <= 1:  # a close neighbour stops the rings early
        assert index.partitions_read < index.npartitions


def test_search_pads_with_minus_one(tmp_path):
    db = random_codes(32, 5, np.random.default_rng(0))
    index = X.HammingIndex.from_codes(db, [f"x{i}" for i in range(5)], bits=32, partition_bits=2)
    D, I = index.search(db[:2], 8)
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == -1).all()
    ids = index.ids_of(I)
    assert ids[0, 0] == "x0" and ids[0, 7] is None
    assert (index.codes_of(np.array([-1]))[0] == 0).all()
    with pytest.raises(ValueError, match="beyond their 20 bits"):
        X.HammingIndex.from_codes(np.array([[0, 0, 1]], np.uint8), bits=20)


# ---------------------------------------------------------------------------------------------------- publish


def small_published(tmp_path, seed=0, bits=32):
    db = random_codes(bits, 200, np.random.default_rng(seed))
    uri = str(tmp_path / "index")
    return uri, db, publish_codes(uri, db, bits, partition_bits=4, address_bits=16)


def test_layout_and_manifest(tmp_path):
    uri, db, v = small_published(tmp_path)
    assert X.read_current(uri)["version"] == v
    m = X.read_manifest(uri, v)
    assert m["count"] == 200 and m["bits"] == 32 and m["partition_bits"] == 4
    names = [p["partition"] for p in m["partitions"]]
    assert names == sorted(names) and all(len(n) == 1 for n in names)
    files = store.list_prefix(X.version_prefix(uri, v))
    shard_files = {p for p, _ in files if p.endswith(".parquet")}
    assert shard_files == {f["path"] for p in m["partitions"] for f in p["files"]}
    assert all(p.startswith("part=") for p in shard_files)
    from datetime import datetime, timezone

    early, late = (X.new_version_id(datetime(2026, 1, d, tzinfo=timezone.utc)) for d in (2, 10))
    assert early < late and early.startswith("20260102T")  # sortable UTC timestamps


def test_failure_before_current_leaves_old_version(tmp_path, monkeypatch):
    uri, db, v1 = small_published(tmp_path)
    db2 = random_codes(32, 50, np.random.default_rng(9))
    v2 = X.new_version_id()
    vp = X.version_prefix(uri, v2)
    metas = X.write_shard(vp, 4, 4, frame(db2, 32, 16))
    manifest = X.build_manifest(v2, 32, 16, 4, metas)

    real_write = store.write_bytes

    def failing_write(u, data):
        if u.endswith("manifest.json"):
            raise store.StoreError(u, "injected failure", "write")
        return real_write(u, data)

    monkeypatch.setattr(store, "write_bytes", failing_write)
    with pytest.raises(store.StoreError, match="injected"):
        X.publish(uri, v2, manifest)
    monkeypatch.setattr(store, "write_bytes", real_write)
    assert X.read_current(uri)["version"] == v1
    assert X.HammingIndex.open(uri).ntotal == 200

    store.delete(store.join(vp, metas[0]["path"]))  # a shard vanished before publish
    with pytest.raises(X.IndexFormatError, match=metas[0]["path"]):
        X.publish(uri, v2, manifest)
    assert X.read_current(uri)["version"] == v1


def test_rollback_and_list_versions(tmp_path):
    uri, db, v1 = small_published(tmp_path)
    v2 = publish_codes(uri, random_codes(32, 30, np.random.default_rng(3)), 32, 4, 16)
    assert X.list_versions(uri) == sorted([v1, v2])
    assert X.HammingIndex.open(uri).ntotal == 30
    X.rollback(uri, v1)
    assert X.read_current(uri)["version"] == v1 and X.HammingIndex.open(uri).ntotal == 200
    with pytest.raises(X.IndexNotFound):
        X.rollback(uri, "20000101T000000000000Z-000000")


def test_checksum_corruption_is_detected_on_load(tmp_path):
    uri, db, v = small_published(tmp_path)
    m = X.read_manifest(uri, v)
    victim = m["partitions"][0]["files"][0]["path"]
    path = store.join(X.version_prefix(uri, v), victim)
    data = bytearray(store.read_bytes(path))
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    store.write_bytes(path, bytes(data))
    index = X.HammingIndex.open(uri)  # the manifest alone is fine
    with pytest.raises(X.ChecksumMismatch, match=victim):
        index.range_search(db[:1], 32)
    with pytest.raises(X.ChecksumMismatch, match=victim):
        X.publish(uri, v, m, verify_checksums=True)


def test_missing_index_and_bad_format(tmp_path):
    with pytest.raises(X.IndexNotFound, match="CURRENT"):
        X.HammingIndex.open(str(tmp_path / "empty"))
    uri, db, v = small_published(tmp_path)
    m = X.read_manifest(uri, v)
    m["format"] = "semhash-index/999"
    store.write_json(X.manifest_uri(uri, v), m)
    with pytest.raises(X.IndexFormatError, match="semhash-index/999"):
        X.HammingIndex.open(uri)


def test_ordinals_are_stable(tmp_path):
    uri, db, v = small_published(tmp_path)
    a, b = X.HammingIndex.open(uri), X.HammingIndex.open(uri)
    I = np.arange(200)
    np.testing.assert_array_equal(a.ids_of(I[::-1]), b.load_all().ids_of(I[::-1]))
    np.testing.assert_array_equal(C.prefix(a.codes_of(I), 4), np.sort(C.prefix(db, 4)))


# ---------------------------------------------------------------------------------------------------- real S3


def test_write_publish_open_search_on_s3(s3_server):
    bits, pb, ab = 64, 5, 20
    rng = np.random.default_rng(42)
    db, q = clustered_codes(bits, 600, rng), clustered_codes(bits, 8, rng)
    uri = s3_server.uri("index-test")
    v = X.new_version_id()
    vp = X.version_prefix(uri, v)
    pdf = frame(db, bits, ab, words=True)
    metas = []
    for chunk in np.array_split(np.arange(len(pdf)), 2):
        metas += X.write_shard(vp, pb, C.code_bytes(bits), pdf.iloc[chunk])
    manifest = X.build_manifest(v, bits, ab, pb, metas, model={"uri": "model/"}, data={"name": "synthetic"})
    X.publish(uri, v, manifest, verify_checksums=True)
    assert X.read_current(uri)["version"] == v

    index = X.HammingIndex.open(uri)
    assert index.version == v and index.ntotal == 600 and index.has_words
    H = brute_force(q, db)
    D, I = index.search(q, 5)
    np.testing.assert_array_equal(D, np.sort(H, axis=1)[:, :5])
    rows = rows_of(index, I)
    np.testing.assert_array_equal(np.take_along_axis(H, rows, 1), D)
    wc = index.word_counts_of(I[:1, :2])
    r0 = int(index.ids_of(I[0, 0:1])[0][1:])
    np.testing.assert_array_equal(wc[0, 0][0], [r0 % 7, 100 + r0])
    np.testing.assert_array_equal(wc[0, 0][1], [1.0, float(r0)])
